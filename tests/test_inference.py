"""Chunked separation: source order is kept across chunks; the infer command on good and bad files."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.checkpoint import save_model
from audiosep.cli import main
from audiosep.inference import ChunkConfig, SeparationError, Separator, chunk_layout
from audiosep.losses import si_snr

SAMPLE_RATE = 8000


class BandSplitFlipping(nn.Module):
    """Splits low/high frequencies by FFT masking, swapping the output order on every other call.

    With ``flip_signs``, it also flips the sign of the first output on every third call and of the
    second on every fourth, as a separator may between independent chunks.
    """

    def __init__(self, flip_signs: bool = False) -> None:
        super().__init__()
        self.calls = 0
        self.flip_signs = flip_signs

    def forward(self, mixture: Tensor) -> Tensor:
        spectrum = torch.fft.rfft(mixture)
        freqs = torch.fft.rfftfreq(mixture.shape[-1], 1 / SAMPLE_RATE)
        low = torch.fft.irfft(spectrum * (freqs < 800), n=mixture.shape[-1])
        high = torch.fft.irfft(spectrum * (freqs >= 800), n=mixture.shape[-1])
        self.calls += 1
        if self.flip_signs:
            low = -low if self.calls % 3 == 0 else low
            high = -high if self.calls % 4 == 1 else high
        pair = (low, high) if self.calls % 2 else (high, low)
        return torch.stack(pair, dim=1)


@pytest.mark.parametrize("length", [31, 55, 56, 100, 481, 1000, 12345])
def test_chunk_layout_covers_the_signal_with_overlap_in_the_fewest_even_chunks(length: int) -> None:
    starts, size = chunk_layout(length=length, chunk=30, overlap=5)
    assert size <= 30 and starts[0] == 0 and starts[-1] + size == length
    grid_starts, grid_size = chunk_layout(length=length, chunk=30, overlap=5, grid=4)  # a model's encoder stride
    hop = size - 5  # the grid rounds it down by at most 3: that many more chunks, and one
    assert len(grid_starts) <= len(starts) * hop / (hop - 3) + 1 and all(start % 4 == 0 for start in grid_starts)
    assert length <= grid_starts[-1] + grid_size < length + 4 and grid_size <= 30
    assert all(a + grid_size - b >= 5 for a, b in zip(grid_starts, grid_starts[1:], strict=False))
    assert all(5 <= a + size - b < size for a, b in zip(starts, starts[1:], strict=False))  # overlap, progress
    fewer = len(starts) - 1  # one chunk fewer of the longest size cannot cover the signal with the overlap
    assert fewer * 30 - (fewer - 1) * 5 < length


def test_chunk_layout_of_short_and_hour_long_inputs() -> None:
    assert chunk_layout(20, 30, 5) == ([0], 20)
    starts, size = chunk_layout(60 * 8000, 16 * 8000, 2 * 8000)
    assert len(starts) == 5 and size == 108800  # 13.6 s, not 16
    starts, size = chunk_layout(3600 * 8000, 16 * 8000, 2 * 8000)
    assert len(starts) == 257 and size == 16 * 8000  # (3600 - 2) / 14 = 257 exactly


def test_chunked_separation_keeps_source_order() -> None:
    t = torch.arange(SAMPLE_RATE * 7) / SAMPLE_RATE
    low, high = torch.sin(2 * torch.pi * 200 * t), 0.5 * torch.sin(2 * torch.pi * 2000 * t)
    model = BandSplitFlipping().eval()
    # optimize=False and eval mode: the prepared runtime, or a separator's copy of a training-mode model,
    # would be a copy, and this test counts the calls of `model` itself.
    separator = Separator(model, SAMPLE_RATE, ChunkConfig(seconds=2.0, overlap_seconds=0.5), optimize=False)
    estimate = separator.separate(low + high, SAMPLE_RATE)
    assert model.calls >= 4  # several chunks, with alternating output order
    assert estimate.shape == (2, low.shape[0])
    scores = si_snr(estimate, torch.stack([low, high]))
    assert (scores > 20).all(), scores


def test_chunks_stay_on_one_speaker_with_sign_flips() -> None:
    """Two known "speakers" (bands, with pauses), a model that reorders and sign-flips per chunk."""
    rng = np.random.default_rng(0)
    t = torch.arange(SAMPLE_RATE * 9) / SAMPLE_RATE
    gate = torch.from_numpy(np.repeat(rng.uniform(size=18) > 0.3, SAMPLE_RATE // 2)).float()
    low = torch.sin(2 * torch.pi * 210 * t) * (0.4 + gate)  # level changes, never silent in an overlap
    high = 0.5 * torch.sin(2 * torch.pi * 2100 * t + 0.3)
    model = BandSplitFlipping(flip_signs=True).eval()  # eval: the separator runs this very module
    separator = Separator(model, SAMPLE_RATE, ChunkConfig(seconds=1.5, overlap_seconds=0.5), optimize=False)
    estimate = separator.separate(low + high, SAMPLE_RATE)
    assert model.calls >= 8
    references = torch.stack([low, high])
    # one global sign per source is allowed (the first chunk's); SI-SNR is scale-invariant but not
    # sign-invariant, so a flipped chunk anywhere would sink it (it does with plain correlation matching)
    sign = torch.sign((estimate * references).sum(-1, keepdim=True))
    scores = si_snr(estimate * sign, references)
    assert (scores > 20).all(), scores


class FilterPair(nn.Module):
    """A fixed pair of 65-tap FIR filters (low/high band): a "separator" whose whole-signal output is known."""

    def __init__(self) -> None:
        super().__init__()
        taps = torch.arange(-32, 33, dtype=torch.float32)
        low = torch.sinc(taps / 8) / 8 * torch.hann_window(65, periodic=False)
        self.register_buffer("filters", torch.stack([low, -low]).unsqueeze(1))
        self.filters[1, 0, 32] += 1.0  # high = identity - low

    def forward(self, mixture: Tensor) -> Tensor:
        return F.conv1d(mixture.unsqueeze(1), self.filters, padding=32)


def test_chunked_output_of_a_long_signal_is_the_models_own_not_a_drifting_level() -> None:
    """A least-squares gain fitted on each overlap (edges included) and chained over the chunks made the level
    drift: 0.70 of the model's own after 16 minutes of 1 s chunks, 22 LSB off after 5 s."""
    signal = 0.1 * torch.randn(SAMPLE_RATE * 60, generator=torch.Generator().manual_seed(0))
    model = FilterPair().eval()
    separator = Separator(model, SAMPLE_RATE, ChunkConfig(seconds=0.5, overlap_seconds=0.1), optimize=False)
    with torch.inference_mode():
        whole = model(signal[None])[0]
    chunked = separator.separate_at_model_rate(signal)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_chunks_start_on_the_encoders_frame_grid() -> None:
    """Chunks starting between two of the whole signal's frames were framed differently: a Conv-TasNet's output
    differed over their whole length (11-19 dB from unchunked), not only near the seams."""
    from audiosep.models import ConvTasNet

    torch.manual_seed(0)
    model = ConvTasNet(enc_num_filters=16, enc_kernel_size=16, bottleneck_channels=8, hidden_channels=16,
                       skip_channels=8, num_layers=2, num_repeats=1, norm="BN").eval()  # fmt: skip
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
            norm.running_mean.uniform_(-0.5, 0.5), norm.running_var.uniform_(0.5, 2.0)
    signal = 0.1 * torch.randn(SAMPLE_RATE * 6 + 5, generator=torch.Generator().manual_seed(1))
    separator = Separator(model, SAMPLE_RATE, ChunkConfig(seconds=1.03, overlap_seconds=0.2), optimize=False)
    with torch.inference_mode():
        whole = model(signal[None])[0]
    chunked = separator.separate_at_model_rate(signal)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4 * float(whole.abs().max()))


