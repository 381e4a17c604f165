"""Norms that pool over channels, computed over the *open* channels only, for the gated search.

Why: gLN, cumulative LN, channel LN and RMSNorm take their statistics over the channel dim. In a
gated model the closed channels would still enter those statistics, while after surgery they are
gone, so the searched network and the pruned one differ (by a lot for gLN, whose mean and variance
span every channel and frame). Recomputing these norms with statistics weighted by the 0/1 gate
makes the gated model *exactly* the model surgery produces, for every norm of the registry
(per-channel norms, BatchNorm-like norms at inference and element-wise norms need nothing; the
element-wise LN's ``sqrt(C - 1)`` scale is handled by surgery). The gate enters the statistics
with its straight-through gradient, so the scores also learn what closing a channel does to them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiosep.nn.norms import (
    ChannelLayerNorm,
    CumulativeLayerNorm,
    GlobalLayerNorm,
    RMSNorm,
    weighted_moments,
)

POOLED_NORMS = (GlobalLayerNorm, CumulativeLayerNorm, ChannelLayerNorm, RMSNorm)


def pools_over_channels(norm: nn.Module) -> bool:
    """Whether ``norm``'s statistics mix channels (so closed channels would change them)."""
    return isinstance(norm, POOLED_NORMS)


def normalize_open(norm: nn.Module, x: Tensor, gate: Tensor) -> Tensor:
    """``norm(x)`` on ``[B, C, T]`` with statistics over the channels where ``gate`` (``[C]``, 0/1) is 1.

    The open channels get exactly what ``norm`` restricted to them would give; the closed ones
    get some finite value that the gate downstream discards.
    """
    if x.dim() != 3:
        raise ValueError(f"expected [B, C, T], got shape {tuple(x.shape)}")
    weight = gate.to(x.dtype).view(1, -1, 1)
    count = weight.sum().clamp_min(1.0)  # open channels, with the gate's gradient (a fully closed group: 1, no 0/0)
    if isinstance(norm, GlobalLayerNorm):
        mean, var = weighted_moments(x, weight, (1, 2), count * x.shape[2])
        normalised = (x - mean) * torch.rsqrt(var + norm.eps)
    elif isinstance(norm, ChannelLayerNorm):
        mean, var = weighted_moments(x, weight, (1,), count)
        normalised = (x - mean) * torch.rsqrt(var + norm.eps)
    elif isinstance(norm, RMSNorm):
        power = (x.square() * weight).sum(dim=1, keepdim=True) / count
        normalised = x * torch.rsqrt(power + norm.eps)
    elif isinstance(norm, CumulativeLayerNorm):
        normalised = _cumulative_open(x, weight, count, norm.eps)
    else:
        raise TypeError(f"{type(norm).__name__} does not pool over channels")
    return norm._affine(normalised)


def _cumulative_open(x: Tensor, weight: Tensor, count: Tensor, eps: float) -> Tensor:
    """Cumulative LN over the open channels: the stable scheme of :class:`CumulativeLayerNorm`."""
    shift = (x[:, :, :1] * weight).sum(dim=1, keepdim=True) / count  # first frame's open mean
    centred = x - shift
    sums = (centred * weight).sum(dim=1).double().cumsum(dim=-1)  # [B, T]
    sums_sq = (centred.square() * weight).sum(dim=1).double().cumsum(dim=-1)
    frames = torch.arange(1, x.shape[2] + 1, device=x.device, dtype=torch.float64)
    total = frames * count.double()
    mean = sums / total
    var = (sums_sq / total - mean.square()).clamp_min(0.0)
    inv_std = torch.rsqrt(var + eps).to(x.dtype).unsqueeze(1)
    return (centred - mean.to(x.dtype).unsqueeze(1)) * inv_std
