"""Dynamic int8 inference: which layers are swapped, how close the outputs stay, where it is refused."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf
import torch
from signal_helpers import harmonic_tone
from test_optimize import MODELS, conv_tasnet
from torch import nn

from audiosep.bench.run import _check
from audiosep.checkpoint import save_model
from audiosep.cli import main
from audiosep.inference import Separator
from audiosep.losses import si_snr
from audiosep.models import conv_tasnet_demo
from audiosep.optimize import FusedConv, FusedLinear, prepare_for_inference
from audiosep.quantize import (
    Int8Linear,
    Int8PointwiseConv,
    Int8ResidualSkip,
    activation_qparams,
    best_int8_kernel,
    is_pointwise,
    quantize_for_inference,
    quantize_input,
    reduced_activation_range,
)

SEPARATORS = [name for name in MODELS if name != "quartznet"]


def _speech(batch: int = 2, length: int = 4000) -> torch.Tensor:
    import numpy as np

    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([harmonic_tone(rng, length, 8000) for _ in range(batch)]))


@pytest.mark.parametrize("name", SEPARATORS)
def test_every_linear_and_pointwise_conv_is_int8_and_the_output_stays_close(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    before = copy.deepcopy(model.state_dict())
    quantized = quantize_for_inference(model)
    assert not any(isinstance(m, nn.Linear | FusedLinear) for m in quantized.modules())
    assert not any(isinstance(m, FusedConv) and is_pointwise(m) for m in quantized.modules())
    ffns = [m.ffn for m in quantized.modules() if hasattr(m, "ffn")]
    assert all(ffn[0].activation == "relu" and type(ffn[1]) is nn.Identity for ffn in ffns)  # ReLU kept, once
    swapped = sum(isinstance(m, Int8Linear | Int8PointwiseConv) for m in quantized.modules())
    assert quantized.int8_layers > 0 and swapped >= quantized.int8_layers
    # the plain model is untouched and still plain
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.Linear | nn.Conv1d) for m in model.modules())
    mixture = _speech()
    with torch.inference_mode():
        reference = prepare_for_inference(model)(mixture)
        output = quantized(mixture)
    assert output.shape == reference.shape
    assert float(si_snr(output, reference).min()) > 25.0


@pytest.mark.parametrize("batch", [1, 2])
def test_int8_norms_written_in_place_keep_the_output_close(batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block's two gLNs write into temporaries of the block (forced on a tiny model): a write into a tensor
    read again (a reviewer's mutation wrote the bottleneck's into the encoder features: 46 -> 2 dB) is caught."""
    from test_optimize import large_item_norms_in_place

    writes = large_item_norms_in_place(monkeypatch)
    torch.manual_seed(0)
    model = conv_tasnet(norm="gLN").eval()
    quantized, prepared = quantize_for_inference(model), prepare_for_inference(model)
    mixture = _speech(batch=batch)
    before = mixture.clone()
    with torch.inference_mode():
        writes.clear()
        output = quantized(mixture)
        assert writes.count(True) == 2 * len(quantized.masker.blocks)  # the depthwise and output norms
        assert float(si_snr(output, prepared(mixture)).min()) > 25.0
    assert torch.equal(mixture, before)


@pytest.mark.parametrize("level", [1e-3, 1e-4])
def test_int8_of_quiet_speech_stays_close_to_fp32(level: float) -> None:
    """-60 and -80 dB below speech level: the int8 convs take normalised input (folding a gLN's statistics into
    their output instead quantised the raw, tiny encoder features: 17.6 dB at -80 dBFS)."""
    torch.manual_seed(0)
    model = conv_tasnet(norm="gLN").eval()
    quantized, prepared = quantize_for_inference(model), prepare_for_inference(model)
    mixture = level * _speech(batch=1)
    with torch.inference_mode():
        output, reference = quantized(mixture) / level, prepared(mixture) / level  # si_snr's eps is for speech level
    assert float(si_snr(output, reference).min()) > 30.0


