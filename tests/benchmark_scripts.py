"""Load a script of ``benchmarks/`` as a module, for the tests of its arithmetic and variants."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# A SepFormer small enough to run the scripts' variants in a test.
TINY_SEPFORMER = {"encoder_channels": 16, "model_channels": 16, "num_blocks": 1, "num_intra_layers": 1,
                  "num_inter_layers": 1, "num_heads": 2, "ffn_dim": 32, "chunk_size": 20}  # fmt: skip


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``name`` (registered in ``sys.modules``: its dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
