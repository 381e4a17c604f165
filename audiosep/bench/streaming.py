"""Streaming latency of causal separators: the stateful stream of :mod:`audiosep.streaming`, timed per block.

A causal Conv-TasNet or RE-SepFormer separates block by block with carried state and gives the
offline output (:func:`audiosep.streaming.open_stream`). The algorithmic latency is the longest wait
from a sample's place in the input to the step that returns it (:func:`audiosep.streaming.block_latency`:
the block buffered before it is processed, plus the stream's lag, Conv-TasNet's encoder window less one
stride or RE-SepFormer's chunk of frames more, and up to one stride or chunk more when the block does not
line up with them). A Conv-TasNet step emits output on every block, a
RE-SepFormer step only on the blocks that complete a chunk: the compute time is the median of the
steps that emit output, and the compute RTF is all steps' time over the audio's duration (below 1:
the stream keeps up). Models that cannot stream get a row saying why.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

STREAM_REPEATS = 50  # timed blocks at least
STREAM_EMITTING_STEPS = 8  # and at least this many steps that emit output
WARMUP_BLOCKS = 10


def streaming_latency(
    label: str, model: nn.Module, sample_rate: int, block_ms: float, device: torch.device,
    repeats: int = STREAM_REPEATS,
) -> dict[str, Any]:  # fmt: skip
    """One row: algorithmic latency and the compute time of the stateful stream's steps."""
    from audiosep.streaming import open_stream

    block = max(1, round(block_ms * sample_rate / 1000))
    row: dict[str, Any] = {"model": label, "block_ms": round(1000 * block / sample_rate, 4)}  # what is streamed
    try:
        stream = open_stream(model)
    except ValueError as err:
        causal = getattr(model, "init_args", {}).get("causal", False)
        return row | {"status": f"not streamed: {err}" if causal else "non-causal: each output sample depends on the whole input"}
    if device.type != "cpu":
        return row | {"status": "not measured: the stream is timed on CPU"}
    generator = torch.Generator().manual_seed(0)  # not the global RNG: the bench must not reseed its caller
    for _ in range(WARMUP_BLOCKS):
        stream.process(0.1 * torch.randn(1, block, generator=generator))
    walls, emitting = [], []
    while len(walls) < repeats or len(emitting) < STREAM_EMITTING_STEPS:
        samples = 0.1 * torch.randn(1, block, generator=generator)
        start = time.perf_counter()
        out = stream.process(samples)
        walls.append(time.perf_counter() - start)
        if out.shape[-1]:
            emitting.append(walls[-1])
    compute_ms = 1000 * sorted(emitting)[len(emitting) // 2]
    algorithmic = 1000 * stream.latency(block) / sample_rate
    rtf = round(sum(walls) / (len(walls) * block / sample_rate), 3)
    keeps_up = rtf < 1  # else the backlog, and the real latency, grow without bound
    return row | {
        "status": f"ok ({type(stream).__name__}, batch 1)" if keeps_up
        else f"too slow (compute RTF {rtf:.2f} >= 1: the backlog grows; try longer blocks)",
        "algorithmic_latency_ms": round(algorithmic, 2),
        "compute_ms": round(compute_ms, 3),
        "compute_rtf": rtf,
        "total_latency_ms": round(algorithmic + compute_ms, 2) if keeps_up else None,
    }
