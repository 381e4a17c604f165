"""Norm registry: every entry against an independent float64 formula, causality, errors, BN folding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from audiosep.nn.norms import (
    NORM_ALIASES,
    NORM_NAMES,
    build_norm,
    canonical_norm_name,
    check_causal_norm,
    fold_batchnorm,
    is_causal_in_training,
    is_causal_norm,
)

BATCH, CHANNELS, FRAMES = 3, 6, 11
PAPER_ALIASES = {"gLN": "global_ln", "cLN": "cumulative_ln", "layer_norm": "channel_ln"}


def _input(seed: int = 0) -> Tensor:
    """float64 ``[B, C, T]`` with per-channel offsets and scales, so that every statistic matters."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, CHANNELS, FRAMES, generator=gen, dtype=torch.float64)
    scale = torch.rand(1, CHANNELS, 1, generator=gen, dtype=torch.float64) * 3 + 0.5
    offset = torch.randn(1, CHANNELS, 1, generator=gen, dtype=torch.float64) * 2
    return x * scale + offset


def _built(name: str, seed: int = 1) -> nn.Module:
    """The norm in float64 with random non-trivial affine parameters (and DyT alpha)."""
    norm = build_norm(name, CHANNELS).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in norm.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) + 0.5)
    return norm


def _affine(norm: nn.Module, x: Tensor) -> Tensor:
    return x * norm.weight.view(1, -1, 1) + norm.bias.view(1, -1, 1)