def test_chunk_config_rejects_overlap_too_large() -> None:
    with pytest.raises(ValueError, match="overlap"):
        ChunkConfig(seconds=2.0, overlap_seconds=1.5)


@pytest.fixture()
def tiny_checkpoint(tmp_path: Path) -> Path:
    from audiosep.models.conv_tasnet import ConvTasNet

    model = ConvTasNet(enc_num_filters=16, bottleneck_channels=8, hidden_channels=16, skip_channels=8,
                       num_layers=2, num_repeats=1)
    path = tmp_path / "model.ckpt"
    save_model(model, path, {"sample_rate": SAMPLE_RATE})
    return path


def test_infer_separates_stereo_16k_and_reports_bad_files(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    good_wav = tmp_path / "meeting.wav"
    sf.write(good_wav, 0.1 * rng.standard_normal((16000, 2)), 16000)  # 1 s, stereo, 16 kHz
    good_flac = tmp_path / "call.flac"
    sf.write(good_flac, 0.1 * rng.standard_normal(12345), 8000)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really audio")
    out = tmp_path / "out"
    code = main(["infer", "--ckpt", str(tiny_checkpoint), "--out-dir", str(out), str(good_wav), str(bad), str(good_flac)])
    assert code == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if "broken.wav" in line]
    assert len(err_lines) == 1 and "cannot read audio" in err_lines[0]
    for stem, rate, length in (("meeting", 16000, 16000), ("call", 8000, 12345)):
        for k in (1, 2):
            info = sf.info(out / f"{stem}_s{k}.wav")
            assert (info.samplerate, info.frames, info.channels) == (rate, length, 1)
    assert not list(out.glob("broken*")) and not list(out.glob(".*"))


