"""The stateful Conv-TasNet and RE-SepFormer streams equal offline separation, for causal norms and any block sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import soundfile as sf
import torch

from audiosep.checkpoint import save_model
from audiosep.cli import main
from audiosep.inference import Separator
from audiosep.models import ConvTasNet, conv_tasnet_demo
from audiosep.models.resepformer import RESepFormer
from audiosep.streaming import ConvTasNetStream, RESepFormerStream, open_stream


def causal_model(**overrides: object) -> ConvTasNet:
    torch.manual_seed(0)
    config = dict(
        enc_num_filters=16, enc_kernel_size=8, bottleneck_channels=8, hidden_channels=[12, 7, 9, 12],
        skip_channels=6, num_layers=2, num_repeats=2, causal=True, norm="cLN",
    )  # fmt: skip
    model = ConvTasNet(**(config | overrides)).eval()
    with torch.no_grad():  # non-trivial norm affines and PReLU slopes
        for name, param in model.named_parameters():
            if "norm" in name or "act" in name or "prelu" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def streamed(model: ConvTasNet, mixture: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    stream, parts, position = ConvTasNetStream(model), [], 0
    for size in blocks:
        parts.append(stream.process(mixture[:, position : position + size]))
        position += size
    assert position == mixture.shape[-1]
    return torch.cat([*parts, stream.flush()], dim=-1)


BLOCKS = {"one sample": [1] * 40 + [1961], "17": [17] * 117 + [12], "160": [160] * 12 + [81], "whole": [2001],
          "uneven": [999, 2, 1000]}  # fmt: skip


@pytest.mark.parametrize("norm", ["cLN", "BN", "LN", "rms_norm", "none"])
@pytest.mark.parametrize("blocks", BLOCKS.values(), ids=BLOCKS.keys())
def test_stream_equals_offline(norm: str, blocks: list[int]) -> None:
    model = causal_model(norm=norm)
    mixture = 0.1 * torch.randn(2, 2001)
    with torch.no_grad():
        offline = model(mixture)
    output = streamed(model, mixture, blocks)
    assert output.shape == offline.shape
    assert float((output - offline).abs().max()) < 1e-4


@pytest.mark.parametrize("overrides", [{"enc_kernel_size": 7}, {"skip_channels": None, "mask_activation": "softmax"}])
def test_stream_equals_offline_for_odd_windows_and_no_skip_path(overrides: dict) -> None:
    model = causal_model(**overrides)
    mixture = 0.1 * torch.randn(1, 1500)
    with torch.no_grad():
        offline = model(mixture)
    assert float((streamed(model, mixture, [37] * 40 + [20]) - offline).abs().max()) < 1e-4


def test_cumulative_norm_state_holds_over_a_long_stream_and_a_stream_is_reusable() -> None:
    model = causal_model()
    mixture = 0.1 * torch.randn(1, 8000 * 10)  # 10 s, 500 blocks of 20 ms
    with torch.no_grad():
        offline = model(mixture)
    assert float((streamed(model, mixture, [160] * 500) - offline).abs().max()) < 1e-4
    stream = ConvTasNetStream(model)
    first = torch.cat([stream.process(mixture[:, :800]), stream.flush()], dim=-1)
    second = torch.cat([stream.process(mixture[:, :800]), stream.flush()], dim=-1)  # flush resets the state
    assert torch.equal(first, second)
    # output lags the input by the window less one stride, never more
    stream = ConvTasNetStream(model)
    assert stream.process(mixture[:, :1000]).shape[-1] == 1000 - stream.algorithmic_latency


def test_a_block_of_another_batch_size_is_refused() -> None:
    stream = ConvTasNetStream(causal_model())
    stream.process(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="carries 2 signals"):
        stream.process(torch.zeros(1, 100))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        stream.process(torch.zeros(100))


def test_models_that_look_ahead_are_refused() -> None:
    with pytest.raises(ValueError, match="causal Conv-TasNet"):
        ConvTasNetStream(conv_tasnet_demo(num_repeats=1, num_layers=2))
    with pytest.raises(ValueError, match="causal Conv-TasNet"):
        Separator(conv_tasnet_demo(num_repeats=1, num_layers=2), 8000, stream_block_ms=20)


@pytest.mark.parametrize("block_ms", [0.0, -5.0, float("nan"), float("inf"), 1e308, 1e9, 10_001.0])
def test_a_block_length_that_is_not_positive_and_at_most_10_s_is_refused(block_ms: float) -> None:
    """1e308 ms overflowed for every file; 1e9 ms read a whole file in one block (2.8 GB for 30 s; reviewer)."""
    with pytest.raises(ValueError, match="a stream's block must be a positive number of ms, at most 10000"):
        Separator(causal_model(), 8000, stream_block_ms=block_ms)
    assert Separator(causal_model(), 8000, stream_block_ms=10_000.0).stream_block_ms == 10_000.0


def test_models_of_other_dtypes_or_quantized_by_torch_are_refused() -> None:
    """torch's own dynamic int8 streamed 7.8e-3 off offline; a float64 model opened a stream that failed on every
    block (reviewer)."""
    quantized = torch.ao.quantization.quantize_dynamic(causal_resepformer("channel_ln"), {torch.nn.Linear})
    with pytest.raises(ValueError, match="prepared or int8 \\(DynamicQuantizedLinear|prepared or int8 \\(Linear"):
        open_stream(quantized)
    with pytest.raises(ValueError, match="streaming runs float32 models; this Conv-TasNet holds torch.float64 weights"):
        open_stream(causal_model().double())


def test_a_conv_tasnet_stream_states_its_lag_for_odd_windows() -> None:
    """window - stride (4 for window 7, stride 3) understated the wait of blocks a multiple of the stride:
    they wait block + window - 1 (reviewer)."""
    model = causal_model(enc_kernel_size=7)
    stream = open_stream(model)
    assert (stream.window, stream.stride) == (7, 3)
    assert stream.algorithmic_latency == 6 == longest_wait(stream, 3) - 3 == longest_wait(open_stream(model), 6) - 6
    even = open_stream(causal_model())
    assert even.algorithmic_latency == 4 == longest_wait(even, 4) - 4  # window 8, stride 4


def test_infer_refuses_chunk_options_with_stream(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """They were accepted and ignored: a 10 s file streamed 0.34 off the chunked infer asked for (reviewer)."""
    ckpt = tmp_path / "causal.ckpt"
    save_model(causal_model(), ckpt, {"sample_rate": 8000})
    sf.write(tmp_path / "mix.wav", (0.1 * torch.randn(4000)).numpy(), 8000)
    for option in (["--chunk-seconds", "2"], ["--overlap-seconds", "0.5"], ["--chunk-batch", "2"], ["--max-memory", "900"]):
        argv = ["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "out"), *option, "--stream", "--", str(tmp_path / "mix.wav")]
        assert main(argv) == 1
        assert capsys.readouterr().err == f"audiosep: error: {option[0]} does not apply to --stream (the stream separates the whole file block by block)\n"
    assert not (tmp_path / "out").exists()


def test_an_int8_separator_refuses_to_stream() -> None:
    """A stream runs the plain fp32 model: an int8 separator's stream would not compute what it separates."""
    with pytest.raises(ValueError, match="streaming runs the plain fp32 model, not int8"):
        Separator(causal_model(), 8000, dtype="int8").stream()
    with pytest.raises(ValueError, match="streaming runs the plain fp32 model, not int8"):
        Separator(causal_model(), 8000, dtype="int8", stream_block_ms=20)


