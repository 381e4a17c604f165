"""Unified Normalization, PowerNorm and the long-input cumulative LN against float64 references.

The references follow the papers' equations step by step (loops over iterations, products for
geometric means), independently of the layers' vectorised code.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from audiosep.nn.norms import (
    CumulativeLayerNorm,
    PowerNorm,
    UnifiedNorm,
    build_norm,
    fold_batchnorm,
    inference_affine,
)

CHANNELS = 5


def _batches(count: int, seed: int = 0, scales: list[float] | None = None) -> list[Tensor]:
    """float64 ``[B, C, T]`` batches with per-channel scales (and optional per-batch scale)."""
    gen = torch.Generator().manual_seed(seed)
    channel_scale = torch.rand(1, CHANNELS, 1, generator=gen, dtype=torch.float64) * 2 + 0.5
    out = []
    for index in range(count):
        x = torch.randn(3, CHANNELS, 7, generator=gen, dtype=torch.float64) * channel_scale + 0.3
        out.append(x * (scales[index] if scales else 1.0))
    return out


def _with_affine(norm: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(CHANNELS, generator=gen, dtype=torch.float64) + 1)
        norm.bias.copy_(torch.randn(CHANNELS, generator=gen, dtype=torch.float64))
    return norm


def _affine(norm: torch.nn.Module, z: Tensor) -> Tensor:
    return z * norm.weight.view(1, -1, 1) + norm.bias.view(1, -1, 1)


def unified_reference(
    batches: list[Tensor], eps: float, momentum: float, window: int, warmup: int, outlier_filter: bool
) -> tuple[list[Tensor], Tensor, int]:
    """UN (Yang et al. 2022): normalised batches, final running E[x^2], number of skipped batches."""
    running = torch.ones(CHANNELS, dtype=torch.float64)
    slots = [torch.ones(CHANNELS, dtype=torch.float64) for _ in range(window)]
    outputs, skipped = [], 0
    for step, x in enumerate(batches, start=1):
        power = (x**2).mean(dim=(0, 2))  # quadratic mean, no centring
        spread = torch.sqrt(torch.stack(slots)).var() if window > 1 else None
        slots[step % window] = power
        in_warmup = step < warmup or step <= window
        skip = False
        if outlier_filter and not in_warmup and spread is not None:
            arithmetic = sum(slots) / window
            geometric = math.prod(slots) ** (1.0 / window)
            if bool((arithmetic - geometric > window * spread).any()):
                slots[step % window] = running.clone()
                skip, skipped = True, skipped + 1
        statistic = power if (in_warmup or skip or window == 1) else math.prod(slots) ** (1.0 / window)
        running = momentum * running + (1 - momentum) * statistic
        outputs.append(x / torch.sqrt(statistic.view(1, -1, 1) + eps))
    return outputs, running, skipped


def power_reference(batches: list[Tensor], eps: float, momentum: float, warmup: int) -> tuple[list[Tensor], Tensor]:
    """PowerNorm (Shen et al. 2020, Alg. 1): divide by the previous running quadratic mean after warm-up."""
    running = torch.ones(CHANNELS, dtype=torch.float64)
    outputs = []
    for step, x in enumerate(batches, start=1):
        power = (x**2).mean(dim=(0, 2))
        if step <= warmup:
            outputs.append(x / torch.sqrt(power.view(1, -1, 1) + eps))
            running = running * (step - 1) / step + power / step  # average of the warm-up statistics
        else:
            outputs.append(x / torch.sqrt(running.view(1, -1, 1) + eps))
            running = momentum * running + (1 - momentum) * power
    return outputs, running


UN_CASES = [
    dict(window=4, warmup=0, outlier_filter=False),
    dict(window=4, warmup=6, outlier_filter=False),
    dict(window=1, warmup=0, outlier_filter=False),
    dict(window=3, warmup=2, outlier_filter=True),
]


@pytest.mark.parametrize("case", UN_CASES, ids=[str(i) for i in range(len(UN_CASES))])
def test_unified_norm_matches_the_reference_in_training_and_inference(case: dict) -> None:
    scales = [1.0] * 12
    scales[9] = 40.0  # an outlier batch after warm-up: the filter must catch it
    batches = _batches(12, scales=scales)
    norm = _with_affine(
        UnifiedNorm(CHANNELS, eps=1e-5, momentum=0.9, window=case["window"], warmup_iters=case["warmup"],
                    outlier_filter=case["outlier_filter"]).double()
    ).train()  # fmt: skip
    expected, running, skipped = unified_reference(batches, 1e-5, 0.9, case["window"], case["warmup"], case["outlier_filter"])
    for x, z in zip(batches, expected, strict=True):
        torch.testing.assert_close(norm(x), _affine(norm, z), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(norm.running_power, running, rtol=1e-12, atol=1e-12)
    assert int(norm.num_skipped) == skipped
    if case["outlier_filter"]:
        assert skipped >= 1
    x = batches[0]
    eval_expected = _affine(norm, x / torch.sqrt(running.view(1, -1, 1) + 1e-5))
    torch.testing.assert_close(norm.eval()(x), eval_expected, rtol=1e-10, atol=1e-10)


def test_unified_norm_gradient_flows_through_the_windowed_statistic() -> None:
    """After warm-up the gradient is autograd's through the geometric mean (past slots constant)."""
    batches = _batches(6)
    norm = _with_affine(UnifiedNorm(CHANNELS, window=3, warmup_iters=0).double()).train()
    for x in batches[:-1]:
        norm(x)
    past = [norm.window_power[:, i].clone() for i in range(3)]
    x = batches[-1].clone().requires_grad_(True)
    norm(x).square().sum().backward()
    x_ref = batches[-1].clone().requires_grad_(True)
    slot = 6 % 3
    past[slot] = (x_ref**2).mean(dim=(0, 2))
    statistic = math.prod(past) ** (1 / 3)
    _affine(norm, x_ref / torch.sqrt(statistic.view(1, -1, 1) + norm.eps)).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("warmup", [0, 3, 100])