def _standardize(x: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    return (x - mean) / torch.sqrt(var + eps)


def reference(name: str, norm: nn.Module, x: Tensor) -> Tensor:
    """The textbook definition of each norm, written with explicit loops/reductions in float64."""
    if name == "global_ln":
        mean = x.mean(dim=(1, 2), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
        return _affine(norm, _standardize(x, mean, var, norm.eps))
    if name == "cumulative_ln":
        out = torch.empty_like(x)
        for t in range(x.shape[2]):
            past = x[:, :, : t + 1]
            mean = past.mean(dim=(1, 2), keepdim=True)
            var = ((past - mean) ** 2).mean(dim=(1, 2), keepdim=True)
            out[:, :, t : t + 1] = _standardize(x[:, :, t : t + 1], mean, var, norm.eps)
        return _affine(norm, out)
    if name == "channel_ln":
        mean = x.mean(dim=1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
        return _affine(norm, _standardize(x, mean, var, norm.eps))
    if name == "time_ln":
        mean = x.mean(dim=2, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=2, keepdim=True)
        return _affine(norm, _standardize(x, mean, var, norm.eps))
    if name == "rms_norm":
        return _affine(norm, x / torch.sqrt((x**2).mean(dim=1, keepdim=True) + norm.eps))
    if name == "dyt":
        return _affine(norm, torch.tanh(norm.alpha * x))
    if name == "elementwise_ln":  # ELN eq.: sqrt(C - 1) x / sqrt(beta + x^2), beta = 1 / alpha^2, mean 0
        beta = 1.0 / norm.alpha**2
        return _affine(norm, math.sqrt(CHANNELS - 1) * x / torch.sqrt(beta + x**2))
    if name in ("unified_norm", "power_norm"):  # first training step (warm-up): batch E[x^2] per channel
        power = (x**2).mean(dim=(0, 2), keepdim=True)
        return _affine(norm, x / torch.sqrt(power + norm.eps))
    if name == "batch_norm":  # training mode: batch statistics over B and T
        mean = x.mean(dim=(0, 2), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2), keepdim=True)
        return _affine(norm, _standardize(x, mean, var, norm.eps))
    if name == "none":
        return x
    raise AssertionError(f"no reference for {name}")


@pytest.mark.parametrize("name", NORM_NAMES)
def test_norm_matches_reference_formula(name: str) -> None:
    norm, x = _built(name).train(), _input()
    torch.testing.assert_close(norm(x), reference(name, norm, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("alias", sorted(PAPER_ALIASES))
def test_paper_aliases_keep_the_paper_meaning(alias: str) -> None:
    assert canonical_norm_name(alias) == PAPER_ALIASES[alias]
    norm, x = _built(alias).train(), _input()
    torch.testing.assert_close(norm(x), reference(PAPER_ALIASES[alias], norm, x), rtol=1e-9, atol=1e-9)


def test_every_alias_points_to_a_registered_name() -> None:
    assert set(NORM_ALIASES.values()) <= set(NORM_NAMES)


def test_batch_norm_eval_uses_running_statistics_and_train_updates_them() -> None:
    norm, x = _built("batch_norm"), _input()
    running_mean = torch.randn(CHANNELS, dtype=torch.float64)
    running_var = torch.rand(CHANNELS, dtype=torch.float64) + 0.5
    norm.running_mean.copy_(running_mean)
    norm.running_var.copy_(running_var)
    expected = _affine(
        norm, _standardize(x, running_mean.view(1, -1, 1), running_var.view(1, -1, 1), norm.eps)
    )
    torch.testing.assert_close(norm.eval()(x), expected, rtol=1e-9, atol=1e-9)

    norm.train()(x)
    momentum = norm.momentum
    unbiased_var = x.transpose(0, 1).reshape(CHANNELS, -1).var(dim=1, unbiased=True)
    torch.testing.assert_close(
        norm.running_mean, (1 - momentum) * running_mean + momentum * x.mean(dim=(0, 2))
    )
    torch.testing.assert_close(norm.running_var, (1 - momentum) * running_var + momentum * unbiased_var)


@pytest.mark.parametrize("name", NORM_NAMES)
def test_causal_norms_ignore_the_future_and_the_others_do_not(name: str) -> None:
    norm, x = _built(name).eval(), _input()
    cut = FRAMES // 2
    changed = x.clone()
    changed[:, :, cut:] = changed[:, :, cut:] * 3 + 1
    past, past_changed = norm(x)[:, :, :cut], norm(changed)[:, :, :cut]
    assert norm.causal == is_causal_norm(name)
    if is_causal_norm(name):
        torch.testing.assert_close(past_changed, past, rtol=0, atol=1e-12)
    else:
        assert (past_changed - past).abs().max() > 1e-3


@pytest.mark.parametrize("name", [n for n in NORM_NAMES if n != "cumulative_ln"])
def test_norms_accept_a_trailing_singleton_dim_in_channels_last_layout(name: str) -> None:
    """Conv-TasNet feeds ``[B, C, M, 1]`` channels-last tensors; the result must equal the 3-D one."""
    norm, x = _built(name).eval(), _input()
    x4 = x.unsqueeze(3).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(norm(x4).squeeze(3), norm(x), rtol=1e-12, atol=1e-12)


def test_unknown_name_raises_and_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="'group_norm'") as info:
        build_norm("group_norm", CHANNELS)
    for name in NORM_NAMES + tuple(PAPER_ALIASES):
        assert name in str(info.value)
    with pytest.raises(ValueError):
        is_causal_norm("gln")  # names are case-sensitive: no silent fallback


@pytest.mark.parametrize("name", ["gLN", "global_ln", "time_ln"])
def test_check_causal_norm_rejects_non_causal_norms_in_causal_models(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        check_causal_norm(name, causal=True)
    check_causal_norm(name, causal=False)


@pytest.mark.parametrize(
    "name", ["cLN", "channel_ln", "batch_norm", "unified_norm", "power_norm", "rms_norm", "dyt", "elementwise_ln", "none"]
)
def test_check_causal_norm_accepts_causal_norms(name: str) -> None:
    check_causal_norm(name, causal=True)


@pytest.mark.parametrize("name", NORM_NAMES)
def test_batch_statistics_norms_are_not_causal_in_training(name: str) -> None:
    """In training, BN-like norms mix every frame of the batch: changing the future changes the past."""
    norm, x = _built(name).train(), _input()
    changed = x.clone()
    changed[:, :, FRAMES // 2 :] = changed[:, :, FRAMES // 2 :] * 3 + 1
    past, past_changed = norm(x)[:, :, : FRAMES // 2], norm(changed)[:, :, : FRAMES // 2]
    assert norm.causal_in_training == is_causal_in_training(name)
    if is_causal_in_training(name):
        torch.testing.assert_close(past_changed, past, rtol=0, atol=1e-12)
    else:
        assert (past_changed - past).abs().max() > 1e-3


CONV_CASES = [
    dict(bias=True),
    dict(bias=False),
    dict(bias=True, kernel_size=3, padding=2, dilation=2),
    dict(bias=False, kernel_size=5, padding=1, stride=2),
    dict(bias=True, kernel_size=3, padding=1, groups=CHANNELS),
    dict(bias=True, kernel_size=3, groups=2, padding_mode="reflect", padding=1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_fold_batchnorm_leaves_outputs_unchanged(case: dict) -> None:
    torch.manual_seed(0)
    kwargs = {"kernel_size": 1} | case
    conv = nn.Conv1d(CHANNELS, 2 * CHANNELS, **kwargs).double()
    bn = nn.BatchNorm1d(2 * CHANNELS).double().eval()
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = _input()
    fused = fold_batchnorm(conv, bn)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_gln_of_a_float32_channels_last_input_is_as_precise_as_of_a_channels_first_one(offset: float) -> None:
    """torch's channels-last CPU group norm takes the variance as mean square minus squared mean in float32:
    8e-3 off at a mean 100 times the spread, 3.2 at 1000 times (reviewer), where channels-first is 5e-5."""
    torch.manual_seed(0)
    norm = build_norm("gLN", 64).eval()
    x = offset + torch.randn(2, 64, 500)
    with torch.no_grad():
        expected = torch.nn.functional.group_norm(x.double(), 1, norm.weight.double(), norm.bias.double(), norm.eps)
        channels_last = norm(x.unsqueeze(3).contiguous(memory_format=torch.channels_last)).squeeze(3)
        channels_first = norm(x)
    plain_error = float((channels_first.double() - expected).abs().max())
    assert float((channels_last.double() - expected).abs().max()) <= max(1e-5, 2 * plain_error)


def test_eln_with_a_negative_alpha_is_still_the_papers_formula() -> None:
    """``u = alpha x`` gave minus the paper's ``sqrt(C - 1) x / sqrt(beta + x^2)``, ``beta = 1 / alpha^2``, once
    training took alpha below zero (reviewer)."""
    norm = build_norm("elementwise_ln", CHANNELS).double()
    x = torch.randn(2, CHANNELS, 30, dtype=torch.float64)
    for alpha in (0.3, -0.3):
        with torch.no_grad():
            norm.alpha.fill_(alpha)
        expected = math.sqrt(CHANNELS - 1) * x / torch.sqrt(1 / alpha**2 + x * x)
        torch.testing.assert_close(norm.normalize(x), expected, rtol=1e-12, atol=1e-12)


def test_the_mask_networks_channel_ln_is_speechbrains_cln_on_quiet_frames() -> None:
    """SpeechBrain's "cln" (a channel-wise LN, eps 1e-8) is what the SepFormer family's channel_ln computes,
    on frames from 1e-5 to 1 (where eps matters), in float64."""
    pytest.importorskip("speechbrain", reason="SpeechBrain is an optional peer")
    from speechbrain.lobes.models.dual_path import select_norm

    from audiosep.nn.dual_path import build_masknet_norm

    torch.manual_seed(0)
    x = torch.randn(2, 16, 50, dtype=torch.float64) * torch.logspace(-5, 0, 50, dtype=torch.float64)  # quiet to loud
    theirs = select_norm("cln", 16, 3).double()
    ours = build_masknet_norm("channel_ln", 16).double()
    with torch.no_grad():
        for norm in (theirs, ours):
            norm.weight.copy_(torch.linspace(0.5, 1.5, 16))
            norm.bias.copy_(torch.linspace(-0.1, 0.1, 16))
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ["global_ln", "time_ln"])
def test_norm_over_valid_frames_takes_each_rows_statistics_from_its_valid_frames(name: str) -> None:
    """Against the norm of each row's valid frames alone, in float64; rows of 0 frames give no NaN."""
    from audiosep.nn.norms import norm_over_valid_frames

    torch.manual_seed(0)
    norm = build_norm(name, 6).double()
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    valid = torch.tensor([9, 4, 1, 0])
    x = torch.randn(4, 6, 9, dtype=torch.float64) * 3 + 5
    x[1, :, 4:] = 1e3  # padding that would dominate the statistics
    y = norm_over_valid_frames(norm, x, valid)
    for row, frames in enumerate(valid.tolist()):
        if frames:
            expected = norm(x[row : row + 1, :, :frames])[0]
            torch.testing.assert_close(y[row, :, :frames], expected, atol=1e-12, rtol=1e-12)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["global_ln", "time_ln"])
def test_norm_over_valid_frames_sums_half_precision_in_float32(name: str, dtype: torch.dtype) -> None:
    """float16 sums of 256 channels x 600 frames overflowed to inf and the output was NaN (reviewer)."""
    from audiosep.nn.norms import norm_over_valid_frames

    norm = build_norm(name, 256)
    x = torch.randn(2, 256, 600) * 4 + 3
    valid = torch.tensor([600, 450])
    expected = norm_over_valid_frames(norm, x, valid)
    got = norm_over_valid_frames(norm.to(dtype), x.to(dtype), valid)
    assert got.dtype == dtype and torch.isfinite(got).all()
    step = 1e-2 if dtype == torch.float16 else 8e-2  # a few of the format's rounding steps at |y| ~ 3
    assert float((got.float() - expected)[0].abs().max()) < step
    assert float((got.float() - expected)[1, :, :450].abs().max()) < step


def test_norm_over_valid_frames_keeps_a_subclass_s_wider_statistics() -> None:
    """The ONNX export's gLN sums in float64 (statistics_dtype): the masked path keeps that."""
    from audiosep.export import Float64StatisticsGlobalLayerNorm
    from audiosep.nn.norms import norm_over_valid_frames

    wide = Float64StatisticsGlobalLayerNorm(4, 1e-8)
    x = torch.full((1, 4, 2000), 1000.0) + torch.randn(1, 4, 2000) * 1e-3  # float32 sums lose the spread here
    y = norm_over_valid_frames(wide, x, torch.tensor([2000]))
    torch.testing.assert_close(y, wide(x), atol=1e-6, rtol=0)  # float32 sums: 9e-5 off


@pytest.mark.parametrize("name", ["channel_ln", "batch_norm", "rms_norm", "cumulative_ln", "dyt"])
def test_norm_over_valid_frames_runs_per_frame_norms_as_they_are(name: str) -> None:
    from audiosep.nn.norms import norm_over_valid_frames

    norm = build_norm(name, 6).eval()
    x = torch.randn(2, 6, 9)
    assert torch.equal(norm_over_valid_frames(norm, x, torch.tensor([9, 3])), norm(x))
