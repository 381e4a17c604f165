"""Long audio in blocks: spans resampled exactly, files separated without being held whole, the same
numbers as separating the whole waveform, a memory budget that picks the chunk, a killed run that leaves
no output behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.audio_blocks import CheckedAudio, resample_span, resampled_length
from audiosep.checkpoint import save_model
from audiosep.cli import main
from audiosep.data.audio import resample
from audiosep.inference import OUTPUT_BLOCK, ChunkConfig, SeparationError, Separator, limit_peak, read_mixture
from audiosep.io import output_subtype
from audiosep.models import conv_tasnet_demo

RATE = 8000


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return conv_tasnet_demo(num_repeats=1, num_layers=2)


def mixture(frames: int, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Two tones with noise, ``[frames, channels]`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    tones = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 630 * t + 1.0)
    return (tones[:, None] + 0.05 * rng.standard_normal((frames, channels))).astype(np.float32)


@pytest.mark.parametrize("orig, new", [(44100, 8000), (8000, 16000), (16000, 8000), (22050, 8000), (48000, 44100)])
def test_resample_span_equals_resampling_the_whole_signal(orig: int, new: int) -> None:
    signal_ = torch.randn(2, orig + 1234, generator=torch.Generator().manual_seed(1))
    whole = resample(signal_, orig, new)
    length = whole.shape[-1]
    assert resampled_length(signal_.shape[-1], orig, new) == length
    for start, stop in [(0, 1), (0, 333), (37, 5000), (length - 300, length), (1234, length), (length - 1, length)]:
        span = resample_span(lambda a, b: signal_[:, a:b], signal_.shape[-1], orig, new, start, stop)
        torch.testing.assert_close(span, whole[:, start:stop], atol=1e-6, rtol=0)


def quantised(sources: torch.Tensor) -> np.ndarray:
    """What a 16-bit PCM wav of ``sources`` holds (written and read back in memory)."""
    import io

    rows = []
    for source in sources:
        buffer = io.BytesIO()
        sf.write(buffer, source.numpy(), RATE, subtype="PCM_16", format="WAV")
        buffer.seek(0)
        rows.append(sf.read(buffer, dtype="int16")[0])
    return np.stack(rows)


@pytest.mark.parametrize("rate, channels, keep_model_rate", [(16000, 2, False), (16000, 2, True), (8000, 1, False)])
def test_a_file_separated_in_blocks_equals_the_whole_waveform_separated(
    tmp_path: Path, rate: int, channels: int, keep_model_rate: bool
) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, mixture(int(5.3 * rate), rate, channels), rate, subtype="FLOAT")
    separator = Separator(tiny_model(), RATE, ChunkConfig(1.0, 0.25))
    written = separator.separate_file(path, tmp_path / "out", keep_model_rate=keep_model_rate, subtype="PCM_16")
    waveform, _ = read_mixture(path)
    expected = limit_peak(separator.separate(waveform, rate, keep_model_rate), "whole")
    got = np.stack([sf.read(p, dtype="int16")[0] for p in written])
    assert got.shape == expected.shape and np.abs(got).max() > 1000
    assert np.abs(got.astype(int) - quantised(expected).astype(int)).max() <= 1  # one LSB of rounding


def test_a_long_file_is_read_in_spans_not_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "long.wav"
    rate = 16000
    sf.write(path, mixture(40 * rate, rate), rate)
    spans: list[int] = []
    real_read = CheckedAudio.read

    def recording_read(self: CheckedAudio, start: int, stop: int) -> torch.Tensor:
        data = real_read(self, start, stop)
        spans.append(data.shape[-1])
        return data

    monkeypatch.setattr(CheckedAudio, "read", recording_read)
    separator = Separator(tiny_model(), RATE, ChunkConfig(2.0, 0.5))
    separator.separate_file(path, tmp_path / "out")
    assert sum(spans) >= 40 * rate  # all of it went through read()
    assert max(spans) < 2.1 * rate  # a chunk (2 s at the file's rate) and the resampler's context, never more


def test_a_silent_file_gets_silent_outputs_of_its_length(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(3 * OUTPUT_BLOCK // 2 + 7, dtype=np.float32), 16000)
    warnings: list[str] = []
    written = Separator(tiny_model(), RATE).separate_file(path, tmp_path / "out", warn=warnings.append)
    for output in written:
        data, rate = sf.read(output)
        assert rate == 16000 and data.shape == (3 * OUTPUT_BLOCK // 2 + 7,) and not data.any()
    assert len(warnings) == 1 and "silent" in warnings[0]


MEMORY_BUDGETS = """
import json
from audiosep.inference import Separator
from audiosep.models import conv_tasnet_demo

separator = Separator(conv_tasnet_demo(), 8000)
resident = separator._resident_mib()
small = separator.fit_chunk_to_memory(resident + 150).seconds
large = separator.fit_chunk_to_memory(resident + 600)
try:
    separator.fit_chunk_to_memory(resident - 50)
    refused = ""
