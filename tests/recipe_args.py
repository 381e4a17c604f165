"""Command-line pieces shared by the tests that train the demo recipe (in process or in a subprocess)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "demo" / "convtasnet_tiny.yaml")
TINY_MODEL = [
    "--model.model.init_args.enc_num_filters=16",
    "--model.model.init_args.bottleneck_channels=8",
    "--model.model.init_args.hidden_channels=16",
    "--model.model.init_args.skip_channels=8",
    "--model.model.init_args.num_layers=2",
    "--model.model.init_args.num_repeats=1",
]


def subprocess_env() -> dict[str, str]:
    """The environment of a training subprocess: one thread, tests/ and the repository importable."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