def test_a_one_channel_depthwise_conv_with_kernel_1_stays_float() -> None:
    """It is 1x1 and ungrouped, so it looked pointwise and was swapped for an int8 matmul the depthwise
    stage cannot call (AttributeError)."""
    torch.manual_seed(0)
    model = conv_tasnet(conv_kernel_size=1, hidden_channels=[1, 7, 9, 12]).eval()
    quantized = quantize_for_inference(model)
    mixture = _speech()
    with torch.inference_mode():
        reference, output = prepare_for_inference(model)(mixture), quantized(mixture)
    assert float(si_snr(output, reference).min()) > 25.0


def test_the_callers_model_is_never_moved_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``nn.Module.cpu`` works in place: called on the caller's (GPU) model it would move that model."""
    model = conv_tasnet_demo().eval()
    moved: list[nn.Module] = []
    original_cpu = nn.Module.cpu
    monkeypatch.setattr(nn.Module, "cpu", lambda self: moved.append(self) or original_cpu(self))
    quantize_for_inference(model)
    assert moved and all(module is not model for module in moved)


def test_int8_linear_is_per_channel_and_close_to_the_float_product() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 32)
    weight[0] *= 1000  # per-tensor scales would round every other row to almost nothing
    bias = torch.randn(6)
    layer = Int8Linear(weight, bias)
    x = torch.randn(50, 32)
    expected = x @ weight.t() + bias
    error = (layer(x) - expected).abs()
    for row in range(6):  # each output channel within ~1-2 % of its own magnitude (7-bit activations without VNNI)
        assert float(error[:, row].max()) < 0.03 * float(expected[:, row].abs().max())
    # the stored weight is the per-row int8 rounding: off by at most half of that row's step max|w| / 127
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert layer.weight.shape == (6, 32) and bool(((layer.weight - weight).abs() <= step / 2 + 1e-6).all())


ONEDNN = pytest.mark.skipif(best_int8_kernel("onednn", reduced_activation_range(), post_op=True) != "onednn",
                            reason="oneDNN's int8 kernel needs an x86 torch with oneDNN")  # fmt: skip
