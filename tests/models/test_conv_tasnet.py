"""Conv-TasNet: paper size, shapes, norms, causality, batch invariance, checkpoint round trip, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchaudio
from torch.export import Dim, export

from audiosep.checkpoint import load_model, save_model
from audiosep.models.conv_tasnet import ConvTasNet, conv_tasnet_base
from audiosep.nn.norms import NORM_NAMES, is_causal_norm

TINY = dict(
    enc_num_filters=16, enc_kernel_size=8, bottleneck_channels=8, hidden_channels=12,
    skip_channels=6, conv_kernel_size=3, num_layers=3, num_repeats=2,
)  # fmt: skip


def tiny(**overrides: object) -> ConvTasNet:
    """A tiny model with random (not default) PReLU/norm parameters, seeded."""
    torch.manual_seed(0)
    model = ConvTasNet(**(TINY | overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "act" in name or "prelu" in name or "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def paper_parameter_count(
    n: int, kernel: int, b: int, h: int, sc: int, p: int, x: int, r: int, s: int
) -> int:
    """Parameters of the paper's Conv-TasNet, counted layer by layer (Luo & Mesgarani 2019, Fig. 1)."""
    encoder = decoder = n * kernel
    bottleneck = 2 * n + (n * b + b)  # gLN affine + 1x1 conv
    block = (b * h + h) + 1 + 2 * h + (h * p + h) + 1 + 2 * h + (h * sc + sc)  # ... + skip 1x1
    residual = h * b + b
    blocks = x * r * (block + residual) - residual  # the last block's residual output is unused
    output = 1 + (sc * s * n + s * n)  # PReLU + 1x1 conv to the masks
    return encoder + decoder + bottleneck + blocks + output


def test_paper_preset_parameter_count() -> None:
    model = conv_tasnet_base()
    count = sum(p.numel() for p in model.parameters())
    assert count == paper_parameter_count(512, 16, 128, 512, 128, 3, 8, 3, 2)
    assert count == sum(p.numel() for p in torchaudio.models.conv_tasnet_base().parameters())
    # Asteroid's 5.05 M counts one more (unused) residual 1x1 conv in the last block.
    assert abs(count + 128 * 512 + 128 - 5.05e6) / 5.05e6 < 0.01


@pytest.mark.parametrize("kernel", [8, 5])
@pytest.mark.parametrize("length", [1, 3, 4, 7, 101, 800])
def test_any_length_gives_batch_sources_time(kernel: int, length: int) -> None:
    model = tiny(enc_kernel_size=kernel, num_sources=3).eval()
    assert model(torch.randn(2, length)).shape == (2, 3, length)


@pytest.mark.parametrize("shape", [(100,), (2, 1, 100), (1, 2, 1, 100)])
def test_non_2d_input_raises_with_its_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        tiny()(torch.randn(shape))


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_every_norm_builds_and_runs(norm: str) -> None:
    model = tiny(norm=norm)
    out = model(torch.randn(2, 321))
    assert out.shape == (2, 2, 321) and torch.isfinite(out).all()
    if is_causal_norm(norm):
        assert tiny(norm=norm, causal=True)(torch.randn(2, 321)).shape == (2, 2, 321)
    else:
        with pytest.raises(ValueError, match="not causal"):
            tiny(norm=norm, causal=True)


@pytest.mark.parametrize(
    "bad",
    [
        dict(norm="glN"),
        dict(mask_activation="tanh"),
        dict(encoder_activation="gelu"),
        dict(hidden_channels=0),
    ],
)
def test_invalid_arguments_raise(bad: dict) -> None:
    with pytest.raises(ValueError, match=repr(next(iter(bad.values())))):
        ConvTasNet(**(TINY | bad))


def _past_outputs(model: ConvTasNet, length: int = 400, cut: int = 250) -> tuple[torch.Tensor, ...]:
    """Outputs before ``cut - L + 1`` for: an input, the input with samples >= ``cut`` changed, and
    the input truncated at ``cut`` (other end padding). An output sample sees at most L - 1 samples
    ahead (its encoder frame), so a causal model gives the same three (float64)."""
    model = model.double().eval()
    x = torch.randn(2, length, dtype=torch.float64)
    changed = x.clone()
    changed[:, cut:] = torch.randn(2, length - cut, dtype=torch.float64)
    visible = cut - model.enc_kernel_size + 1
    return tuple(model(signal)[..., :visible] for signal in (x, changed, x[:, :cut]))


