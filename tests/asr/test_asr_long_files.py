"""``audiosep transcribe`` on long files, folders and bad inputs: cuts at quiet moments, spans, outcomes."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from asr_helpers import speechlike

from audiosep.audio_blocks import CheckedAudio
from audiosep.cli import main
from audiosep.transcriber import Transcriber, quiet_cuts

RATE = 16000


def test_quiet_cuts_fall_after_the_quietest_frame_of_each_search_window() -> None:
    energies = torch.ones(25)
    energies[7] = energies[16] = 0.0
    assert quiet_cuts(energies, max_frames=10, search_frames=4) == [0, 8, 17, 25]
    assert quiet_cuts(torch.ones(10), 10, 4) == [0, 10]
    assert quiet_cuts(torch.ones(21), 10, 4) == [0, 7, 14, 21]  # ties: the earliest frame of the window
    with pytest.raises(ValueError):
        quiet_cuts(energies, 10, 11)


def long_recording(seconds_a: float, pause: float, seconds_b: float) -> np.ndarray:
    """Two speech-like stretches with a silent pause between them, at 16 kHz."""
    a = speechlike(int(seconds_a * RATE), RATE, seed=1)
    b = speechlike(int(seconds_b * RATE), RATE, seed=2)
    return np.concatenate([a, np.zeros(int(pause * RATE), dtype=a.dtype), b])


def test_a_long_file_is_cut_in_its_pause_and_read_in_spans(asr_ckpt, tmp_path, monkeypatch) -> None:
    recording = long_recording(7.0, 1.0, 6.0)  # 14 s; 10 s segments with a 5 s search find the pause
    path = tmp_path / "long.wav"
    sf.write(path, recording, RATE, subtype="FLOAT")
    transcriber = Transcriber.from_checkpoint(asr_ckpt, segment_seconds=10)
    spans: list[int] = []
    real_read = CheckedAudio.read

    def recording_read(self, start, stop):
        data = real_read(self, start, stop)
        spans.append(data.shape[-1])
        return data

    monkeypatch.setattr(CheckedAudio, "read", recording_read)
    with CheckedAudio(path) as audio:
        segments = transcriber.segments(audio)
    assert [s.shape[-1] for s in segments][0] in range(7 * RATE, 8 * RATE + 1)  # the cut is inside the pause
    assert sum(s.shape[-1] for s in segments) == recording.shape[0]
    torch.testing.assert_close(torch.cat(segments), torch.from_numpy(recording), atol=0, rtol=0)
    assert max(spans) <= 10 * RATE  # never the whole 14 s at once
    pieces = transcriber.transcribe(segments)
    assert transcriber.transcribe_file(path) == " ".join(p for p in pieces if p)


def test_transcribe_takes_folders_and_reports_each_bad_file(asr_ckpt, tmp_path, capsys) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "a.wav", speechlike(8000, RATE, seed=3), RATE)
    sf.write(folder / "sub" / "b.flac", speechlike(6000, RATE, seed=4), RATE)
    sf.write(folder / "silent.wav", np.zeros(4000, dtype=np.float32), RATE)
    nan = speechlike(4000, RATE, seed=5).astype(np.float32)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    truncated = folder / "cut.wav"
    sf.write(truncated, speechlike(8000, RATE, seed=6), RATE)
    truncated.write_bytes(truncated.read_bytes()[:-4000])
    out = tmp_path / "t.tsv"
    assert main(["transcribe", "--ckpt", str(asr_ckpt), "--out", str(out), "--no-progress", str(folder)]) == 1
    stderr = capsys.readouterr().err.splitlines()
    errors = sorted(line for line in stderr if line.startswith("audiosep: error:"))
    assert len(errors) == 2 and "cut.wav: truncated" in errors[0] and "nan.wav: non-finite" in errors[1]
    assert any("silent.wav: all samples are zero" in line for line in stderr)
    assert stderr[-1] == "audiosep: 3 transcribed, 0 skipped, 2 failed"
    rows = dict(line.split("\t") for line in out.read_text().splitlines())
    assert sorted(rows) == sorted(str(folder / n) for n in ("a.wav", "silent.wav", "sub/b.flac"))
    assert rows[str(folder / "silent.wav")] == ""


def test_transcribe_never_writes_its_transcripts_over_an_input(asr_ckpt, tmp_path, capsys) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, speechlike(4000, RATE, seed=7), RATE)
    before = wav.read_bytes()
    assert main(["transcribe", "--ckpt", str(asr_ckpt), "--out", str(wav), str(wav)]) == 1
    assert "is one of the inputs" in capsys.readouterr().err and wav.read_bytes() == before


@pytest.mark.parametrize("seconds", ["nan", "inf", "1"])
def test_a_segment_length_that_cannot_work_is_one_error_line(asr_ckpt, tmp_path, capsys, seconds: str) -> None:
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(RATE, dtype=np.float32), RATE)
    assert main(["transcribe", "--ckpt", str(asr_ckpt), "--segment-seconds", seconds, str(path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    # the option, not the checkpoint, is named as the problem (it read "model.pt: segment_seconds ...": reviewer)
    assert len(error) == 1 and error[0].startswith("audiosep: error: --segment-seconds must be finite and at least")


def test_a_tail_of_a_few_samples_joins_the_segment_before(asr_ckpt, tmp_path) -> None:
    """A 10 s + 1 sample file in 10 s segments, quietest just before 10 s, ended in a 1-sample segment, which was
    transcribed (a stray word)."""
    recording = speechlike(10 * RATE + 1, RATE, seed=8)
    recording[10 * RATE - RATE // 10 : 10 * RATE] = 0.0  # the cut search finds its quietest frame at the very end
    sf.write(tmp_path / "long.wav", recording, RATE, subtype="FLOAT")
    transcriber = Transcriber.from_checkpoint(asr_ckpt, segment_seconds=10)
    with CheckedAudio(tmp_path / "long.wav") as audio:
        lengths = [s.shape[-1] for s in transcriber.segments(audio)]
    assert sum(lengths) == recording.shape[0] and min(lengths) >= RATE


def test_transcripts_have_single_spaces_and_no_spaces_at_the_ends(asr_ckpt, monkeypatch) -> None:
    """The greedy CTC output " hi  there " was printed and written as it was."""
    transcriber = Transcriber.from_checkpoint(asr_ckpt)
    monkeypatch.setattr(transcriber.tokenizer, "decode", lambda ids: " hi  there ")
    assert transcriber.transcribe([torch.zeros(RATE)]) == ["hi there"]


def test_channels_that_cancel_out_are_silence(asr_ckpt, tmp_path, capsys) -> None:
    """A stereo file of x and -x mixes down to zeros: it got a garbage transcript and no warning."""
    tone = speechlike(8000, RATE, seed=9)
    sf.write(tmp_path / "cancel.wav", np.stack([tone, -tone], axis=1), RATE, subtype="FLOAT")
    assert main(["transcribe", "--ckpt", str(asr_ckpt), "--no-progress", str(tmp_path / "cancel.wav")]) == 0
    captured = capsys.readouterr()
    assert "cancel.wav: its 2 channels cancel in the mono mixdown (silent: one of opposite polarity?)" in captured.err
    assert captured.out.endswith("cancel.wav\t\n")  # an empty transcript, not the model's guess on silence