def test_infer_stream_writes_the_offline_result(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = causal_model()
    ckpt = tmp_path / "causal.ckpt"
    save_model(model, ckpt, {"sample_rate": 8000})
    mixture = 0.1 * torch.randn(4000)
    sf.write(tmp_path / "mix.wav", mixture.numpy(), 8000, subtype="FLOAT")
    out = tmp_path / "out"
    assert main(["infer", "--ckpt", str(ckpt), "--stream", "--out-dir", str(out), str(tmp_path / "mix.wav")]) == 0
    with torch.no_grad():
        offline = model(mixture[None])[0]
    written = torch.from_numpy(sf.read(out / "mix_s1.wav", dtype="float32")[0])
    scale = float(written.abs().max() / offline[0].abs().max())  # infer may limit the peak
    assert float((written - scale * offline[0]).abs().max()) < 1e-4
    demo = tmp_path / "demo.ckpt"
    save_model(conv_tasnet_demo(num_repeats=1, num_layers=2), demo, {"sample_rate": 8000})
    assert main(["infer", "--ckpt", str(demo), "--stream", "--out-dir", str(out), str(tmp_path / "mix.wav")]) == 1
    assert "causal Conv-TasNet" in capsys.readouterr().err


def causal_resepformer(norm: str, num_blocks: int = 3) -> RESepFormer:
    torch.manual_seed(0)
    model = RESepFormer(
        encoder_channels=16, kernel_size=8, num_blocks=num_blocks, num_intra_layers=1, num_inter_layers=2,
        num_heads=2, ffn_dim=24, chunk_size=10, norm=norm, causal=True,
    ).eval()  # fmt: skip
    with torch.no_grad():  # non-trivial norm affines
        for name, param in model.named_parameters():
            if "norms" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def streamed_by(stream, mixture: torch.Tensor, block: int) -> torch.Tensor:
    parts = [stream.process(mixture[:, start : start + block]) for start in range(0, mixture.shape[-1], block)]
    return torch.cat([*parts, stream.flush()], dim=-1)


@pytest.mark.parametrize("norm", ["channel_ln", "cumulative_ln", "batch_norm", "rms_norm"])
@pytest.mark.parametrize("length", [5, 396, 403, 1601])  # shorter than a window; 98 frames; 100 frames = 10 chunks
def test_resepformer_stream_equals_offline(norm: str, length: int) -> None:
    model = causal_resepformer(norm)
    mixture = 0.1 * torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        offline = model(mixture)
    stream = RESepFormerStream(model)
    for block in (1, 37, length):
        online = streamed_by(stream, mixture, block)  # flush() resets: the same stream serves again
        assert online.shape == offline.shape
        torch.testing.assert_close(online, offline, atol=1e-5, rtol=0)


def test_resepformer_stream_latency_is_one_chunk_and_it_emits_chunk_by_chunk() -> None:
    model = causal_resepformer("channel_ln", num_blocks=2)
    stream = RESepFormerStream(model)
    assert stream.algorithmic_latency == 10 * 4 + 8 - 4
    assert stream.process(torch.zeros(1, 10 * 4 + 3)).shape[-1] == 0  # 10 frames need 4 * 9 + 8 = 44 samples
    assert stream.process(torch.zeros(1, 1)).shape[-1] == 10 * 4
    with pytest.raises(ValueError, match="causal RE-SepFormer"):
        RESepFormerStream(RESepFormer(encoder_channels=16, kernel_size=8, num_heads=2, num_intra_layers=1,
                                      num_inter_layers=1, ffn_dim=8, chunk_size=10))  # fmt: skip


def test_infer_streams_a_causal_resepformer(tmp_path: Path) -> None:
    model = causal_resepformer("cumulative_ln")
    ckpt = tmp_path / "causal_re.ckpt"
    save_model(model, ckpt, {"sample_rate": 8000})
    mixture = 0.1 * torch.randn(3001, generator=torch.Generator().manual_seed(3))
    sf.write(tmp_path / "mix.wav", mixture.numpy(), 8000, subtype="FLOAT")
    out = tmp_path / "out"
    assert main(["infer", "--ckpt", str(ckpt), "--stream", "10", "--out-dir", str(out), str(tmp_path / "mix.wav")]) == 0
    with torch.no_grad():
        offline = model(mixture[None])[0]
    written = torch.from_numpy(sf.read(out / "mix_s2.wav", dtype="float32")[0])
    scale = float(written.abs().max() / offline[1].abs().max())  # infer may limit the peak
    assert float((written - scale * offline[1]).abs().max()) < 1e-4


@pytest.mark.parametrize("make", [lambda: causal_model(norm="BN"), lambda: RESepFormer(
    encoder_channels=8, chunk_size=5, num_blocks=1, num_intra_layers=1, num_inter_layers=1, num_heads=2, ffn_dim=8,
    causal=True, norm="batch_norm")])  # fmt: skip
def test_a_stream_or_separator_leaves_a_model_in_training_as_it_was(make) -> None:
    """A model still being trained keeps training mode (its BatchNorms keep updating) and its own weights."""
    model = make().train()
    stream = open_stream(model)
    separator = Separator(model, 8000)
    assert model.training and all(m.training for m in model.modules())
    assert not stream.model.training and not separator.model.training and stream.model is not model
    model.eval()
    assert Separator(model, 8000).model is model  # nothing to change: no copy
    assert Separator(model, 8000, device="cpu:0").model is model  # the same device, spelt with its index


def longest_wait(stream, block: int) -> int:
    """The longest wait, in samples, from an input sample's place to the ``process`` call that returns it,
    over whole cycles of the blocks' alignment with the stream's frames or chunks (brute force)."""
    fed = returned = worst = 0
    steps = 2 * (math.lcm(block, stream.period) // block) + 2 * (stream.lag // block + 1)
    for _ in range(steps):
        fed += block
        out = stream.process(0.1 * torch.randn(1, block))
        if out.shape[-1]:
            worst = max(worst, fed - returned)  # the first sample returned now came in at `returned`
            returned += out.shape[-1]
    return worst


@pytest.mark.parametrize("block", [1, 7, 16, 20, 80, 81])
def test_conv_tasnet_stream_latency_is_its_longest_wait(block: int) -> None:
    """block + window - stride held only for blocks a multiple of the stride (2.5 ms blocks at 8 kHz: 6 ms, not 4.5)."""
    stream = open_stream(conv_tasnet_demo(num_repeats=1, num_layers=2, causal=True, norm="cLN").eval())
    assert stream.latency(block) == longest_wait(stream, block)


@pytest.mark.parametrize("block", [1, 3, 24, 40, 80, 81])
def test_resepformer_stream_latency_is_its_longest_wait(block: int) -> None:
    model = RESepFormer(encoder_channels=12, kernel_size=8, num_blocks=1, num_intra_layers=1, num_inter_layers=1,
                        num_heads=2, ffn_dim=16, chunk_size=10, norm="cumulative_ln", causal=True).eval()  # fmt: skip
    stream = open_stream(model)
    assert stream.latency(block) == longest_wait(stream, block)


def test_a_long_resepformer_stream_equals_offline_and_its_caches_grow_by_doubling() -> None:
    """Each chunk copied every cached key and value (``torch.cat``): 4 h of 150 ms chunks took 0.4-0.6 s a step
    (reviewer). The caches now double when full: a handful of buffers over 60 chunks, same numbers."""
    model = causal_resepformer("cumulative_ln", num_blocks=2)
    mixture = 0.1 * torch.randn(1, 60 * 40 + 8, generator=torch.Generator().manual_seed(3))  # 60 chunks of 40 samples
    with torch.no_grad():
        offline = model(mixture)
    stream, buffers = RESepFormerStream(model), set()
    parts = []
    for start in range(0, mixture.shape[-1], 40):
        parts.append(stream.process(mixture[:, start : start + 40]))
        buffers.update(cache.data_ptr() for state in stream._inter for cache in state.caches if cache is not None)
    torch.testing.assert_close(torch.cat([*parts, stream.flush()], dim=-1), offline, atol=1e-5, rtol=0)
    layers = len(stream._inter) * 2  # two inter-chunk layers per stack
    assert len(buffers) <= layers * 3  # 16, 32, 64 positions: three buffers each, not one per chunk


@pytest.mark.parametrize("make", [lambda: causal_model(norm="BN"), lambda: causal_resepformer("batch_norm", 2)])
def test_a_stream_runs_a_copy_made_when_opened(make) -> None:
    """An eval-mode model was shared: ``model.train()`` after opening made the stream update the model's
    BatchNorm statistics (5.7e-2 off), and weight edits leaked into a running stream (reviewer)."""
    model = make()
    mixture = 0.1 * torch.randn(1, 1601, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        offline = model(mixture)
    statistics = [b.clone() for b in model.buffers()]
    stream = open_stream(model)
    model.train()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    online = streamed_by(stream, mixture, 160)
    torch.testing.assert_close(online, offline, atol=1e-4, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(statistics, model.buffers(), strict=True))


def test_a_refused_block_leaves_the_stream_as_it_was() -> None:
    """A float64 block failed inside the encoder after the stream had counted its samples: retried in
    float32, 400 samples came out as 404 (reviewer). NaN reached earlier outputs through attention."""
    model = causal_model()
    mixture = 0.1 * torch.randn(1, 400, generator=torch.Generator().manual_seed(2))
    stream = ConvTasNetStream(model)
    first = stream.process(mixture[:, :200])
    with pytest.raises(ValueError, match="must be float32"):
        stream.process(mixture[:, 200:].double())
    with pytest.raises(ValueError, match="NaN or Inf"):
        stream.process(torch.full((1, 10), float("nan")))
    online = torch.cat([first, stream.process(mixture[:, 200:]), stream.flush()], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(online, model(mixture), atol=1e-4, rtol=0)
    online.mul_(2.0)  # an ordinary tensor (inference tensors refuse in-place edits outside inference mode)


def test_hooked_prepared_and_int8_models_are_refused_with_the_reason() -> None:
    """Hooks on cLN norms, blocks and the inter-chunk stacks never fired in a stream (a SepPrune-gated cLN
    model streamed 1e-2 from offline); an int8 RE-SepFormer streamed 5.5e-3 from its own offline output; a
    prepared Conv-TasNet was refused for looking ahead (reviewer)."""
    from audiosep.optimize import prepare_for_inference
    from audiosep.quantize import quantize_for_inference

    model = causal_model()
    handle = model.masker.blocks[0].in_norm.register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match=r"streaming: ConvTasNet has hooks on masker.blocks.0.in_norm"):
        open_stream(model)
    handle.remove()
    with pytest.raises(ValueError, match="streaming runs a plain causal Conv-TasNet, not a FastConvTasNet"):
        ConvTasNetStream(prepare_for_inference(model))
    for transformed in (quantize_for_inference, prepare_for_inference):  # an int8 model, a prepared one
        with pytest.raises(ValueError, match=r"prepared or int8 \(\w+\); stream the model it was made from"):
            open_stream(transformed(causal_resepformer("channel_ln", 2)))


def test_a_resepformer_that_drops_the_tail_streams_its_offline_output() -> None:
    """Converted SpeechBrain models leave the samples after the last frame out (``tail="drop"``)."""
    torch.manual_seed(0)
    model = RESepFormer(encoder_channels=16, kernel_size=8, num_blocks=2, num_intra_layers=1, num_inter_layers=1,
                        num_heads=2, ffn_dim=24, chunk_size=10, norm="channel_ln", causal=True, tail="drop").eval()  # fmt: skip
    for length in (403, 405, 5):  # the frames leave 3 and 1 samples out; shorter than a frame: padded
        mixture = 0.1 * torch.randn(1, length, generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            offline = model(mixture)
        online = streamed_by(RESepFormerStream(model), mixture, 37)
        torch.testing.assert_close(online, offline, atol=1e-5, rtol=0)