def test_power_norm_matches_the_reference_in_training_and_inference(warmup: int) -> None:
    batches = _batches(8, seed=1)
    norm = _with_affine(PowerNorm(CHANNELS, eps=1e-5, momentum=0.9, warmup_iters=warmup).double()).train()
    expected, running = power_reference(batches, 1e-5, 0.9, warmup)
    for x, z in zip(batches, expected, strict=True):
        torch.testing.assert_close(norm(x), _affine(norm, z), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(norm.running_power, running, rtol=1e-12, atol=1e-12)
    x = batches[0]
    torch.testing.assert_close(
        norm.eval()(x), _affine(norm, x / torch.sqrt(running.view(1, -1, 1) + 1e-5)), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("name", ["unified_norm", "power_norm", "batch_norm"])
def test_batch_statistics_norms_are_an_affine_at_inference_that_folds_into_a_conv(name: str) -> None:
    norm = _with_affine(build_norm(name, CHANNELS).double()).train()
    for x in _batches(5, seed=2):
        norm(x)
    norm.eval()
    x = _batches(1, seed=3)[0]
    scale, shift = inference_affine(norm)
    torch.testing.assert_close(norm(x), x * scale.view(1, -1, 1) + shift.view(1, -1, 1), rtol=1e-12, atol=1e-12)
    conv = torch.nn.Conv1d(4, CHANNELS, 3, padding=1).double()
    y = torch.randn(2, 4, 9, dtype=torch.float64)
    torch.testing.assert_close(fold_batchnorm(conv, norm)(y), norm(conv(y)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("name", "bad"), [("unified_norm", dict(window=0)), ("power_norm", dict(momentum=1.0))])
def test_invalid_options_raise(name: str, bad: dict) -> None:
    cls = UnifiedNorm if name == "unified_norm" else PowerNorm
    with pytest.raises(ValueError, match=next(iter(bad))):
        cls(CHANNELS, **bad)


def _cumulative_float64(x: Tensor, eps: float) -> Tensor:
    """cLN in float64 from its definition: running sums of x and x^2 over channels and frames <= t."""
    count = torch.arange(1, x.shape[2] + 1, dtype=torch.float64) * x.shape[1]
    mean = x.sum(dim=1).cumsum(dim=-1) / count
    var = x.pow(2).sum(dim=1).cumsum(dim=-1) / count - mean**2
    return (x - mean.unsqueeze(1)) / torch.sqrt(var.unsqueeze(1) + eps)


def test_cumulative_ln_on_60_seconds_in_float32_matches_float64() -> None:
    """60 s at 8 kHz after a stride-8 encoder: 60,000 frames of non-negative (ReLU) features."""
    channels, frames = 64, 60 * 8000 // 8
    gen = torch.Generator().manual_seed(0)
    envelope = 1 + 0.8 * torch.sin(torch.arange(frames, dtype=torch.float64) / 3000)
    offsets = 10 + torch.rand(1, channels, 1, generator=gen, dtype=torch.float64)
    x = (torch.randn(1, channels, frames, generator=gen, dtype=torch.float64).abs() * 0.3 * envelope + offsets).float()
    norm = CumulativeLayerNorm(channels, eps=1e-8)
    expected = _cumulative_float64(x.double(), 1e-8)
    error = (norm.normalize(x).double() - expected).abs().max()
    assert error < 1e-4
    # The same formula with float32 running sums (the old code) misses the bound on this input.
    assert (_cumulative_float64(x, 1e-8).double() - expected).abs().max() > 1e-4 > error
