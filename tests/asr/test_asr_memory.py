"""A recogniser's pass memory is estimated before it runs: too large a batch is made smaller, too long segments
shorter, and a model file that fits no segment is refused in one line naming it."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import audiosep.bench.memory as memory
from audiosep.cli import main
from audiosep.nn.features import front_end_bytes_per_sample
from audiosep.transcriber import CUT_SEARCH_SECONDS, Transcriber

RATE = 16000


def _transcriber(asr_ckpt, room_mib: float, monkeypatch: pytest.MonkeyPatch) -> Transcriber:
    monkeypatch.setattr(memory, "memory_room_mib", lambda device: room_mib)
    return Transcriber.from_checkpoint(asr_ckpt, batch_size=8, segment_seconds=30.0)


def test_the_estimate_grows_with_batch_and_length_and_counts_the_front_end(asr_ckpt) -> None:
    transcriber = Transcriber.from_checkpoint(asr_ckpt)
    one = transcriber.pass_memory_mib(1, 1.0)
    assert transcriber.pass_memory_mib(8, 30.0) == pytest.approx(240 * one)
    # QuartzNet's front end (512-point FFT, 64 mels, 160-sample hop): (12 x 257 + 8 x 64) / 160 + 12 bytes a sample
    assert front_end_bytes_per_sample(transcriber.features) == pytest.approx((12 * 257 + 8 * 64) / 160 + 12)
    assert one > front_end_bytes_per_sample(transcriber.features) * RATE / 2**20  # the model's share is counted too


def test_too_large_a_batch_is_made_smaller(asr_ckpt, monkeypatch: pytest.MonkeyPatch) -> None:
    per_segment = Transcriber.from_checkpoint(asr_ckpt).pass_memory_mib(1, 30.0)
    transcriber = _transcriber(asr_ckpt, 3.5 * per_segment, monkeypatch)
    transcriber.fit_to_available_memory()
    assert (transcriber.batch_size, transcriber.segment_seconds) == (3, 30.0)


def test_too_long_a_segment_is_made_shorter_and_cut_so(asr_ckpt, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    per_second = Transcriber.from_checkpoint(asr_ckpt).pass_memory_mib(1, 1.0)
    transcriber = _transcriber(asr_ckpt, 12 * per_second, monkeypatch)
    path = tmp_path / "long.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(25 * RATE), RATE)
    transcriber.transcribe_file(path)
    assert transcriber.batch_size == 1 and transcriber.segment_seconds == pytest.approx(12.0)


def test_a_model_that_fits_no_segment_is_refused_naming_its_file(asr_ckpt, tmp_path, monkeypatch, capsys) -> None:
    per_second = Transcriber.from_checkpoint(asr_ckpt).pass_memory_mib(1, 1.0)
    monkeypatch.setattr(memory, "memory_room_mib", lambda device: (2 * CUT_SEARCH_SECONDS - 1) * per_second)
    wav = tmp_path / "speech.wav"
    sf.write(wav, 0.1 * np.random.default_rng(0).standard_normal(RATE), RATE)
    out = tmp_path / "out.tsv"
    assert main(["transcribe", "--ckpt", str(asr_ckpt), "--out", str(out), str(wav)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"audiosep: error: {asr_ckpt}: the model needs about") and "the shortest" in err[0]
    assert not out.exists()
    with pytest.raises(ValueError, match="MiB can be used on cpu"):
        Transcriber.from_checkpoint(asr_ckpt).transcribe([torch.zeros(RATE)])
