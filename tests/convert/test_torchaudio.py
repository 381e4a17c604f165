"""torchaudio ConvTasNet -> ours: inferred configuration and identical outputs (float64 and float32)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
import torchaudio
from torch import nn

from audiosep.convert.torchaudio import from_torchaudio_convtasnet, infer_torchaudio_config

SMALL = dict(enc_num_feats=16, msk_num_feats=8, msk_num_hidden_feats=12, msk_num_layers=3, msk_num_stacks=2)
CONFIGS = {
    "small-sigmoid": SMALL,
    "small-relu-odd-kernel-3-sources": SMALL | dict(msk_activate="relu", enc_kernel_size=5, num_sources=3),
    "default-sigmoid": {},
    "base-relu": dict(msk_activate="relu"),  # torchaudio.models.conv_tasnet_base, the pretrained layout
}


def torchaudio_model(config: dict) -> nn.Module:
    """A seeded torchaudio ConvTasNet with every parameter perturbed (no trivial norm/PReLU values)."""
    torch.manual_seed(0)
    model = torchaudio.models.ConvTasNet(**config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1 + 0.1 * torch.randn_like(param))
    return model


def convert(theirs: nn.Module, config: dict) -> nn.Module:
    return from_torchaudio_convtasnet(
        theirs.state_dict(),
        num_layers=config.get("msk_num_layers", 8),
        mask_activation=config.get("msk_activate", "sigmoid"),
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_outputs_match_exactly_in_float64(name: str) -> None:
    config = CONFIGS[name]
    theirs = torchaudio_model(config)
    ours = convert(theirs, config)
    theirs.double(), ours.double()
    x = torch.randn(2, 1200, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = theirs(x.unsqueeze(1)), ours(x)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() < 1e-9


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("length", [1600, 1601, 1603])
def test_outputs_match_in_float32_for_any_length(name: str, length: int) -> None:
    """torchaudio pads to a multiple of the stride and crops back; ours pads the same way."""
    config = CONFIGS[name]
    theirs = torchaudio_model(config)
    ours = convert(theirs, config)
    x = 0.1 * torch.randn(2, length)  # a speech-like level
    with torch.no_grad():
        expected, actual = theirs(x.unsqueeze(1)), ours(x)
    assert actual.shape == expected.shape == (2, config.get("num_sources", 2), length)
    # float32 summation order differs (oneDNN vs. conv1d); relative to the output peak.
    assert (actual - expected).abs().max() / expected.abs().max() < 1e-5
    if name.startswith("small"):
        assert (actual - expected).abs().max() < 1e-5


def test_inferred_configuration() -> None:
    theirs = torchaudio.models.ConvTasNet(
        num_sources=3, enc_kernel_size=6, enc_num_feats=20, msk_kernel_size=3, msk_num_feats=10,
        msk_num_hidden_feats=14, msk_num_layers=4, msk_num_stacks=2,
    )  # fmt: skip
    config = infer_torchaudio_config(theirs.state_dict(), num_layers=4)
    expected = dict(
        num_sources=3, enc_num_filters=20, enc_kernel_size=6, bottleneck_channels=10, hidden_channels=14,
        skip_channels=10, conv_kernel_size=3, num_layers=4, num_repeats=2, norm="gLN", causal=False,
        encoder_activation="linear",
    )  # fmt: skip
    assert {key: config[key] for key in expected} == expected
    assert infer_torchaudio_config(torchaudio.models.conv_tasnet_base().state_dict())["num_repeats"] == 3


def test_block_count_not_a_multiple_of_num_layers_raises() -> None:
    theirs = torchaudio.models.ConvTasNet(**SMALL)  # 6 blocks
    with pytest.raises(ValueError, match="6 conv blocks.*num_layers=4"):
        from_torchaudio_convtasnet(theirs.state_dict(), num_layers=4)


def test_nan_weights_are_refused() -> None:
    """They were loaded as they were (convert reviewer): every output NaN."""
    state = torchaudio.models.ConvTasNet(**SMALL).state_dict()
    state["decoder.weight"] = state["decoder.weight"].clone().fill_(float("nan"))
    with pytest.raises(ValueError, match="hold NaN or infinity .e.g. 'decoder.weight'"):
        from_torchaudio_convtasnet(state, num_layers=3)


def test_not_a_conv_tasnet_state_dict_raises() -> None:
    with pytest.raises(KeyError):
        from_torchaudio_convtasnet(nn.Linear(2, 2).state_dict())


def test_convert_package_is_lazy() -> None:
    """``audiosep.convert`` resolves names on access and imports no other importer's module."""
    code = (
        "import sys, audiosep.convert as c\n"
        "assert not [m for m in sys.modules if m.startswith('audiosep.convert.')], sys.modules.keys()\n"
        "c.from_torchaudio_convtasnet\n"
        "assert 'audiosep.convert.torchaudio' in sys.modules\n"
        "assert 'audiosep.convert.speechbrain' not in sys.modules and 'speechbrain' not in sys.modules\n"
        "try:\n    c.no_such_importer\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_defaults_taken_for_what_the_weights_cannot_tell_are_warned_about() -> None:
    """A plain torchaudio ConvTasNet() (sigmoid) loaded with the relu default was 68 % off, silently (reviewer)."""
    state = torchaudio.models.ConvTasNet(**SMALL).state_dict()
    with pytest.warns(UserWarning, match="mask_activation not given .*torchaudio.models.ConvTasNet\\(\\) defaults to sigmoid"):
        from_torchaudio_convtasnet(state, num_layers=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_torchaudio_convtasnet(state, num_layers=3, mask_activation="sigmoid")
