"""On-device cost benchmark: parameters, MACs, latency, real-time factor, peak memory, per backend.

``run_bench(BenchSettings(...))`` measures registry presets (with overrides) and checkpoints
(pruned ones too) through the eager, prepared (:func:`audiosep.optimize.prepare_for_inference`),
``torch.compile``, TorchScript and ONNX Runtime backends, next to peers' implementations of the
same architecture when asked, and returns a report that :func:`write_outputs` turns into JSON,
CSV and PNG (schema in the README). ``run_sweep(SweepSettings(...))`` is the Conv-TasNet
X / R / H sweep. ``audiosep bench`` and ``audiosep bench sweep`` are the command lines.

Example:
    >>> report = run_bench(BenchSettings(models=["conv_tasnet_demo"], lengths=[1.0]))  # doctest: +SKIP
    >>> print(format_table(report))                                                   # doctest: +SKIP
"""

from audiosep.bench.backends import BACKENDS, DEFAULT_BACKENDS
from audiosep.bench.report import format_table, write_outputs
from audiosep.bench.run import SCHEMA, BenchSettings, parse_overrides, run_bench
from audiosep.bench.sweep import (
    SWEEP_SCHEMA,
    SweepSettings,
    format_sweep_table,
    run_sweep,
    write_sweep_outputs,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKENDS",
    "SCHEMA",
    "SWEEP_SCHEMA",
    "BenchSettings",
    "SweepSettings",
    "format_sweep_table",
    "format_table",
    "parse_overrides",
    "run_bench",
    "run_sweep",
    "write_outputs",
    "write_sweep_outputs",
]
