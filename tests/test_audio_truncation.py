"""Cut audio files are refused, naming the length promised and the length held; whole files are read
whole, WAVs written to a pipe (placeholder sizes in the header) included."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.audio_blocks import AudioError, CheckedAudio
from audiosep.checkpoint import save_model
from audiosep.cli import main
from audiosep.models import conv_tasnet_demo

RATE = 16000
FRAMES = 4 * RATE  # long enough that libsndfile still opens an Opus file cut in half


def speech(frames: int = FRAMES) -> np.ndarray:
    """A tone with noise, float32 mono: every codec keeps it non-silent."""
    t = np.arange(frames) / RATE
    noise = 0.05 * np.random.default_rng(0).standard_normal(frames)
    return (0.3 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32)


def write(path: Path, frames: int = FRAMES, **kwargs: str) -> Path:
    """``path`` written by soundfile (``format``/``subtype`` in ``kwargs``): files as libsndfile makes them."""
    sf.write(path, speech(frames), RATE, **kwargs)
    return path


def cut(path: Path, keep: float = 0.5) -> Path:
    """A copy of ``path`` holding the first ``keep`` of its bytes, as a copy or download broken off leaves it."""
    data = path.read_bytes()
    short = path.with_name(f"cut_{path.name}")
    short.write_bytes(data[: int(len(data) * keep)])
    return short


def refusal(path: Path) -> str:
    """The reason :class:`CheckedAudio` refuses ``path`` for: one line, after the file's name."""
    with pytest.raises(AudioError) as caught:
        CheckedAudio(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return caught.value.reason


def frames_read(path: Path) -> int:
    """Frames :class:`CheckedAudio` accepts ``path`` with (it raises on a file it refuses)."""
    with CheckedAudio(path) as audio:
        return audio.frames


def opus_available() -> bool:
    """Whether this libsndfile writes Opus (older builds do not): only that case is skipped."""
    return "OPUS" in sf.available_subtypes("OGG")


needs_opus = pytest.mark.skipif(not opus_available(), reason="this libsndfile writes no Opus")

# ---------------------------------------------------------------------------------------------
# WAVs written to a pipe: the writer cannot go back to fill in the sizes, the data runs to the end.


def streamed_wav(path: Path, riff_size: int, data_size: int) -> Path:
    """A 16-bit WAV with the RIFF and data sizes a writer to a pipe leaves (ffmpeg, arecord, SoX)."""
    data = bytearray(write(path, subtype="PCM_16").read_bytes())
    struct.pack_into("<I", data, 4, riff_size)
    struct.pack_into("<I", data, data.index(b"data") + 4, data_size)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "riff_size, data_size",
    [(0xFFFFFFFF, 0xFFFFFFFF), (0x7FFFFFFF + 36, 0x7FFFFFFF), (0x7FFFF000 + 36, 0x7FFFF000)],
    ids=["ffmpeg_pipe", "arecord_stdout", "sox_pipe"],
)
def test_a_wav_written_to_a_pipe_is_read_to_its_end(tmp_path: Path, riff_size: int, data_size: int) -> None:
    path = streamed_wav(tmp_path / "streamed.wav", riff_size, data_size)
    whole, _ = sf.read(path, dtype="float32")
    assert whole.shape == (FRAMES,)  # libsndfile reads it whole
    with CheckedAudio(path) as audio:
        assert audio.frames == FRAMES
        np.testing.assert_array_equal(audio.read(0, FRAMES)[0].numpy(), whole)


# ---------------------------------------------------------------------------------------------
# Files cut in half, format by format: refused with the promised and the held length; whole ones read.

FORMATS = {
    "wav": {"format": "WAV"},
    "w64": {"format": "W64"},
    "aiff": {"format": "AIFF"},
    "au": {"format": "AU"},
    "flac": {"format": "FLAC"},
    "ogg": {"format": "OGG", "subtype": "VORBIS"},
    "opus": {"format": "OGG", "subtype": "OPUS"},
    "sph": {"format": "NIST"},  # SPHERE: TIMIT, Switchboard; sample_count in its text header
    "avr": {"format": "AVR"},  # frames in the header, shown only in libsndfile's log
    "mpc": {"format": "MPC2K"},
    "voc": {"format": "VOC"},  # libsndfile's log: "Seems to be a truncated file."
    "8svx": {"format": "SVX"},  # libsndfile's log: "BODY : 128000 (should be ...)"
    "mat4": {"format": "MAT4"},  # libsndfile's log: "File seems to be truncated."
}


