"""Streaming latency of causal separators, measured offline until a stateful streaming API exists.

For a causal model, the output of a block of ``block`` samples needs only that block and the
model's past context (its receptive field). The algorithmic latency is the block plus the encoder
window (the last output samples of a block are final once the window that covers them is read).
Without cached state, one streaming step is a forward pass over ``context + block`` samples: that
is what is timed here, an upper bound on a stateful step's compute. A step keeps up with the
input when its compute time is below the block's duration (``compute_rtf < 1``).
Non-causal models get a row saying why they cannot stream.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from audiosep.bench.measure import time_interleaved, warm_up
from audiosep.models.conv_tasnet import ConvTasNet
from audiosep.nn.norms import canonical_norm_name

STREAM_REPEATS = 20


def causal_context_samples(model: nn.Module) -> int | None:
    """Past input samples one causal output frame depends on (its receptive field); ``None`` if not causal.

    Conv-TasNet: ``1 + R (P - 1)(2^X - 1)`` frames of stride ``L / 2`` plus one window ``L`` (cLN's
    statistics reach further back; a streaming step carries them as state).
    """
    if not isinstance(model, ConvTasNet) or not model.init_args.get("causal", False):
        return None
    args = model.init_args
    frames = 1 + args["num_repeats"] * (args["conv_kernel_size"] - 1) * (2 ** args["num_layers"] - 1)
    return (frames - 1) * model.stride + model.enc_kernel_size


def streaming_latency(
    label: str, model: nn.Module, sample_rate: int, block_ms: float, device: torch.device,
    repeats: int = STREAM_REPEATS,
) -> dict[str, Any]:  # fmt: skip
    """One row: algorithmic latency and the compute time of one offline streaming step."""
    context = causal_context_samples(model)
    row: dict[str, Any] = {"model": label, "block_ms": block_ms}
    if context is None:
        return row | {"status": "non-causal: each output sample depends on the whole input"}
    block = max(1, round(block_ms * sample_rate / 1000))
    window = model.enc_kernel_size
    step_input = torch.randn(1, context + block, device=device) * 0.1
    model = model.to(device).eval()
    with torch.inference_mode():
        warm_up(model, (step_input,), device)
    timing = time_interleaved({"step": lambda: model(step_input)}, repeats, device)["step"]
    compute_ms = 1000 * timing.median
    cumulative = canonical_norm_name(model.init_args.get("norm", "none")) == "cumulative_ln"
    status = "ok (offline causal timing: no cached state" + ("; cLN carries running sums as state)" if cumulative else ")")
    return row | {
        "status": status,
        "context_ms": round(1000 * context / sample_rate, 2),
        "algorithmic_latency_ms": round(1000 * (block + window) / sample_rate, 2),
        "compute_ms": round(compute_ms, 3),
        "compute_rtf": round(compute_ms / (1000 * block / sample_rate), 3),
        "total_latency_ms": round(1000 * (block + window) / sample_rate + compute_ms, 2),
    }

