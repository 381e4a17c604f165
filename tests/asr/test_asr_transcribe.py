"""``Transcriber`` and ``audiosep transcribe``: any rate, mono mixdown, batch invariance, per-file errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from asr_helpers import TINY_BLOCKS, speechlike

from audiosep.audio_blocks import AudioError
from audiosep.checkpoint import save_model
from audiosep.cli import main
from audiosep.data.audio import resample
from audiosep.models.quartznet import QuartzNet
from audiosep.transcriber import NonFiniteOutputError, Transcriber


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """A 16 kHz source written as an 8 kHz wav, a 44.1 kHz stereo flac and a 16 kHz wav."""
    root = tmp_path_factory.mktemp("audio")
    source = torch.from_numpy(speechlike(8000, 16000, seed=5))
    other = speechlike(6400, 16000, seed=6)
    sf.write(root / "a8k.wav", resample(source, 16000, 8000).numpy(), 8000)
    stereo = resample(source, 16000, 44100).numpy()
    sf.write(root / "b44k.flac", np.stack([stereo, 0.5 * stereo], axis=1), 44100)
    sf.write(root / "c16k.wav", other, 16000)
    return [root / "a8k.wav", root / "b44k.flac", root / "c16k.wav"]


def test_prepare_mixes_down_and_resamples(asr_ckpt):
    transcriber = Transcriber.from_checkpoint(asr_ckpt)
    stereo = torch.randn(2, 44100)
    mono = transcriber.prepare(stereo, 44100)
    torch.testing.assert_close(mono, resample(stereo.mean(0), 44100, 16000))
    assert mono.shape == (16000,)


@pytest.mark.parametrize(
    ("waveform", "rate", "message"),
    [
        (torch.zeros(16000, 1), 16000, r"must be \[C, T\], got shape \(16000, 1\): more channels than samples"),
        (torch.zeros(16000, dtype=torch.int16), 16000, "must be a float tensor in \\[-1, 1\\], got torch.int16"),
        (np.zeros(16000, dtype=np.float32), 16000, "got ndarray"),
        (torch.zeros(16000), 0, "sample rate 0: a whole number of Hz from 1"),
        (torch.zeros(16000), "16000", "sample rate '16000'"),
        (torch.full((16000,), 1e6), 16000, "16000 sample\\(s\\) beyond \\+-10000"),
        (torch.full((16000,), float("nan")), 16000, "16000 non-finite sample"),
        (torch.zeros(5), 16000, "too short: 5 samples at 16000 Hz"),
        (torch.zeros(44101), 44101, "needs a \\d+ MiB filter"),
    ],
)
def test_prepare_refuses_what_it_cannot_transcribe_with_one_clear_error(asr_ckpt, waveform, rate, message):
    """``[T, C]`` from soundfile was averaged over time into one sample and transcribed, int16 heard at 32768 times
    its level (reviewer): the same contract as ``Separator.separate``."""
    with pytest.raises(AudioError, match=message):
        Transcriber.from_checkpoint(asr_ckpt).prepare(waveform, rate)


@pytest.mark.parametrize(("waveform", "message"), [(torch.zeros(2, 16000), r"waveform 0: a non-empty mono float \[N\]"),
                                                    (torch.zeros(16000, dtype=torch.int16), "got torch.int16"),
                                                    (torch.zeros(0), r"got torch.float32 \(0,\)"),
                                                    (torch.full((16000,), 1e6), "beyond \\+-20000")])  # fmt: skip
def test_transcribe_refuses_waveforms_that_are_not_prepared(asr_ckpt, waveform, message):
    with pytest.raises(AudioError, match=message):
        Transcriber.from_checkpoint(asr_ckpt).transcribe([waveform])


def test_a_prepared_waveform_that_overshoots_in_resampling_is_transcribed(asr_ckpt):
    """A 9999-amplitude square wave passes prepare's check and overshoots to ~1.2e4 when resampled: transcribe
    refused it (reviewer); it allows resampling's overshoot."""
    transcriber = Transcriber.from_checkpoint(asr_ckpt)
    square = 9999.0 * torch.sign(torch.sin(torch.arange(44100) * 2 * torch.pi * 440 / 44100))
    prepared = transcriber.prepare(square, 44100)
    assert float(prepared.abs().max()) > 1e4
    assert len(transcriber.transcribe([prepared])) == 1