KERNELS = [pytest.param("onednn", marks=ONEDNN), "dynamic"]
KERNEL_OPS = {"onednn": [(torch.ops.onednn, "qlinear_pointwise")],
              "dynamic": [(torch.ops.quantized, "linear_dynamic"), (torch.ops.quantized, "linear_relu_dynamic")]}  # fmt: skip


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("activation", ["none", "prelu", "sigmoid", "relu"])
def test_int8_linear_applies_its_activation_in_place_on_its_own_output(
    activation: str, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(16, 24), torch.randn(16)
    layer = Int8Linear(weight, bias, activation, 0.25, kernel)  # type: ignore[arg-type]
    x = torch.randn(40, 24)
    before = x.clone()
    linear = x @ weight.t() + bias
    expected = {"none": linear, "prelu": torch.nn.functional.leaky_relu(linear, 0.25),
                "sigmoid": torch.sigmoid(linear), "relu": torch.relu(linear)}[activation]  # fmt: skip
    kernel_outputs: list[tuple[str, torch.Tensor]] = []

    def recording(namespace: object, name: str) -> Callable[..., torch.Tensor]:
        op = getattr(namespace, name)
        return lambda *args: kernel_outputs.append((name, op(*args))) or kernel_outputs[-1][1]

    for namespace, name in KERNEL_OPS[kernel]:
        monkeypatch.setattr(namespace, name, recording(namespace, name))
    with torch.inference_mode():
        output = layer(x)
    assert torch.equal(x, before)  # the input is never written
    [(name, kernel_output)] = kernel_outputs
    if kernel == "dynamic":
        assert name == ("linear_relu_dynamic" if activation == "relu" else "linear_dynamic")  # ReLU inside the kernel
    assert output.data_ptr() == kernel_output.data_ptr()  # no second buffer for the activation
    tolerance = 0.06 if layer.reduce_range else 0.03  # 7-bit activations on CPUs without VNNI: half the steps
    assert float((output - expected).abs().max()) < tolerance * float(expected.abs().max())


def test_activation_qparams_are_torchs_dynamic_quantization_parameters() -> None:
    """The oneDNN kernel quantizes its input itself: with the range and zero point torch's dynamic kernels pick
    (spread from 1e-9, below the finest step torch allows, to 1e3; one-sided, offset and all-zero inputs)."""
    generator = torch.Generator().manual_seed(0)
    for index in range(3000):
        spread = 10 ** (12 * torch.rand(1, generator=generator).item() - 9)
        x = spread * torch.randn(9, generator=generator) + spread * (index % 3) * torch.randn(1, generator=generator)
        x = (x.abs(), -x.abs(), x, torch.zeros(9))[index % 4]
        if index % 50 == 1:  # denormal: numpy warned "overflow encountered in scalar divide" (reviewer)
            x = torch.full((9,), 1e-40)
        low, high = (float(v) for v in torch.aminmax(x))
        scale, zero_point = torch._choose_qparams_per_tensor(x, False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert activation_qparams(low, high) == pytest.approx((scale, zero_point), rel=1e-12)


@ONEDNN
@pytest.mark.parametrize("activation", ["none", "prelu", "relu"])
def test_onednn_int8_linear_is_the_exact_product_of_its_quantized_input(activation: str) -> None:
    """Against float64 from the kernel's own operands, and added into a running sum in place."""
    torch.manual_seed(0)
    layer = Int8Linear(torch.randn(48, 40), torch.randn(48), activation, 0.25, "onednn")  # type: ignore[arg-type]
    x = torch.randn(30, 80)[:, ::2]  # strided: torch's quantize_per_tensor reads such input wrongly
    quantized = quantize_input(x, layer.reduce_range)  # 7 bits on CPUs without VNNI
    dequantized = quantized.scale * (quantized.values.double() - quantized.zero_point)
    assert float((dequantized - x.double()).abs().max()) <= quantized.scale / 2 + 1e-9
    product = dequantized @ layer.weight.double().t() + layer._bias.double()
    expected = {"none": product, "relu": product.relu(), "prelu": torch.nn.functional.leaky_relu(product, 0.25)}[activation]
    total = torch.randn(30, 48)
    start = total.clone()
    with torch.inference_mode():
        output = layer.run(quantized)
        if activation != "none":  # oneDNN would apply it to the sum
            with pytest.raises(ValueError, match="only a layer without activation adds into a total"):
                layer.run(quantized, total)
            assert torch.equal(total, start)
        else:
            summed = layer.run(quantized, total)
            assert summed.data_ptr() == total.data_ptr()
            assert torch.allclose(summed.double(), start.double() + expected, rtol=1e-5, atol=1e-5)
            with pytest.raises(ValueError, match="contiguous float32"):
                layer.run(quantized, torch.zeros(48, 30).t())  # oneDNN would take its memory as contiguous
    for values in (quantized.values.to(torch.int8), quantized.values[:, :20].contiguous()):  # reviewer
        with pytest.raises(ValueError, match="must be uint8 .rows, 40. from quantize_input"):
            layer.run(quantized._replace(values=values))
    assert torch.allclose(output.double(), expected, rtol=1e-5, atol=1e-5)


@ONEDNN
@pytest.mark.parametrize("name", ["conv_tasnet", "sepformer", "resepformer"])
def test_both_int8_kernels_compute_the_same_model_outputs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same quantization both ways (values within float rounding of a step's half may round apart, which
    compounds through the layers: 41-73 dB between the kernels in a reviewer's runs), equally close to fp32."""
    import audiosep.quantize as quantize

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    monkeypatch.setattr(quantize, "best_int8_kernel", lambda engine, reduce_range, post_op=False: "onednn")
    onednn = quantize_for_inference(model)
    monkeypatch.setattr(quantize, "best_int8_kernel", lambda engine, reduce_range, post_op=False: "dynamic")
    dynamic = quantize_for_inference(model)
    kernels = {m.kernel for m in dynamic.modules() if isinstance(m, Int8Linear)}
    assert kernels == {"dynamic"} and {m.kernel for m in onednn.modules() if isinstance(m, Int8Linear)} == {"onednn"}
    mixture = _speech()
    with torch.inference_mode():
        reference = prepare_for_inference(model)(mixture)
        outputs = onednn(mixture), dynamic(mixture)
    assert float(si_snr(*outputs).min()) > 35.0
    to_fp32 = [float(si_snr(output, reference).mean()) for output in outputs]
    assert min(to_fp32) > 25.0 and abs(to_fp32[0] - to_fp32[1]) < 1.0


def test_int8_conv_tasnet_adds_each_block_into_its_residual_and_skip_sums() -> None:
    """Each block's output conv is two int8 layers (residual rows, skip rows) on the sums; the last block has no
    residual rows; the outputs are the int8 model's with the block outputs added separately."""
    torch.manual_seed(0)
    model = conv_tasnet(norm="gLN").eval()
    quantized = quantize_for_inference(model)
    blocks = quantized.masker.blocks
    outs = [block.out.conv for block in blocks]
    assert all(isinstance(out, Int8ResidualSkip) for out in outs)
    assert outs[-1].residual is None and all(out.residual is not None for out in outs[:-1])
    assert all(out.skip.out_features == model.masker.blocks[0].skip_channels for out in outs)
    h = torch.randn(2, blocks[0].out.conv.skip.in_features, 7, 1).contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, outs[0].residual.out_features, 7, 1).contiguous(memory_format=torch.channels_last)
    skips = torch.randn(2, outs[0].skip.out_features, 7, 1).contiguous(memory_format=torch.channels_last)
    residual = outs[0].residual(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    skip = outs[0].skip(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    expected_x, expected_skips = x + residual, skips + skip
    with torch.inference_mode():
        first_x, first_skips = outs[0](h, x.clone(), None)
        new_x, new_skips = outs[0](h, x, skips)
    assert torch.allclose(new_x, expected_x, atol=1e-5) and torch.allclose(new_skips, expected_skips, atol=1e-5)
    if outs[0].skip.kernel == "onednn":  # added as the kernel writes: the sums are updated in place
        assert new_x.data_ptr() == x.data_ptr() and new_skips.data_ptr() == skips.data_ptr()
    assert torch.allclose(first_x, expected_x, atol=1e-5) and torch.allclose(first_skips, skip, atol=1e-5)


def test_int8_linear_refuses_nan_input() -> None:
    layer = Int8Linear(torch.randn(4, 6), None)
    with pytest.raises(ValueError, match="NaN or Inf"), torch.inference_mode():
        layer(torch.full((3, 6), float("nan")))


def test_int8_pointwise_conv_keeps_the_channels_last_layout() -> None:
    torch.manual_seed(0)
    conv = FusedConv(torch.randn(12, 8, 1), torch.randn(12), "prelu", 0.25)
    x = torch.randn(2, 8, 30, 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected, output = conv(x), Int8PointwiseConv(conv)(x)
    assert output.shape == expected.shape and output.is_contiguous(memory_format=torch.channels_last)
    assert float((output - expected).abs().max()) < 0.05 * float(expected.abs().max())


def test_separator_int8_is_cpu_and_transform_only_and_infer_writes_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = conv_tasnet_demo(num_repeats=1, num_layers=2)
    with pytest.raises(ValueError, match="int8 inference runs on CPU"):
        Separator(model, 8000, optimize=False, dtype="int8")
    with pytest.raises(ValueError, match="unknown inference dtype"):
        Separator(model, 8000, dtype="int4")  # type: ignore[arg-type]
    ckpt = tmp_path / "model.ckpt"
    save_model(model, ckpt, {"sample_rate": 8000})
    wav = tmp_path / "mix.wav"
    sf.write(wav, _speech(1, 6000)[0].numpy(), 8000)
    assert main(["infer", "--ckpt", str(ckpt), "--dtype", "int8", "--out-dir", str(tmp_path / "out"), str(wav)]) == 0
    int8 = torch.from_numpy(sf.read(tmp_path / "out" / "mix_s1.wav", dtype="float32")[0])
    fp32 = Separator(model, 8000).separate_at_model_rate(torch.from_numpy(sf.read(wav, dtype="float32")[0]))[0]
    assert float(si_snr(int8, fp32)) > 25.0


def test_bench_checks_int8_by_si_snr_against_eager() -> None:
    reference = _speech()[:, None]
    noisy = reference + 0.001 * torch.randn_like(reference)
    error, snr, status = _check(noisy, reference, torch.float32, "int8")
    assert status == "ok" and snr > 20 and error > 0
    _, snr, status = _check(torch.randn_like(reference), reference, torch.float32, "int8")
    assert status.startswith("unsupported") and snr < 20
    # other backends keep the abs-error rule: int8-sized noise fails it, float-rounding-sized noise passes
    assert _check(noisy, reference, torch.float32, "prepared")[2].startswith("unsupported")
    assert _check(reference + 1e-5 * torch.randn_like(reference), reference, torch.float32, "prepared")[2] == "ok"


def test_a_dead_norm_channel_does_not_coarsen_every_int8_weight() -> None:
    """The mask network's BatchNorm scale was folded into the bottleneck's weights before int8: one channel
    of zero variance (an encoder filter that never fires) made its column 124x the others, every row's int8
    step with it: this model's int8 output was 20.0 dB SI-SNR from fp32 (38.0 dB with the scale kept out)."""
    from test_optimize import _randomise

    from audiosep.models import SepFormer

    torch.manual_seed(0)
    model = _randomise(SepFormer(encoder_channels=64, model_channels=32, chunk_size=10, norm="batch_norm",
                                 num_blocks=1, num_intra_layers=1, num_inter_layers=1, num_heads=2, ffn_dim=64))  # fmt: skip
    with torch.no_grad():
        model.encoder.weight[0].zero_()  # feature channel 0 is always 0, as a dead filter leaves it
        model.masker.norm.running_mean[0], model.masker.norm.running_var[0] = 0.0, 0.0
    mixture = _speech()
    with torch.inference_mode():
        score = float(si_snr(quantize_for_inference(model)(mixture), model(mixture)).min())
    assert score > 33.0  # 20 dB with the scale folded in; 38 dB without


def test_an_int8_copy_or_pickle_computes_the_same_numbers() -> None:
    """Copies unpickled the packed weights for the process's engine (x86), not the layer's (onednn): outputs moved
    by 2.6e-4 while ``engine`` still said onednn (reviewer)."""
    import io

    torch.manual_seed(0)
    quantized = quantize_for_inference(MODELS["conv_tasnet"]().eval())
    mixture = _speech()
    buffer = io.BytesIO()
    torch.save(quantized, buffer)
    buffer.seek(0)
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = next(e for e in ("x86", "fbgemm", "qnnpack") if e in torch.backends.quantized.supported_engines)
        copies = [copy.deepcopy(quantized), torch.load(buffer, weights_only=False)]
    finally:
        torch.backends.quantized.engine = engine
    with torch.inference_mode():
        expected = quantized(mixture)
        for other in copies:
            assert torch.equal(other(mixture), expected)


def test_an_int8_layer_loaded_on_a_cpu_without_vnni_takes_its_safe_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved where oneDNN's kernel and 8-bit activations run, loaded where the int8 products saturate."""
    import pickle

    import audiosep.quantize as quantize

    monkeypatch.setattr(quantize, "reduced_activation_range", lambda: False)
    layer = Int8Linear(torch.randn(8, 16), torch.randn(8))
    saved = pickle.dumps(layer)
    monkeypatch.setattr(quantize, "reduced_activation_range", lambda: True)
    loaded = pickle.loads(saved)
    assert loaded.reduce_range and loaded.kernel == "dynamic"
    x = torch.randn(5, 16)
    # against the float product of the int8 weights: the saved layer's own 8-bit kernel saturates on such a CPU
    expected = torch.nn.functional.linear(x, layer.weight, layer._bias)
    with torch.inference_mode():
        assert float(si_snr(loaded(x).flatten(), expected.flatten())) > 30.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_int8_refuses_a_model_that_is_not_float32(dtype: torch.dtype) -> None:
    """Accepted, then the first call failed with "mixed dtype (CPU)" (reviewer)."""
    with pytest.raises(ValueError, match="int8 inference needs a float32 model"):
        quantize_for_inference(MODELS["sepformer"]().eval().to(dtype))


def test_int8_refuses_a_users_subclass_of_a_layer() -> None:
    from test_optimize import MaskedLinear

    model = MODELS["sepformer"]().eval()
    model.masker.to_masks = MaskedLinear(model.masker.to_masks)
    with pytest.raises(ValueError, match=r"masker.to_masks \(MaskedLinear\) subclasses"):
        quantize_for_inference(model)


def test_int8_of_an_int8_model_says_so() -> None:
    """It said "has no linear or pointwise-conv layer to quantize" (reviewer)."""
    quantized = quantize_for_inference(conv_tasnet())
    with pytest.raises(ValueError, match="is int8 already"):
        quantize_for_inference(quantized)


@pytest.mark.parametrize(
    ("engine", "reduce_range", "post_op", "kernel"),
    [("onednn", False, False, "onednn"), ("onednn", False, True, "onednn"), ("onednn", True, False, "dynamic"),
     ("onednn", True, True, "onednn"), ("x86", False, True, "dynamic"), ("qnnpack", False, True, "dynamic")],
)  # fmt: skip
def test_without_vnni_only_layers_with_a_fused_post_op_take_onednns_kernel(
    engine: str, reduce_range: bool, post_op: bool, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AVX2 EPYC, int8 over fp32 at 4 s: Conv-TasNet 1.36x with oneDNN against 1.13x with torch's kernel;
    RE-SepFormer's plain linear layers were faster with torch's kernel at 1 s (our quantization pass)."""
    import audiosep.quantize as quantize

    monkeypatch.setattr(quantize, "x86_cpu", lambda: True)
    monkeypatch.setattr(quantize, "onednn_int8_linear_available", lambda: True)
    assert best_int8_kernel(engine, reduce_range, post_op) == kernel


@ONEDNN
def test_without_vnni_an_int8_conv_tasnet_runs_its_blocks_on_onednn_and_plain_layers_on_torchs_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Built on a CPU without VNNI, and copied there from one with VNNI (a pickle repacks for the CPU it is on)."""
    import copy

    import audiosep.quantize as quantize

    def kernels(model: torch.nn.Module) -> dict[str, str]:
        block = model.masker.blocks[0]
        return {"in_conv": block.in_conv.linear.kernel, "residual": block.out.conv.residual.kernel,
                "skip": block.out.conv.skip.kernel, "bottleneck": model.masker.bottleneck.conv.linear.kernel}  # fmt: skip

    expected = {"in_conv": "onednn", "residual": "onednn", "skip": "onednn", "bottleneck": "dynamic"}
    model = conv_tasnet(norm="gLN").eval()
    monkeypatch.setattr(quantize, "activation_reduce_range", lambda engine: False)  # a VNNI CPU
    with_vnni = quantize_for_inference(model)
    assert set(kernels(with_vnni).values()) == {"onednn"}
    monkeypatch.setattr(quantize, "activation_reduce_range", lambda engine: True)  # no VNNI
    assert kernels(quantize_for_inference(model)) == expected
    moved = copy.deepcopy(with_vnni)
    assert kernels(moved) == expected
    assert all(m.reduce_range for m in moved.modules() if isinstance(m, Int8Linear))