def test_infer_keep_model_rate(tiny_checkpoint: Path, tmp_path: Path) -> None:
    wav = tmp_path / "x.wav"
    sf.write(wav, 0.1 * np.random.default_rng(1).standard_normal(16000), 16000)
    assert main(["infer", "--ckpt", str(tiny_checkpoint), "--out-dir", str(tmp_path), "--keep-model-rate", str(wav)]) == 0
    info = sf.info(tmp_path / "x_s1.wav")
    assert (info.samplerate, info.frames) == (8000, 8000)


def test_infer_missing_checkpoint_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["infer", "--ckpt", str(tmp_path / "nope.ckpt"), str(tmp_path / "a.wav")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.ckpt" in err[0]


def test_separator_from_checkpoint_matches_model(tiny_checkpoint: Path) -> None:
    separator = Separator.from_checkpoint(tiny_checkpoint)
    mixture = torch.randn(4000)
    with torch.no_grad():
        expected = separator.model(mixture[None])[0]
    torch.testing.assert_close(separator.separate(mixture, SAMPLE_RATE), expected)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_long_inputs_show_a_chunks_bar_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    mixture = torch.randn(SAMPLE_RATE * 5)
    separator = Separator(BandSplitFlipping(), SAMPLE_RATE, ChunkConfig(seconds=2.0, overlap_seconds=0.5), optimize=False)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    separator.separate_at_model_rate(mixture)
    assert "chunks" not in terminal.getvalue()  # off unless asked for (audiosep infer asks)
    separator.progress = True
    separator.separate_at_model_rate(mixture)
    assert "chunks" in terminal.getvalue()
    quiet = io.StringIO()  # not a terminal: no bar even when asked
    monkeypatch.setattr(sys, "stderr", quiet)
    separator.separate_at_model_rate(mixture)
    assert quiet.getvalue() == ""


def test_batched_chunks_give_the_same_output_as_one_at_a_time() -> None:
    from audiosep.models import conv_tasnet_demo

    torch.manual_seed(0)
    model = conv_tasnet_demo(num_repeats=1, num_layers=2).eval()
    mixture = 0.1 * torch.randn(SAMPLE_RATE * 7)
    config = ChunkConfig(seconds=1.5, overlap_seconds=0.5)
    one = Separator(model, SAMPLE_RATE, config).separate_at_model_rate(mixture)
    batched = Separator(model, SAMPLE_RATE, config, chunk_batch=3).separate_at_model_rate(mixture)
    assert len(chunk_layout(mixture.shape[-1], *config.samples(SAMPLE_RATE))[0]) > 3  # several batches, one partial
    assert float((one - batched).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="chunk_batch"):
        Separator(model, SAMPLE_RATE, config, chunk_batch=0)


class PointwiseFlipping(nn.Module):
    """Sources ``0.3 x`` and ``-0.7 x``, swapped and sign-flipped from call to call (a chunk-local model)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, mixture: Tensor) -> Tensor:
        self.calls += 1
        first, second = 0.3 * mixture, -0.7 * mixture
        if self.calls % 2 == 0:
            first, second = -second, first
        return torch.stack([first, second], dim=1)


def test_chunked_equals_unchunked_for_a_chunk_local_model() -> None:
    mixture = torch.randn(SAMPLE_RATE * 3 + 17, generator=torch.Generator().manual_seed(0))
    whole = Separator(PointwiseFlipping(), SAMPLE_RATE, ChunkConfig(10.0, 1.0), optimize=False)
    chunked_model = PointwiseFlipping().eval()  # eval: the separator runs this very module
    chunked = Separator(chunked_model, SAMPLE_RATE, ChunkConfig(0.5, 0.1), optimize=False)
    expected, got = whole.separate_at_model_rate(mixture), chunked.separate_at_model_rate(mixture)
    assert chunked_model.calls >= 7
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _band_split_separator() -> Separator:
    return Separator(BandSplitFlipping().eval(), SAMPLE_RATE, optimize=False)


@pytest.mark.parametrize(
    ("waveform", "rate", "message"),
    [
        (torch.zeros(800, dtype=torch.int16), SAMPLE_RATE, "must be a float tensor in \\[-1, 1\\], got torch.int16"),
        (torch.zeros(1, 800, dtype=torch.int16), SAMPLE_RATE, "got torch.int16"),
        (torch.zeros(800, dtype=torch.bool), SAMPLE_RATE, "got torch.bool"),
        (torch.zeros(0, 800), SAMPLE_RATE, "C >= 1, got shape \\(0, 800\\)"),
        (torch.zeros(1, 2, 800), SAMPLE_RATE, "got shape \\(1, 2, 800\\)"),
        (torch.zeros(800), 0, "sample rate 0: a whole number of Hz from 1"),
        (torch.zeros(800), -8000, "sample rate -8000"),
        (torch.zeros(800), float("nan"), "sample rate nan"),
        (torch.zeros(800), 44100.5, "sample rate 44100.5"),
        (torch.zeros(800), "8000", "sample rate '8000'"),  # a TypeError inside a comparison (reviewer)
        (torch.zeros(44101), 44101, "needs a \\d+ MiB filter"),  # a bare UserError, not a ValueError (reviewer)
    ],
)
def test_separate_refuses_what_it_cannot_separate_with_one_clear_error(waveform: Tensor, rate: float, message: str) -> None:
    with pytest.raises(SeparationError, match=message):
        _band_split_separator().separate(waveform, rate)  # type: ignore[arg-type]


@pytest.mark.parametrize("mixture", [torch.zeros(0), torch.zeros(2, 800), torch.zeros(800, dtype=torch.int16)])
def test_separate_at_model_rate_refuses_empty_batched_or_integer_input(mixture: Tensor) -> None:
    with pytest.raises(SeparationError, match="must be a float \\[T\\] tensor|too short"):
        _band_split_separator().separate_at_model_rate(mixture)


def test_write_sources_atomic_refuses_non_finite_or_clipping_samples(tmp_path: Path) -> None:
    from audiosep.inference import limit_peak, write_sources_atomic

    paths = [tmp_path / "a.wav", tmp_path / "b.wav"]
    with pytest.raises(ValueError, match="2 non-finite sample"):
        write_sources_atomic(torch.tensor([[float("nan"), 0.5], [0.1, float("inf")]]), SAMPLE_RATE, paths)
    loud = torch.tensor([[2.0, -3.0], [0.5, 0.1]])
    with pytest.raises(ValueError, match="peak 3 is beyond \\[-1, 1\\]"):
        write_sources_atomic(loud, SAMPLE_RATE, paths)
    assert not list(tmp_path.iterdir())  # nothing written
    write_sources_atomic(limit_peak(loud, "x"), SAMPLE_RATE, paths)
    assert float(np.abs(sf.read(paths[0])[0]).max()) < 1.0
    write_sources_atomic(loud, SAMPLE_RATE, paths, subtype="FLOAT")  # float WAV holds any finite value
    assert sf.read(paths[0])[0][1] == -3.0


@pytest.mark.parametrize(
    ("sources", "names", "rate", "subtype", "message"),
    [
        (torch.zeros(2, 1, 800), ["a.wav", "b.wav"], SAMPLE_RATE, "PCM_16", r"float \[S, T\] tensor, got torch.float32 \(2, 1, 800\)"),
        (torch.zeros(2, 800, dtype=torch.int16), ["a.wav", "b.wav"], SAMPLE_RATE, "PCM_16", "got torch.int16"),
        (torch.zeros(2, 800), ["a.wav", "./a.wav"], SAMPLE_RATE, "PCM_16", "two of the paths name one file"),
        (torch.zeros(2, 800), ["A.wav", "a.wav"], SAMPLE_RATE, "PCM_16", "two of the paths name one file"),  # one on macOS
        (torch.zeros(2, 800), ["a.wav", "b.wav"], 0, "PCM_16", "sample rate 0: a whole number of Hz from 1"),
        (torch.zeros(2, 800), ["a.wav", "b.wav"], SAMPLE_RATE, "VORBIS", "subtype 'VORBIS' cannot be written as WAV"),
        (torch.full((2, 800), 3.0), ["a.wav", "b.wav"], SAMPLE_RATE, "ULAW", r"peak 3 is beyond \[-1, 1\] and would clip in ULAW"),
        (torch.full((2, 800), 3.0), ["a.wav", "b.wav"], SAMPLE_RATE, "pcm_16", r"peak 3 is beyond \[-1, 1\] and would clip in PCM_16"),
        (torch.zeros(2, 800), ["a.wav", "b.wav"], 1e300, "PCM_16", "sample rate 1e\\+300: a whole number of Hz from 1"),
    ],
)  # fmt: skip
def test_write_sources_atomic_refuses_what_would_lose_or_corrupt_a_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: Tensor, names: list[str], rate: int, subtype: str, message: str
) -> None:
    """Reviewer: one path given twice kept one source of two, [S, 1, T] became S files of T channels, ULAW clipped
    silently, a rate of 0 was libsndfile's error naming a temp file."""
    from audiosep.inference import write_sources_atomic

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        write_sources_atomic(sources, rate, names, subtype=subtype)
    assert not list(tmp_path.iterdir())


def test_write_sources_atomic_takes_a_float_rate_half_precision_and_a_lower_case_subtype(tmp_path: Path) -> None:
    """8000.0 passed the rate check and failed in soundfile; float16 sources too; "float" clipped a peak of 3."""
    from audiosep.inference import write_sources_atomic

    sources = torch.tensor([[3.0, -0.5], [0.25, 0.125]], dtype=torch.float16)
    paths = write_sources_atomic(sources, 8000.0, [tmp_path / "a.wav", tmp_path / "b.wav"], subtype="float")
    data, rate = sf.read(paths[0])
    assert rate == 8000 and sf.info(paths[0]).subtype == "FLOAT" and data.tolist() == [3.0, -0.5]


def test_a_chunk_longer_than_ten_minutes_is_refused_not_overflowed() -> None:
    with pytest.raises(ValueError, match="chunk 1e\\+308 s is longer than 600 s"):
        ChunkConfig(1e308, 1.0)


def test_a_grid_never_makes_a_chunk_longer_than_asked() -> None:
    """Rounding the hop down to the stride and then stretching every chunk to reach the end ran 32224-sample
    chunks for a configured 10400 (60 minutes at 8 kHz in 1.3 s chunks): 3.1x the memory --max-memory measured."""
    length, chunk, overlap = 60 * 60 * 8000, 10400, 2000
    starts, size = chunk_layout(length, chunk, overlap, grid=8)
    assert size <= chunk and all(start % 8 == 0 for start in starts)
    assert length <= starts[-1] + size < length + 8
    assert all(a + size - b >= overlap for a, b in zip(starts, starts[1:], strict=False))


def test_resepformer_chunks_start_on_its_blocks_of_frames() -> None:
    """RE-SepFormer cuts its frames into blocks of chunk_size from the signal's start: a chunk on the stride grid
    but not on the blocks' was cut differently (6-8 dB from unchunked for a one-block model)."""
    from audiosep.models import RESepFormer

    torch.manual_seed(0)
    model = RESepFormer(encoder_channels=12, kernel_size=8, num_blocks=1, num_intra_layers=1, num_inter_layers=1,
                        num_heads=2, ffn_dim=16, chunk_size=10, norm="channel_ln", causal=True).eval()  # fmt: skip
    signal = 0.1 * torch.randn(SAMPLE_RATE * 3 + 7, generator=torch.Generator().manual_seed(2))
    separator = Separator(model, SAMPLE_RATE, ChunkConfig(seconds=0.33, overlap_seconds=0.1), optimize=False)
    with torch.inference_mode():
        whole = model(signal[None])[0]
    torch.testing.assert_close(separator.separate_at_model_rate(signal), whole, rtol=0, atol=1e-4)


def test_chunks_a_few_strides_long_still_share_the_overlap() -> None:
    """A hop rounded up to one grid step longer than the chunk less the overlap left neighbours sharing fewer
    samples than the overlap; where that is all the earlier chunk's zero-weight edge, the reference was 0/0."""
    for length in range(18, 400):
        starts, size = chunk_layout(length, 17, 8, grid=8)
        assert size <= 17 and all(a + size - b >= 8 for a, b in zip(starts, starts[1:], strict=False)), length


def test_grid_chunks_are_the_fewest_that_fit() -> None:
    """Rounding the hop down and adding a chunk computed a 60 s file at 16 kHz in 6 chunks of 13.6 s, the last
    two 16 samples apart, where 5 on the same grid cover it."""
    starts, size = chunk_layout(960016, 256000, 32000, grid=8)
    assert (starts, size) == ([0, 185608, 371216, 556824, 742408], 217608)
    for length in (31, 100, 481, 1000, 12345):  # on a grid of 1, the even layout as it always was
        count = -(-(length - 5) // 25)
        size = -(-(length + (count - 1) * 5) // count)
        assert chunk_layout(length, 30, 5) == ([i * (size - 5) for i in range(count - 1)] + [length - size], size)


def test_a_short_last_chunk_still_runs_in_batches_with_its_equals(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group with one shorter chunk ran every chunk of it alone: 7 passes of 1 where 6 and 1 do."""
    model = FilterPair().eval()
    model.encoder = nn.Conv1d(1, 1, 8, stride=8)  # a stride-8 grid: the last chunk comes out shorter
    sizes = []
    separator = Separator(model, SAMPLE_RATE, ChunkConfig(seconds=0.5, overlap_seconds=0.125), optimize=False,
                          chunk_batch=8)  # fmt: skip
    real = separator.runtime
    separator.runtime = lambda batch: sizes.append(batch.shape[0]) or real(batch)
    signal = 0.1 * torch.randn(SAMPLE_RATE * 2 + 3, generator=torch.Generator().manual_seed(4))
    chunked = separator.separate_at_model_rate(signal)
    starts, _ = chunk_layout(signal.shape[-1], *ChunkConfig(0.5, 0.125).samples(SAMPLE_RATE), grid=8)
    assert sorted(sizes) == [1, len(starts) - 1]
    with torch.inference_mode():
        torch.testing.assert_close(chunked, model(signal[None])[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"dtype": "int8"}, {"optimize": False}])
def test_edits_to_the_separators_model_are_used_and_hooks_are_not_skipped(options: dict) -> None:
    """``separate()`` ran a transform built once in ``__init__``: zeroed, pruned or reloaded weights of
    ``separator.model`` were ignored, a hook on it never fired, and the output tag kept the old weights'
    digest (reviewer)."""
    from audiosep.models import conv_tasnet_demo

    torch.manual_seed(0)
    separator = Separator(conv_tasnet_demo(num_repeats=1, num_layers=2).eval(), 8000, **options)
    wave = 0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(1))
    before, settings = separator.separate(wave, 8000), separator.output_settings()
    with torch.no_grad():
        separator.model.decoder.weight.data.zero_()  # through .data: no version counter sees it
    assert torch.equal(separator.separate(wave, 8000), torch.zeros_like(before))
    assert separator.output_settings() != settings
    fired: list[int] = []
    handle = separator.model.decoder.register_forward_hook(lambda *args: fired.append(1))
    if options.get("optimize", True):
        with pytest.raises(ValueError, match="has hooks on decoder"):
            separator.separate(wave, 8000)
    else:
        separator.separate(wave, 8000)
        assert fired
    handle.remove()


@pytest.mark.parametrize("options", [{}, {"dtype": "int8"}])
def test_a_layer_without_weights_swapped_into_the_separators_model_is_used(options: dict) -> None:
    """The runtime was rebuilt on weight edits only: ``model.encoder_act = nn.Identity()`` was ignored (0.43 off;
    reviewer)."""
    from audiosep.models import conv_tasnet_demo

    torch.manual_seed(0)
    separator = Separator(conv_tasnet_demo(num_repeats=1, num_layers=2).eval(), 8000, **options)
    wave = 0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(1))
    before = separator.separate(wave, 8000)
    separator.model.encoder_act = torch.nn.Identity()
    after = separator.separate(wave, 8000)
    with torch.inference_mode():
        plain = separator.model(wave[None])[0]
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, plain, rtol=0, atol=1e-5 if not options else 0.05)


def test_the_model_probe_takes_nan_weights_and_complex_buffers() -> None:
    """A NaN weight made every call rebuild the runtime (NaN != NaN); a complex buffer raised (diff reviewer)."""
    from audiosep.models import conv_tasnet_demo

    model = conv_tasnet_demo(num_repeats=1, num_layers=2).eval()
    model.register_buffer("phase", torch.ones(3, dtype=torch.complex64))
    with torch.no_grad():
        model.decoder.weight[0, 0, 0] = float("nan")
    separator = Separator(model, 8000)
    runtime = separator.runtime
    separator._sync_runtime()
    separator._sync_runtime()
    assert separator.runtime is runtime


def test_a_time_major_waveform_is_refused_and_cancelling_channels_are_warned_about(
    tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``sf.read(..., always_2d=True)`` gives ``[T, C]``: ``[16000, 64]`` was averaged over its 16000 "channels"
    into 64 samples and ``[16000, 2]`` said "too short: 2 samples" (reviewer)."""
    separator = Separator.from_checkpoint(tiny_checkpoint)
    voice = 0.1 * torch.randn(SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    for channels in (2, 64):
        with pytest.raises(SeparationError, match=r"must be \[C, T\], got shape \(8000, \d+\): more channels than"):
            separator.separate(voice[:, None].repeat(1, channels), SAMPLE_RATE)
    with caplog.at_level("WARNING", logger="audiosep.inference"):
        separator.separate(torch.stack([voice, 0.5 * voice]), SAMPLE_RATE)
        unrelated = 0.1 * torch.randn(64, SAMPLE_RATE, generator=torch.Generator().manual_seed(1))
        separator.separate(unrelated, SAMPLE_RATE)  # their mean loses 18 dB: no cancellation (reviewer)
        assert not caplog.records
        separator.separate(torch.stack([voice, -voice + 1e-4 * voice.flip(0)]), SAMPLE_RATE)
    assert "its 2 channels cancel in the mono mixdown" in caplog.text