except ValueError as err:
    refused = str(err)
print(json.dumps({"small": small, "large": large.seconds, "overlap": large.overlap_seconds,
                  "kept": separator.chunk.seconds, "refused": refused}))
"""


def test_memory_budget_picks_longer_chunks_for_more_memory_and_refuses_too_little() -> None:
    # A fresh process: resident memory is what is measured, and a test process's heap is anyone's.
    result = subprocess.run([sys.executable, "-c", MEMORY_BUDGETS], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert 1.0 <= got["small"] < got["large"] <= 600
    assert got["kept"] == got["large"] and got["overlap"] <= got["large"] / 4
    assert "too little" in got["refused"]


def test_infer_max_memory_says_which_chunk_it_chose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "model.ckpt"
    save_model(tiny_model(), ckpt, {"sample_rate": RATE})
    wav = tmp_path / "x.wav"
    sf.write(wav, mixture(RATE, RATE), RATE)
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "out"), "--max-memory", "4000", str(wav)]) == 0
    assert "--max-memory 4000 MiB: chunks of" in capsys.readouterr().err
    for bad in ("0", "nan", "inf"):
        assert main(["infer", "--ckpt", str(ckpt), "--max-memory", bad, str(wav)]) == 1
        assert "--max-memory takes a positive number" in capsys.readouterr().err


SLOW_SEPARATION = """
import sys, time
from audiosep import inference

real_append = inference._Scratch.append

def slow_append(self, piece):
    real_append(self, piece)
    open(sys.argv[1], "w").close()  # the parent may kill now: scratch and temp files exist
    time.sleep(60)

