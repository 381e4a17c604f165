"""Batch-1 CPU latency of models compared with each other, measured in a fresh Python process.

Why a fresh process: after training, a process's heap has grown, so its inference passes reuse memory
that an inference process (``audiosep infer``) first has to fault in, and a small model's latency ratio
differs between the two (measured on the demo Conv-TasNet at 50 % MACs: about 1.25x in the process
that had fine-tuned it, 1.5x in a fresh one). The child is ``python -m audiosep.pruning.latency``
(never a re-import of the caller's script, as multiprocessing's spawn would do); it loads the models
through the safe checkpoint loader, prepares them as ``audiosep infer`` does and alternates their passes.
Each model's min, quartiles and max over the repeats come back with the median: on a busy machine
one model's passes can be slowed more than the other's, and a bare ratio of medians hides that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn


def measure_latency_spread(
    models: dict[str, nn.Module], seconds: float, sample_rate: int, repeats: int = 21
) -> dict[str, dict[str, float]]:
    """Batch-1 CPU latency (seconds) of each model: ``median``, ``min``, ``q1``, ``q3`` and ``max`` over ``repeats``.

    Raises:
        RuntimeError: the child process failed (its last error line is quoted).
    """
    from audiosep.checkpoint import save_model

    with tempfile.TemporaryDirectory(prefix="audiosep-latency-") as folder:
        paths = {}
        for name, model in models.items():
            paths[name] = str(Path(folder) / f"{name}.pt")
            save_model(model.cpu().eval(), paths[name], {"sample_rate": sample_rate})
        job = {"paths": paths, "seconds": seconds, "sample_rate": sample_rate, "repeats": repeats,
               "threads": torch.get_num_threads()}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "audiosep.pruning.latency", json.dumps(job)], capture_output=True, text=True
        )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"latency measurement failed: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


RELIABLE_SPREAD = 0.2  # a speed-up whose quartile range is wider than this fraction of it is flagged


def speedup_spread(before: dict[str, float], after: dict[str, float]) -> tuple[float, float, float]:
    """Speed-up ``before / after`` from the medians, and its low and high ends from the latency quartiles.

    Why: the median ratio alone cannot show that the two models' passes were slowed unevenly.
    """
    return before["q1"] / after["q3"], before["median"] / after["median"], before["q3"] / after["q1"]


def unreliable_speedup(before: dict[str, float], after: dict[str, float]) -> str | None:
    """Why the speed-up of these latency spreads is not to be trusted (a wide quartile range), or None."""
    low, median, high = speedup_spread(before, after)
    if high - low <= RELIABLE_SPREAD * median:
        return None
    return (
        f"the speed-up {median:.2f}x spans {low:.2f}..{high:.2f}x between the latency quartiles: the timings are "
        "noisy (a busy machine?); re-measure on an idle one or with a longer --latency-seconds"
    )


def latency_of_files(
    paths: dict[str, str], seconds: float, sample_rate: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Load, prepare, warm up, then ``repeats`` rounds of alternating passes (the benchmark's timer); each spread."""
    from audiosep.bench.measure import time_interleaved, warm_up
    from audiosep.checkpoint import load_model
    from audiosep.optimize import prepare_for_inference

    cpu = torch.device("cpu")
    prepared = {name: prepare_for_inference(load_model(path)[0].eval()) for name, path in paths.items()}
    mixture = 0.1 * torch.randn(1, int(seconds * sample_rate), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for model in prepared.values():
            warm_up(model, (mixture,), cpu)
    passes = {name: (lambda model=model: model(mixture)) for name, model in prepared.items()}
    return {name: timing.latency_dict() for name, timing in time_interleaved(passes, repeats, cpu).items()}


def main(argv: list[str]) -> int:
    """The child: one JSON job in ``argv[0]``, each model's latency spread as one JSON line on stdout."""
    job = json.loads(argv[0])
    torch.set_num_threads(int(job["threads"]))
    spread = latency_of_files(job["paths"], float(job["seconds"]), int(job["sample_rate"]), int(job["repeats"]))
    print(json.dumps(spread))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