def expected_reason(ext: str, short: Path) -> str:
    """What the refusal of ``short`` must say: the promised and the held length, or that the promise is unknown."""
    if ext == "flac":  # libsndfile fails reading a cut FLAC; its STREAMINFO promises the frames
        return rf"truncated or corrupt: reading failed after \d+ of {FRAMES} frames \("
    held = sf.info(short).frames  # what libsndfile finds in the cut file
    if ext in ("ogg", "opus"):  # Ogg headers state no length
        return (
            "truncated: the Ogg stream stops before its end-of-stream page, so the promised length is unknown; "
            rf"the file holds {held} frames \({held / RATE:.3f} s\)$"
        )
    if ext in ("voc", "8svx", "mat4"):  # only libsndfile's log tells
        return (
            "truncated: a chunk runs past the end of the file, so the promised length is unknown; "
            rf"the file holds {held} frames \({held / RATE:.3f} s\)$"
        )
    return (
        rf"truncated: the header promises {FRAMES} frames \({FRAMES / RATE:.3f} s\), "
        rf"the file holds {held} \({held / RATE:.3f} s\)$"
    )


@pytest.mark.parametrize(
    "ext", [pytest.param(ext, marks=needs_opus) if ext == "opus" else ext for ext in FORMATS]
)
def test_a_file_cut_in_half_is_refused_and_the_whole_file_is_read(tmp_path: Path, ext: str) -> None:
    whole = write(tmp_path / f"speech.{ext}", **FORMATS[ext])
    assert frames_read(whole) == FRAMES
    short = cut(whole)
    assert re.match(expected_reason(ext, short), refusal(short))


def test_an_ogg_file_cut_inside_its_last_page_is_refused(tmp_path: Path) -> None:
    """libsndfile's log says nothing of the missing end of stream here: the pages themselves tell."""
    short = cut(write(tmp_path / "speech.ogg", format="OGG", subtype="VORBIS"), keep=0.995)
    assert "end-of-stream bit" not in sf.SoundFile(short).extra_info
    assert refusal(short).startswith("truncated: the Ogg stream stops before its end-of-stream page")


@needs_opus
def test_a_cut_opus_file_libsndfile_cannot_open_is_called_truncated(tmp_path: Path) -> None:
    short = cut(write(tmp_path / "speech.opus", frames=2 * RATE, format="OGG", subtype="OPUS"))
    with pytest.raises(sf.LibsndfileError, match="malformed"):
        sf.SoundFile(short)
    assert refusal(short).startswith("truncated: the Ogg stream stops before its end-of-stream page")


@pytest.mark.parametrize("fmt", ["W64", "AIFF"])
def test_a_cut_adpcm_file_is_refused_without_a_made_up_promise(tmp_path: Path, fmt: str) -> None:
    """An AIFC ``ima4`` COMM chunk counts packets, an ADPCM W64 states no frame count: the promise is unknown."""
    whole = write(tmp_path / f"speech.{fmt.lower()}", format=fmt, subtype="IMA_ADPCM")
    assert frames_read(whole) == sf.info(whole).frames
    short = cut(whole)
    held = sf.info(short).frames
    assert refusal(short) == (
        "truncated: a chunk runs past the end of the file, so the promised length is unknown; "
        f"the file holds {held} frames ({held / RATE:.3f} s)"
    )


# ---------------------------------------------------------------------------------------------
# The command line: a streamed WAV is separated, a cut W64 fails alone with one line.


def test_infer_separates_a_streamed_wav_and_refuses_a_cut_w64(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "model.ckpt"
    save_model(conv_tasnet_demo(num_repeats=1, num_layers=2), ckpt, {"sample_rate": RATE})
    streamed = streamed_wav(tmp_path / "streamed.wav", 0xFFFFFFFF, 0xFFFFFFFF)
    short = cut(write(tmp_path / "speech.w64", format="W64"))
    out = tmp_path / "out"
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(out), str(streamed), str(short)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("audiosep: error:")]
    assert lines == [f"audiosep: error: {short}: {refusal(short)}"]
    assert "truncated: the header promises" in lines[0]
    assert "1 written, 0 skipped, 1 failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["streamed_s1.wav", "streamed_s2.wav"]