inference._Scratch.append = slow_append
from audiosep.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_killed_run_leaves_no_output_and_the_next_run_clears_its_leftovers(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    save_model(tiny_model(), ckpt, {"sample_rate": RATE})
    wav, out, started = tmp_path / "x.wav", tmp_path / "out", tmp_path / "started"
    sf.write(wav, mixture(4 * RATE, RATE), RATE)
    args = ["infer", "--ckpt", str(ckpt), "--out-dir", str(out), "--chunk-seconds", "1", "--overlap-seconds", "0.25"]
    child = subprocess.Popen([sys.executable, "-c", SLOW_SEPARATION, str(started), *args, str(wav)])
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the child never started separating"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    left = sorted(p.name for p in out.iterdir())
    assert left and all(name.startswith(".x_s") and name.endswith(".tmp") for name in left)  # no x_s1.wav
    assert main([*args, str(wav)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x_s1.wav", "x_s2.wav"]


@pytest.mark.parametrize("fmt, subtype", [("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III"), ("FLAC", "PCM_16")])
def test_spans_of_compressed_files_equal_decoding_the_whole(tmp_path: Path, fmt: str, subtype: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, mixture(20 * RATE, RATE, channels=2), RATE, format=fmt, subtype=subtype)
    whole = torch.from_numpy(sf.read(path, dtype="float32", always_2d=True)[0].T.copy())
    with CheckedAudio(path) as audio:
        assert audio.frames == whole.shape[-1]
        spans = [(0, 5000), (4000, 90000), (85000, 85001), (100000, 150000), (12345, 23456), (150000, 10**9)]
        for start, stop in spans:  # overlapping, skipping ahead, and going back (decodes again from the start)
            torch.testing.assert_close(audio.read(start, stop), whole[:, start:stop], atol=1e-6, rtol=0)  # MP3: 1 ulp


def test_a_rate_that_needs_a_huge_resampling_filter_is_one_error_line(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "model.ckpt"
    save_model(tiny_model(), ckpt, {"sample_rate": RATE})
    wav = tmp_path / "odd.wav"
    sf.write(wav, mixture(44101, 44101), 44101)
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "out"), str(wav)]) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "odd.wav" in line and "44101 Hz -> 8000 Hz needs a" in line and "convert the file" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_output_subtype_follows_the_input_precision_unless_one_is_asked_for() -> None:
    assert [output_subtype(s) for s in ("PCM_16", "PCM_S8", "PCM_U8", "VORBIS", "ULAW")] == ["PCM_16"] * 5
    assert [output_subtype(s) for s in ("PCM_24", "PCM_32", "FLOAT", "DOUBLE")] == ["PCM_24", "PCM_24", "FLOAT", "FLOAT"]
    assert [output_subtype(s) for s in ("ALAC_20", "ALAC_24", "ALAC_32", "DWVW_24")] == ["PCM_24"] * 4
    assert [output_subtype(s) for s in ("ALAC_16", "G721_32", "G723_40", "MPEG_LAYER_III")] == ["PCM_16"] * 4  # kbit/s
    assert output_subtype("FLOAT", "PCM_16") == "PCM_16" and output_subtype("PCM_16", "FLOAT") == "FLOAT"
    with pytest.raises(ValueError, match="unknown output subtype 'PCM_8'"):
        output_subtype("PCM_16", "PCM_8")


def test_a_quiet_24_bit_recording_keeps_its_low_bits(tmp_path: Path) -> None:
    """-60 dBFS in 24 bits: its sources written in 16 bits would keep only the top few bits."""
    path = tmp_path / "quiet.wav"
    sf.write(path, 1e-3 * mixture(3 * RATE, RATE), RATE, subtype="PCM_24")
    separator = Separator(tiny_model(), RATE)
    expected = separator.separate(read_mixture(path)[0], RATE).numpy()
    errors = {}
    for subtype in ("auto", "PCM_16"):
        written = separator.separate_file(path, tmp_path / subtype, subtype=subtype)
        assert sf.info(str(written[0])).subtype == ("PCM_24" if subtype == "auto" else "PCM_16")
        got = np.stack([sf.read(p, dtype="float64")[0] for p in written])
        errors[subtype] = 10 * np.log10((expected**2).sum() / ((got - expected) ** 2).sum())
    # SNR (dB) of the written sources: 8 more bits, ~48 dB more (this untrained model's sources are very quiet)
    assert errors["auto"] > errors["PCM_16"] + 40 and errors["auto"] > 55, errors


def test_a_float_recording_gives_float_sources_at_their_level(tmp_path: Path) -> None:
    """Float WAV may exceed full scale: its sources are written as float, not scaled down to fit 16 bits."""
    path = tmp_path / "loud.wav"
    sf.write(path, 8.0 * mixture(2 * RATE, RATE), RATE, subtype="FLOAT")
    separator = Separator(tiny_model(), RATE)
    expected = separator.separate(read_mixture(path)[0], RATE).numpy()
    written = separator.separate_file(path, tmp_path / "out")
    assert all(sf.info(str(p)).subtype == "FLOAT" for p in written)
    got = np.stack([sf.read(p, dtype="float32")[0] for p in written])
    assert np.abs(got).max() > 1.0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_float_sources_beyond_any_sane_level_are_refused_not_written(tmp_path: Path) -> None:
    """A float output has no clipping to stop it: a broken model's 1e5 peak would be written as audio that
    audiosep itself refuses to read (beyond MAX_SAMPLE)."""
    path = tmp_path / "x.wav"
    sf.write(path, mixture(RATE, RATE), RATE, subtype="FLOAT")
    model = tiny_model()
    with torch.no_grad():
        model.decoder.weight.mul_(1e7)
    with pytest.raises(SeparationError, match=r"the sources peak at .*, beyond \+-10000"):
        Separator(model, RATE).separate_file(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert Separator(model, RATE).separate_file(path, tmp_path / "out16", subtype="PCM_16")  # scaled to fit


def test_an_output_past_the_wav_size_limit_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAV's sizes are 32-bit: libsndfile writes a longer file without error, which then reads back short."""
    import audiosep.inference as inference

    path = tmp_path / "x.wav"
    sf.write(path, mixture(RATE, RATE), RATE, subtype="FLOAT")
    monkeypatch.setattr(inference, "WAV_MAX_DATA_BYTES", 3 * RATE)  # between the PCM_16 and the FLOAT size
    separator = Separator(tiny_model(), RATE)
    with pytest.raises(SeparationError, match=r"each output would hold .* GiB of FLOAT samples, more than a WAV"):
        separator.separate_file(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert separator.separate_file(path, tmp_path / "out", subtype="PCM_16")


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--chunk-batch", "0"], "--chunk-batch takes a number of chunks of at least 1, got 0"),  # was taken as 1
        (["--chunk-seconds", "0"], "--chunk-seconds takes a positive number of seconds, got 0"),  # blamed the overlap
        (["--chunk-seconds", "nan"], "--chunk-seconds takes a positive number of seconds, got nan"),
        (["--overlap-seconds", "-1"], "--overlap-seconds takes a positive number of seconds, got -1"),
        (["--chunk-seconds", "3", "--overlap-seconds", "1.5"],
         "--chunk-seconds / --overlap-seconds: overlap 1.5 s must be in (0, chunk/2) for a 3.0 s chunk"),
    ],
)
def test_a_bad_chunk_option_is_one_line_naming_its_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        option: list[str], says: str) -> None:  # fmt: skip
    ckpt = tmp_path / "model.ckpt"
    save_model(tiny_model(), ckpt, {"sample_rate": RATE})
    wav = tmp_path / "x.wav"
    sf.write(wav, mixture(RATE, RATE), RATE)
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "out"), *option, str(wav)]) == 1
    assert capsys.readouterr().err.strip() == f"audiosep: error: {says}"
    assert not (tmp_path / "out").exists()
