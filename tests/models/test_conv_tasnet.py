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


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = tiny(norm="cLN", causal=True, skip_channels=None, mask_activation="relu").eval()
    save_model(model, tmp_path / "model.pt", {"sample_rate": 8000})
    loaded, metadata = load_model(tmp_path / "model.pt")
    assert isinstance(loaded, ConvTasNet) and loaded.init_args == model.init_args
    assert metadata == {"sample_rate": 8000}
    x = torch.randn(2, 333)
    assert torch.equal(loaded(x), model(x))


def test_per_block_hidden_channels_build_and_round_trip(tmp_path: Path) -> None:
    """A channel-pruned model (one H per block) rebuilds from its checkpoint with no extra arguments."""
    widths = [12, 7, 9, 3, 12, 5]
    model = tiny(hidden_channels=widths).eval()
    assert [block.in_conv.out_channels for block in model.masker.blocks] == widths
    assert [block.depthwise.groups for block in model.masker.blocks] == widths
    save_model(model, tmp_path / "pruned.pt", {"sample_rate": 8000})
    loaded, _ = load_model(tmp_path / "pruned.pt")
    assert loaded.init_args["hidden_channels"] == widths
    x = torch.randn(2, 300)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("bad", [[12] * 5, [12, 0, 12, 12, 12, 12], 0, 1.5, "12"])
def test_wrong_per_block_widths_raise(bad: object) -> None:
    with pytest.raises(ValueError, match="hidden_channels"):
        tiny(hidden_channels=bad)


def test_equal_width_list_is_the_int_model() -> None:
    by_int, by_list = tiny().eval(), tiny(hidden_channels=[12] * 6).eval()
    assert by_int.state_dict().keys() == by_list.state_dict().keys()
    by_list.load_state_dict(by_int.state_dict())
    x = torch.randn(1, 300)
    assert torch.equal(by_int(x), by_list(x))


def test_decoder_equals_conv_transpose1d() -> None:
    """The overlap-add decoder is ``nn.ConvTranspose1d`` with the same weight (odd and even L)."""
    for kernel in (8, 5, 16):
        model = tiny(enc_kernel_size=kernel).double()
        x = torch.randn(3, 16, 41, dtype=torch.float64)
        expected = F.conv_transpose1d(x, model.decoder.weight, stride=model.stride)
        torch.testing.assert_close(model.decoder(x), expected, rtol=0, atol=1e-12)


def test_torch_export_with_dynamic_length() -> None:
    """torch.export (not TorchScript); the length is dynamic in multiples of the stride L // 2."""
    model = tiny(norm="cLN", causal=True).eval()
    frames = Dim("frames", min=4, max=100_000)
    program = export(model, (torch.randn(2, 400),), dynamic_shapes={"mixture": {1: model.stride * frames}})
    for length in (400, 804):
        x = torch.randn(2, length)
        torch.testing.assert_close(program.module()(x), model(x))


def test_onnx_export_of_the_plain_model_has_dynamic_axes_and_no_private_op(tmp_path: Path) -> None:
    """Legacy (TorchScript-based) ONNX export; the file runs in ONNX Runtime at other lengths."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = tiny(norm="gLN").eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model, (torch.randn(1, 400),), str(path), dynamo=False, opset_version=17, input_names=["mixture"],
        dynamic_axes={"mixture": {0: "batch", 1: "time"}},
    )  # fmt: skip
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and not any(op.startswith(("ATen", "mkldnn")) for op in ops)
    session = ort.InferenceSession(str(path))
    for shape in ((2, 400), (3, 1237)):
        x = 0.1 * torch.randn(*shape)
        (out,) = session.run(None, {"mixture": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=0, atol=1e-5)
