"""benchmarks/int8_bound.py: the Amdahl arithmetic, which profiled ops count as int8's, and a run on tiny models."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_bound.py"
TINY_CONV_TASNET = {"enc_num_filters": 16, "enc_kernel_size": 8, "bottleneck_channels": 8, "hidden_channels": 12,
                    "skip_channels": 8, "num_layers": 2, "num_repeats": 1}  # fmt: skip
TINY_SEPFORMER = {"encoder_channels": 16, "model_channels": 16, "num_blocks": 1, "num_intra_layers": 1,
                  "num_inter_layers": 1, "num_heads": 2, "ffn_dim": 32, "chunk_size": 20}  # fmt: skip


def _load():
    spec = importlib.util.spec_from_file_location("int8_bound", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_bounds_follow_amdahls_law() -> None:
    bound = _load()
    # fp32: 100 ms, 60 of them in products; int8 runs those in 30 ms
    b = bound.Bound(bound.Split(100.0, 60.0), bound.Split(70.0, 30.0))
    assert b.fraction == pytest.approx(0.6) and b.kernel_speedup == pytest.approx(2.0)
    assert b.free_products_bound == pytest.approx(2.5)
    assert b.kernel_bound == pytest.approx(1 / (0.4 + 0.3))
    assert b.needed_kernel_speedup(1.5) == pytest.approx(0.6 / (1 / 1.5 - 0.4))
    assert math.isinf(bound.Bound(bound.Split(100.0, 30.0), bound.Split(80.0, 10.0)).needed_kernel_speedup(1.5))


def test_only_linear_products_and_ungrouped_1x1_convolutions_count_as_quantizable() -> None:
    bound = _load()
    pointwise = [[1, 128, 1001, 1], [512, 128, 1, 1], [512], [], []]
    assert bound.is_float_product("mkldnn::_convolution_pointwise", pointwise)
    assert bound.is_float_product("mkldnn::_convolution_pointwise_", [[1, 128, 1001, 1], *pointwise])  # adds into a sum
    assert not bound.is_float_product("mkldnn::_convolution_pointwise", [[1, 512, 1001, 1], [512, 1, 3, 1], [512]])
    assert not bound.is_float_product("mkldnn::_convolution_pointwise", [[1, 512, 1001, 1], [512, 1, 1, 1], [512]])
    assert not bound.is_float_product("aten::_convolution", [[1, 1, 8000], [128, 1, 16], []])  # the encoder
    assert bound.is_float_product("aten::addmm", []) and not bound.is_float_product("aten::bmm", [])
    assert bound.is_int8_product("quantized::linear_dynamic") and bound.is_int8_product("onednn::qlinear_pointwise")
    assert not bound.is_int8_product("aten::addmm")


@pytest.mark.parametrize(("name", "overrides"), [("conv_tasnet_base", TINY_CONV_TASNET), ("sepformer_base", TINY_SEPFORMER)])
def test_a_profile_finds_the_products_int8_replaces(name: str, overrides: dict) -> None:
    """The op names this torch emits are the ones the script looks for: neither share is 0 or all."""
    measured = _load().measure(name, 0.1, forwards=1, **overrides)
    for split in (measured.fp32, measured.int8):
        assert 0 < split.products_ms < split.total_ms
