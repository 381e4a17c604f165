"""Streaming latency of causal separators: the stateful stream of :mod:`audiosep.streaming`, timed per block.

For a causal Conv-TasNet, :class:`audiosep.streaming.ConvTasNetStream` separates block by block with
carried state and gives the offline output. The algorithmic latency is the block (buffered before
it is processed) plus the encoder window minus one stride (the output the next block completes); the
compute time is the median of one ``process`` call on a stream already running. A step keeps up with
the input when its compute time is below the block's duration (``compute_rtf < 1``). Models that
cannot stream get a row saying why.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from audiosep.models.conv_tasnet import ConvTasNet

STREAM_REPEATS = 50
WARMUP_BLOCKS = 10


def streaming_latency(
    label: str, model: nn.Module, sample_rate: int, block_ms: float, device: torch.device,
    repeats: int = STREAM_REPEATS,
) -> dict[str, Any]:  # fmt: skip
    """One row: algorithmic latency and the compute time of one stateful streaming step."""
    from audiosep.streaming import ConvTasNetStream

    row: dict[str, Any] = {"model": label, "block_ms": block_ms}
    if not isinstance(model, ConvTasNet) or not model.init_args.get("causal", False):
        return row | {"status": "non-causal: each output sample depends on the whole input"}
    if device.type != "cpu":
        return row | {"status": "not measured: the stream is timed on CPU"}
    block = max(1, round(block_ms * sample_rate / 1000))
    stream = ConvTasNetStream(model)
    generator = torch.Generator().manual_seed(0)  # not the global RNG: the bench must not reseed its caller
    blocks = 0.1 * torch.randn(WARMUP_BLOCKS + repeats, 1, block, generator=generator)
    for index in range(WARMUP_BLOCKS):
        stream.process(blocks[index])
    walls = []
    for index in range(WARMUP_BLOCKS, WARMUP_BLOCKS + repeats):
        start = time.perf_counter()
        stream.process(blocks[index])
        walls.append(time.perf_counter() - start)
    compute_ms = 1000 * sorted(walls)[len(walls) // 2]
    algorithmic = 1000 * (block + stream.algorithmic_latency) / sample_rate
    return row | {
        "status": "ok (stateful stream, batch 1)",
        "algorithmic_latency_ms": round(algorithmic, 2),
        "compute_ms": round(compute_ms, 3),
        "compute_rtf": round(compute_ms / (1000 * block / sample_rate), 3),
        "total_latency_ms": round(algorithmic + compute_ms, 2),
    }
