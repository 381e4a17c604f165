"""Batch-1 CPU latency of models compared with each other, measured in a fresh Python process.

Why a fresh process: after training, a process's heap has grown, so its inference passes reuse memory
that an inference process (``audiosep infer``) first has to fault in, and a small model's latency ratio
differs between the two (measured on the demo Conv-TasNet at 50 % MACs: about 1.25x in the process
that had fine-tuned it, 1.5x in a fresh one). The child is ``python -m audiosep.pruning.latency``
(never a re-import of the caller's script, as multiprocessing's spawn would do); it loads the models
through the safe checkpoint loader, prepares them as ``audiosep infer`` does and alternates their passes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn


def measure_latency(models: dict[str, nn.Module], seconds: float, sample_rate: int, repeats: int = 21) -> dict[str, float]:
    """Median batch-1 CPU latency (seconds) of each model on ``seconds`` of audio, at this process's threads.

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


def latency_of_files(paths: dict[str, str], seconds: float, sample_rate: int, repeats: int) -> dict[str, float]:
    """Load, prepare, warm up, then ``repeats`` rounds of alternating passes (the benchmark's timer); medians."""
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
    return {name: timing.median for name, timing in time_interleaved(passes, repeats, cpu).items()}


def main(argv: list[str]) -> int:
    """The child: one JSON job in ``argv[0]``, the medians as one JSON line on stdout."""
    job = json.loads(argv[0])
    torch.set_num_threads(int(job["threads"]))
    medians = latency_of_files(job["paths"], float(job["seconds"]), int(job["sample_rate"]), int(job["repeats"]))
    print(json.dumps(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