def test_prepare_warns_where_channels_cancel(asr_ckpt, caplog):
    voice = torch.from_numpy(speechlike(8000, 16000, seed=5))
    with caplog.at_level("WARNING", logger="audiosep.transcriber"):
        Transcriber.from_checkpoint(asr_ckpt).prepare(torch.stack([voice, -voice]), 16000, name="inverted")
    assert "inverted: its 2 channels cancel in the mono mixdown (silent" in caplog.text


def test_cli_warns_about_a_file_whose_channels_cancel(asr_ckpt, tmp_path, capsys):
    """It was transcribed as silence without a word, where ``infer`` warns (reviewer)."""
    voice = speechlike(8000, 16000, seed=5)
    sf.write(tmp_path / "inverted.wav", np.stack([voice, -voice], axis=1), 16000, subtype="FLOAT")
    assert main(["transcribe", "--ckpt", str(asr_ckpt), str(tmp_path / "inverted.wav")]) == 0
    assert "inverted.wav: its 2 channels cancel in the mono mixdown" in capsys.readouterr().err


def test_batch_of_one_equals_batch_of_four(asr_ckpt):
    transcriber = Transcriber.from_checkpoint(asr_ckpt, batch_size=4)
    waves = [torch.from_numpy(speechlike(n, 16000, seed=n)) for n in (4000, 9000, 6100, 2500)]
    batched_lp = transcriber.log_probs(waves)
    batched_text = transcriber.transcribe(waves)
    for wave, lp, text in zip(waves, batched_lp, batched_text, strict=True):
        alone = transcriber.log_probs([wave])[0]
        assert alone.shape == lp.shape
        torch.testing.assert_close(lp, alone, atol=1e-4, rtol=1e-4)
        assert transcriber.transcribe([wave]) == [text]
    assert any(batched_text)