@pytest.mark.parametrize("norm", ["cLN", "channel_ln", "rms_norm", "batch_norm", "dyt"])
def test_causal_model_has_no_look_ahead_beyond_one_encoder_frame(norm: str) -> None:
    past, past_changed, past_truncated = _past_outputs(tiny(norm=norm, causal=True))
    torch.testing.assert_close(past_changed, past, rtol=0, atol=1e-10)
    torch.testing.assert_close(past_truncated, past, rtol=0, atol=1e-10)


def test_non_causal_model_does_look_ahead() -> None:
    """The same check fails for the non-causal model, so the causal test can fail."""
    past, past_changed, _ = _past_outputs(tiny(norm="channel_ln", causal=False))
    assert not torch.allclose(past_changed, past, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["gLN", "cLN", "time_ln"])
def test_batch_invariance(norm: str) -> None:
    model = tiny(norm=norm).eval()
    x = torch.randn(3, 555)
    with torch.inference_mode():
        batched = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "softmax"])
def test_mask_activation(activation: str) -> None:
    """Softmax masks sum to one over sources, so the sources add up to decoder(encoder(x))."""
    model = tiny(mask_activation=activation, num_sources=3).double().eval()
    x = torch.randn(2, 400, dtype=torch.float64)
    stride = model.stride
    features = F.relu(F.conv1d(x.unsqueeze(1), model.encoder.weight, stride=stride, padding=stride))
    resynthesis = F.conv_transpose1d(features, model.decoder.weight, stride=stride, padding=stride)[:, 0]
    total = model(x).sum(dim=1)
    if activation == "softmax":
        torch.testing.assert_close(total, resynthesis)
    else:
        assert not torch.allclose(total, resynthesis)


def test_without_skip_path() -> None:
    model = tiny(skip_channels=None)
    assert all(block.skip_channels == 0 for block in model.masker.blocks)
    assert model(torch.randn(1, 300)).shape == (1, 2, 300)


@pytest.mark.parametrize("skip_channels", [6, None])
def test_every_parameter_gets_a_gradient(skip_channels: int | None) -> None:
    """No unused parameters: DistributedDataParallel needs no ``find_unused_parameters``."""
    model = tiny(skip_channels=skip_channels)
    model(torch.randn(2, 300)).square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []


FUSED_CASES = [
    (norm, variant)
    for norm in NORM_NAMES
    for variant in (dict(), dict(causal=True), dict(mask_activation="softmax", skip_channels=None))
    if is_causal_norm(norm) or not variant.get("causal")
]


@pytest.mark.parametrize(("norm", "variant"), FUSED_CASES)
def test_fused_inference_path_matches_the_autograd_path(norm: str, variant: dict) -> None:
    """Under ``inference_mode`` convs run as fused oneDNN calls; the result must not change."""
    model = tiny(**({"norm": norm, "mask_activation": "relu"} | variant)).eval()
    x = torch.randn(2, 403)
    expected = model(x)
    with torch.inference_mode():
        actual = model(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = tiny(norm="cLN", causal=True, skip_channels=None, mask_activation="relu").eval()
    save_model(model, tmp_path / "model.pt", {"sample_rate": 8000})
    loaded, metadata = load_model(tmp_path / "model.pt")
    assert isinstance(loaded, ConvTasNet) and loaded.init_args == model.init_args
    assert metadata == {"sample_rate": 8000}
    x = torch.randn(2, 333)
    assert torch.equal(loaded(x), model(x))


def test_prepare_for_inference_folds_batch_norm_exactly() -> None:
    model = tiny(norm="batch_norm")
    model.train()(torch.randn(4, 400))  # non-trivial running statistics
    model.eval()
    x = torch.randn(2, 300, dtype=torch.float64)
    expected = model.double()(x)
    folded = model.prepare_for_inference()
    assert not any("depthwise_norm" in key or "bottleneck_norm" in key for key in folded.state_dict())
    torch.testing.assert_close(folded(x), expected, rtol=1e-10, atol=1e-10)


def test_torch_export_with_dynamic_length() -> None:
    """torch.export (not TorchScript); the length is dynamic in multiples of the stride L // 2."""
    model = tiny(norm="cLN", causal=True).eval()
    frames = Dim("frames", min=4, max=100_000)
    program = export(model, (torch.randn(2, 400),), dynamic_shapes={"mixture": {1: model.stride * frames}})
    for length in (400, 804):
        x = torch.randn(2, length)
        torch.testing.assert_close(program.module()(x), model(x))
