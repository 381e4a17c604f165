"""QuartzNet: paper parameter counts, shapes and lengths, padding invariance, rebuild from a record."""

from __future__ import annotations

import pytest
import torch
from asr_helpers import TINY_BLOCKS, randomize_batchnorm

from audiosep.checkpoint import load_model, save_model
from audiosep.models.quartznet import QuartzNet, parse_block, quartznet_5x5, quartznet_15x5
from audiosep.nn.norms import NORM_NAMES


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("factory", "millions"), [(quartznet_5x5, 6.71), (quartznet_15x5, 18.92)])
def test_preset_parameter_counts_match_nemo(factory, millions):
    model = factory()
    assert abs(count(model) / 1e6 - millions) / millions < 0.01
    assert len(model.blocks) == 2 + (5 if factory is quartznet_5x5 else 15) + 1 and model.stride == 2


def test_parameter_count_formula_for_tiny_model():
    model = QuartzNet(8, 5, [[4, 3, 1, 2, 1, False], [6, 5, 2], [6, 1, 1, 1, 1, False, False]])
    c1 = 8 * 3 + 8 * 4 + 2 * 4  # depthwise, pointwise, norm
    b1 = (4 * 5 + 4 * 6 + 2 * 6) + (6 * 5 + 6 * 6 + 2 * 6) + (4 * 6 + 2 * 6)  # two sub-blocks + residual
    c3 = 6 * 6 + 2 * 6  # dense 1x1
    assert count(model) == c1 + b1 + c3 + 6 * 5 + 5


def test_output_shapes_lengths_and_log_probs():
    model = QuartzNet(64, 29, TINY_BLOCKS).eval()
    log_probs, lengths = model(torch.randn(3, 64, 101), torch.tensor([101, 64, 7]))
    assert log_probs.shape == (3, 51, 29) and log_probs.dtype == torch.float32
    assert lengths.tolist() == [(n - 1) // 2 + 1 for n in (101, 64, 7)]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 51))


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_batch_of_one_equals_batch_of_four(norm):
    """With every norm: gLN and time LN took their statistics over the padding too (reviewer: a greedy
    transcript changed with the batch)."""
    torch.manual_seed(0)
    model = QuartzNet(64, 29, TINY_BLOCKS, norm=norm)
    randomize_batchnorm(model)
    model.eval()
    lengths = torch.tensor([90, 37, 64, 11])
    feats = torch.randn(4, 64, 90) * (torch.arange(90) < lengths[:, None]).unsqueeze(1)
    feats[1, :, 37:] = 3.0  # garbage in the padding must not matter either
    batch_lp, batch_len = model(feats, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone_lp, alone_len = model(feats[b : b + 1, :, :n], lengths[b : b + 1])
        assert alone_len.item() == batch_len[b].item()
        torch.testing.assert_close(batch_lp[b, : batch_len[b]], alone_lp[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(batch_lp[b, : batch_len[b]].argmax(-1), alone_lp[0].argmax(-1))


def test_block_specs_as_lists_and_dicts_agree():
    as_dict = {"channels": 16, "kernel_size": 7, "repeat": 2}
    assert parse_block([16, 7, 2]) == parse_block(as_dict)
    assert parse_block(as_dict)["separable"] and parse_block(as_dict)["residual"]


@pytest.mark.parametrize(
    "spec",
    [
        {"channels": 8},
        {"channels": 8, "kernel_size": 3, "colour": 1},
        [8, 3, 0],
        [8, 3, 1, 2, 2],
        [8, 3, 1, 1, 1, True, True, 0.1, 9],
    ],
)
def test_bad_block_specs_raise(spec):
    with pytest.raises(ValueError):
        parse_block(spec)


def test_residual_block_cannot_stride_and_unknown_activation_raises():
    with pytest.raises(ValueError, match="residual"):
        QuartzNet(8, 5, [[4, 3, 2, 2]])
    with pytest.raises(ValueError, match="activation"):
        QuartzNet(8, 5, TINY_BLOCKS, activation="tanh")


def test_rebuilds_from_checkpoint(tmp_path):
    model = QuartzNet(64, 29, TINY_BLOCKS, dropout=0.1)
    randomize_batchnorm(model)
    save_model(model, tmp_path / "m.pt", {"sample_rate": 16000})
    loaded, metadata = load_model(tmp_path / "m.pt")
    feats, lengths = torch.randn(2, 64, 40), torch.tensor([40, 25])
    torch.testing.assert_close(loaded(feats, lengths)[0], model.eval()(feats, lengths)[0], rtol=0, atol=0)
    assert metadata == {"sample_rate": 16000}


def test_bf16_autocast_gives_float32_log_probs():
    model = QuartzNet(64, 29, TINY_BLOCKS).eval()
    feats, lengths = torch.randn(2, 64, 40), torch.tensor([40, 25])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs, _ = model(feats, lengths)
    assert log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs, model(feats, lengths)[0], atol=0.1, rtol=0.05)


def test_an_even_kernel_is_refused_in_a_residual_block_when_the_model_is_built():
    """'Same' padding of an even kernel loses a frame: a residual block's sum then failed in every forward (a
    crafted checkpoint loaded, then a 49-line traceback per file: reviewer); a block without a residual (a
    strided first block, as NeMo allows) still builds and runs."""
    with pytest.raises(ValueError, match="a residual block's kernel_size must be odd, got 4"):
        QuartzNet(64, 5, [[16, 4, 1, 1, 1, True]])
    model = QuartzNet(64, 5, [[16, 32, 1, 2, 1, False], [16, 3, 1, 1, 1, True]]).eval()
    log_probs, lengths = model(torch.randn(2, 64, 50), torch.tensor([50, 37]))
    assert log_probs.shape[:2] == (2, int(lengths.max())) and torch.isfinite(log_probs).all()


def test_every_conv_of_a_padded_batch_sees_zeros_past_each_length():
    """NeMo's MaskedConv1d masks every conv's input; the pointwise and residual 1x1 convs here took the padded
    frames as they were, so in training BatchNorm's batch statistics differed from NeMo's (up to 8.3 in the
    log-probs, running means 4.6e-2 off; models reviewer)."""
    torch.manual_seed(0)
    model = QuartzNet(64, 29, TINY_BLOCKS).train()
    lengths = torch.tensor([40, 23])
    seen: list[tuple[str, torch.Tensor]] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv1d):
            module.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, args[0].detach())))
    model(torch.randn(2, 64, 40), lengths)
    convs = {name for name, _ in seen}
    assert {"blocks.0.layers.0.pointwise", "blocks.1.residual.conv", "blocks.3.layers.0.conv"} <= convs
    for name, inputs in seen:
        if name != "head":  # the CTC head has no norm after it: its padded frames are never read
            valid = 23 if inputs.shape[-1] == 40 else 12  # the second row's frames before and after the stride of 2
            assert not inputs[1, :, valid:].any(), name


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"in_features": 0}, "in_features must be a positive int, got 0"),
    ({"num_classes": 1.5}, "num_classes must be a positive int, got 1.5"),
    ({"blocks": []}, "quartznet_5x5 fixes its blocks; build QuartzNet"),
])  # fmt: skip
def test_bad_preset_arguments_name_themselves(kwargs: dict, message: str) -> None:
    """in_features=0 said "groups must be a positive integer", blocks=[] "multiple values for argument" (reviewer)."""
    with pytest.raises(ValueError, match=message):
        quartznet_5x5(**kwargs)