def test_cli_transcribes_wav_and_flac_at_8k_and_44k(asr_ckpt, audio_files, capsys):
    assert main(["transcribe", "--ckpt", str(asr_ckpt), *map(str, audio_files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == list(map(str, audio_files))
    transcriber = Transcriber.from_checkpoint(asr_ckpt)
    assert [line.split("\t", 1)[1] for line in lines] == [transcriber.transcribe_file(f) for f in audio_files]


def test_a_model_file_whose_front_end_would_exhaust_memory_is_refused_on_load(tmp_path, audio_files, capsys):
    """Its 1-sample hop and 65536-point FFT tried 4 GB for 1 s of audio, then a traceback (reviewer)."""
    from audiosep.asr_metadata import asr_metadata
    from audiosep.data.tokenizer import CharTokenizer
    from audiosep.nn.features import LogMelFeatures

    model = QuartzNet(64, 29, TINY_BLOCKS)
    metadata = asr_metadata(LogMelFeatures(), CharTokenizer().vocabulary)
    metadata["features"] |= {"window_size": 1 / 16000, "window_stride": 1 / 16000, "n_fft": 1 << 16}
    save_model(model, tmp_path / "bomb.pt", metadata)
    assert main(["transcribe", "--ckpt", str(tmp_path / "bomb.pt"), str(audio_files[0])]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bomb.pt: bad ASR metadata" in err and "values per input sample" in err


def test_cli_reports_bad_files_and_still_writes_the_others(asr_ckpt, audio_files, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    odd_rate = tmp_path / "odd_rate.wav"  # a rate the resampler refuses (a 1 GiB filter): this file only
    sf.write(odd_rate, np.zeros(1600, dtype=np.float32) + 0.1, 15999)
    out = tmp_path / "out" / "transcripts.tsv"
    args = ["transcribe", "--ckpt", str(asr_ckpt), "--beam-size", "4", "--out", str(out)]
    code = main([*args, str(audio_files[0]), str(broken), str(tmp_path / "missing.wav"), str(odd_rate),
                 str(audio_files[2])])  # fmt: skip
    assert code == 1
    stderr = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in stderr if line.startswith("audiosep: error: ")]
    assert len(errors) == 3 and stderr[-1] == "audiosep: 2 transcribed, 0 skipped, 3 failed"
    assert any("broken.wav" in line for line in errors) and any("missing.wav: no such file" in line for line in errors)
    assert any(f"{odd_rate}: resampling 15999 Hz" in line for line in errors)
    names = [line.split("\t")[0] for line in out.read_text().splitlines()]
    assert names == [str(audio_files[0]), str(audio_files[2])]


def test_a_file_the_model_cannot_run_fails_alone_and_the_others_are_still_written(asr_ckpt, tmp_path, monkeypatch,
                                                                                  capsys):  # fmt: skip
    """An allocation failure in one file ended the run with a traceback and no --out at all (reviewer)."""
    files = [tmp_path / "short.wav", tmp_path / "long.wav", tmp_path / "other.wav"]
    for path, seconds in zip(files, (0.5, 2.0, 0.5), strict=True):
        sf.write(path, speechlike(int(16000 * seconds), 16000, seed=1), 16000)
    real = Transcriber.transcribe_segmented

    def allocation_fails_past_a_second(self, batch):  # noqa: ANN001, ANN202
        if any(sum(segment.numel() for segment in parts) > self.sample_rate for parts in batch):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory\nmore")
        return real(self, batch)

    monkeypatch.setattr(Transcriber, "transcribe_segmented", allocation_fails_past_a_second)
    out = tmp_path / "transcripts.tsv"
    assert main(["transcribe", "--ckpt", str(asr_ckpt), "--out", str(out), *map(str, files)]) == 1
    stderr = capsys.readouterr().err.splitlines()
    errors = [line for line in stderr if line.startswith("audiosep: error: ")]
    assert errors == [f"audiosep: error: {files[1]}: transcription failed (RuntimeError: [enforce fail at "
                      "alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory more)"]  # fmt: skip
    assert stderr[-1] == "audiosep: 2 transcribed, 0 skipped, 1 failed"
    assert [line.split("\t")[0] for line in out.read_text().splitlines()] == [str(files[0]), str(files[2])]


def test_cli_rejects_non_asr_checkpoint(tmp_path, audio_files, capsys):
    save_model(QuartzNet(64, 29, TINY_BLOCKS), tmp_path / "bare.pt", {"sample_rate": 16000})
    assert main(["transcribe", "--ckpt", str(tmp_path / "bare.pt"), str(audio_files[0])]) == 1
    assert "not an ASR checkpoint" in capsys.readouterr().err


def test_a_tab_or_newline_in_a_file_name_cannot_forge_a_transcript_line(asr_ckpt, audio_files, tmp_path, capsys):
    forged = tmp_path / "x\tforged transcript\nother.wav"
    forged.write_bytes(audio_files[2].read_bytes())
    assert main(["transcribe", "--ckpt", str(asr_ckpt), str(forged)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].count("\t") == 1
    assert lines[0].split("\t")[0] == str(forged).replace("\t", "\\t").replace("\n", "\\n")


def test_a_file_shorter_than_one_analysis_window_is_refused_not_transcribed(asr_ckpt, audio_files, tmp_path, capsys):
    tiny = tmp_path / "tiny.wav"
    sf.write(tiny, np.full(10, 0.1), 16000)
    assert main(["transcribe", "--ckpt", str(asr_ckpt), str(tiny), str(audio_files[2])]) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(audio_files[2])]
    assert f"audiosep: error: {tiny}: too short: 10 samples at 16000 Hz (0.6 ms)" in captured.err
    with pytest.raises(AudioError, match="the recogniser needs at least one"):
        Transcriber.from_checkpoint(asr_ckpt).transcribe_file(tiny)


def test_non_finite_model_output_is_an_error_not_a_transcript(asr_ckpt):
    """CTC decoding of NaN picks labels anyway: an empty or garbage transcript, printed as a success."""
    transcriber = Transcriber.from_checkpoint(asr_ckpt)
    with torch.no_grad():
        transcriber.model.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match=r"non-finite output \(NaN/Inf\) for 1 of 1 utterance"):
        transcriber.transcribe([torch.from_numpy(speechlike(4000, 16000, seed=1))])


def test_cli_reports_the_file_whose_model_output_is_not_finite_and_transcribes_the_others(
    asr_ckpt, audio_files, monkeypatch, capsys
):
    """Files are batched together; the one whose output is NaN is named, the others still get transcripts."""
    log_probs = Transcriber.log_probs
    poisoned = 6400  # samples of c16k.wav, the only file of that length

    def nan_for_one_file(self, waveforms):
        outputs = log_probs(self, waveforms)
        return [torch.full_like(o, float("nan")) if w.shape[-1] == poisoned else o for w, o in zip(waveforms, outputs, strict=True)]

    monkeypatch.setattr(Transcriber, "log_probs", nan_for_one_file)
    assert main(["transcribe", "--ckpt", str(asr_ckpt), *map(str, audio_files)]) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == list(map(str, audio_files[:2]))
    errors = [line for line in captured.err.splitlines() if line.startswith("audiosep: error: ")]
    assert errors == [f"audiosep: error: {audio_files[2]}: the model produced non-finite output (NaN/Inf) "
                      "for 1 of 1 utterance(s); no transcript"]  # fmt: skip
    assert captured.err.splitlines()[-1] == "audiosep: 2 transcribed, 0 skipped, 1 failed"


def test_a_vocabulary_of_control_characters_cannot_forge_output_lines(tmp_path, capsys):
    """A checkpoint whose labels are a newline and a tab wrote 4 lines for 2 inputs (reviewer): the text is
    escaped as the path is, one line per input."""
    from audiosep.asr_metadata import asr_metadata
    from audiosep.nn.features import LogMelFeatures

    vocabulary = ["\n", "\t", "x"]
    model = QuartzNet(64, len(vocabulary) + 1, TINY_BLOCKS)
    with torch.no_grad():  # every frame says "\n"
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([10.0, 0, 0, 0]))
    save_model(model, tmp_path / "evil.pt", asr_metadata(LogMelFeatures(), vocabulary))
    files = [tmp_path / name for name in ("one.wav", "two.wav")]
    for path in files:
        sf.write(path, speechlike(8000, 16000, 3), 16000)
    assert main(["transcribe", "--ckpt", str(tmp_path / "evil.pt"), "--no-progress", *map(str, files)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{path}\t\\n" for path in files]


def test_transcripts_keep_their_letters_and_escape_only_what_breaks_a_line():
    """Escaping every non-printable character wrote Persian's zero-width non-joiner as a literal \\u200c
    (reviewer); line breaks and tabs are escaped, a backslash doubled so the escapes read back."""
    from audiosep.commands.inputs import one_line_text

    assert one_line_text("می\u200cخواهم café\u00a0ok") == "می\u200cخواهم café\u00a0ok"
    assert one_line_text("a\tb\nc\u2028d\\t") == "a\\tb\\nc\\u2028d\\\\t"


@pytest.mark.parametrize("case", ["the checkpoint", "a pipe", "a symbolic link", "below a file", "a folder/", "the list"])
def test_an_out_that_would_destroy_a_file_or_cannot_be_written_is_refused_before_any_work(
    asr_ckpt, audio_files, tmp_path, capsys, case
):
    """``--out model.ckpt`` replaced the model with one line of text, a FIFO or link became a regular file, and a
    --out below a file was found after every file was transcribed: all with exit 0 but the last (reviewers)."""
    import os
    import shutil
    from unittest import mock

    ckpt = tmp_path / "model.ckpt"
    shutil.copy(asr_ckpt, ckpt)
    (tmp_path / "notes.txt").write_text("notes")
    if case == "a pipe":
        os.mkfifo(tmp_path / "out.fifo")
    if case == "a symbolic link":
        (tmp_path / "out.link").symlink_to(tmp_path / "notes.txt")
    (tmp_path / "inputs.txt").write_text(f"{audio_files[0]}\n")
    out = {"the checkpoint": ckpt, "a pipe": tmp_path / "out.fifo", "a symbolic link": tmp_path / "out.link",
           "below a file": tmp_path / "notes.txt" / "out.tsv", "a folder/": f"{tmp_path}/texts/",
           "the list": tmp_path / "inputs.txt"}[case]  # fmt: skip
    before = ckpt.read_bytes()
    with mock.patch("audiosep.commands.transcribe._load_transcriber", side_effect=AssertionError("work began")):
        assert main(["transcribe", "--ckpt", str(ckpt), "--out", str(out), f"@{tmp_path / 'inputs.txt'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"audiosep: error: --out {out}") and "\n" not in err
    assert ckpt.read_bytes() == before and (tmp_path / "notes.txt").read_text() == "notes"
    assert (tmp_path / "inputs.txt").read_text() == f"{audio_files[0]}\n"
    assert not (tmp_path / "texts").exists()


def test_transcripts_that_cannot_be_written_go_to_stdout(asr_ckpt, audio_files, tmp_path, capsys, monkeypatch):
    """A full disk at the final write lost every transcript of the run."""

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("audiosep.io.atomic_write_text", full_disk)
    out = tmp_path / "out.tsv"
    assert main(["transcribe", "--ckpt", str(asr_ckpt), "--out", str(out), *map(str, audio_files[:2])]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("\t") == 2 and str(audio_files[0]) in captured.out
    assert f"--out {out}: cannot write it (No space left on device); the transcripts went to stdout" in captured.err
    assert not out.exists()
