"""``audiosep infer`` on real-world inputs: one outcome per input, no silent damage, no collisions."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.checkpoint import save_model
from audiosep.cli import main
from audiosep.inference import SeparationError, Separator, read_mixture
from audiosep.models import conv_tasnet_demo

RATE = 8000
WINDOW = 32  # conv_tasnet_demo's encoder kernel


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return conv_tasnet_demo(num_repeats=1, num_layers=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.ckpt"
    save_model(tiny_model(), path, {"sample_rate": RATE})
    return path


def speech(seed: int, frames: int = 2400, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / RATE
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t)[:, None]
    return (tone + 0.05 * rng.standard_normal((frames, channels))).astype(np.float32).squeeze()


def write(
    path: Path, seed: int = 0, frames: int = 2400, rate: int = RATE, channels: int = 1, **kwargs
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, speech(seed, frames, channels), rate, **kwargs)
    return path


def infer(ckpt: Path, *args: object) -> int:
    return main(["infer", "--ckpt", str(ckpt), *(str(a) for a in args)])


def errors(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    captured = capsys.readouterr()
    return captured.out, [line for line in captured.err.splitlines() if line.startswith("audiosep: error:")]


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Each failure kind: one error line naming the file, exit 1, the good files still written.


def make_nan(path: Path) -> None:
    data = speech(1)
    data[100] = np.nan
    sf.write(path, data, RATE, subtype="FLOAT")


def make_inf(path: Path) -> None:
    data = speech(1)
    data[-1] = -np.inf
    sf.write(path, data, RATE, subtype="DOUBLE")


def make_huge_sample(path: Path) -> None:
    """One corrupt 1e30 sample in a float file: the peak limiter scaled the output to silence, exit 0 (reviewer)."""
    data = speech(1)
    data[500] = 1e30
    sf.write(path, data, RATE, subtype="FLOAT")


def make_truncated_wav(path: Path) -> None:
    write(path, frames=4000)
    path.write_bytes(path.read_bytes()[:-1000])  # the header still says 4000 frames


def make_truncated_flac(path: Path) -> None:
    write(path, frames=40000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def make_corrupt(path: Path) -> None:
    write(path)
    data = bytearray(path.read_bytes())
    data[30:40] = b"\xff" * 10  # breaks the fmt chunk
    path.write_bytes(bytes(data))


def make_empty(path: Path) -> None:
    path.write_bytes(b"")


def make_no_frames(path: Path) -> None:
    sf.write(path, np.zeros(0, np.float32), RATE)


def make_too_short(path: Path) -> None:
    write(path, frames=WINDOW - 1)


def make_unknown_format(path: Path) -> None:
    path.write_text("these are meeting notes, not audio\n" * 20)


def make_empty_folder(path: Path) -> None:
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "readme.txt").write_text("no audio here")


BAD_INPUTS = {
    "nan.wav": (make_nan, "non-finite sample"),
    "inf.wav": (make_inf, "non-finite sample"),
    "huge.wav": (make_huge_sample, "sample(s) beyond +-10000 (+80 dBFS; full scale is 1), first at"),
    "cut.wav": (make_truncated_wav, "truncated: the header promises 4000 frames"),
    "cut.flac": (make_truncated_flac, "truncated"),
    "corrupt.wav": (make_corrupt, "cannot read audio"),
    "empty.wav": (make_empty, "empty file"),
    "noframes.wav": (make_no_frames, "no audio samples"),
    "short.wav": (make_too_short, "too short"),
    "notes.xyz": (make_unknown_format, "unknown or unsupported format"),
    "folder": (make_empty_folder, "folder holds no files"),
    "missing.wav": (lambda path: None, "no such file"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_fails_alone(ckpt: Path, tmp_path: Path, capsys, name: str) -> None:
    make, reason = BAD_INPUTS[name]
    first, last = write(tmp_path / "first.wav", seed=1), write(tmp_path / "last.wav", seed=2)
    bad = tmp_path / name
    make(bad)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, first, bad, last) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("audiosep: error:")]
    assert lines == [line for line in lines if line.startswith(f"audiosep: error: {bad}: ")]
    assert len(lines) == 1 and reason in lines[0], captured.err
    assert "audiosep: 2 written, 0 skipped, 1 failed" in captured.err
    assert all_files(out) == ["first_s1.wav", "first_s2.wav", "last_s1.wav", "last_s2.wav"]


def test_truncated_wav_reads_as_short_in_soundfile_but_is_refused(tmp_path: Path) -> None:
    """libsndfile shortens the data chunk silently: the check must not rely on ``sf.info`` alone."""
    path = tmp_path / "cut.wav"
    make_truncated_wav(path)
    assert sf.info(path).frames == sf.read(path)[0].shape[0]  # soundfile sees nothing wrong
    with pytest.raises(SeparationError, match="truncated"):
        read_mixture(path)


def test_non_finite_model_output_is_an_error(tmp_path: Path, capsys) -> None:
    model = tiny_model()
    with torch.no_grad():  # finite weights (load_model refuses NaN ones) whose output overflows to inf
        model.decoder.weight.fill_(3e38)
    broken = tmp_path / "nan_model.ckpt"
    save_model(model, broken, {"sample_rate": RATE})
    wav = write(tmp_path / "x.wav")
    assert infer(broken, "--out-dir", tmp_path / "out", wav) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "non-finite output" in lines[0] and str(wav) in lines[0]
    assert not (tmp_path / "out").exists() or all_files(tmp_path / "out") == []


def test_silent_file_warns_and_writes_silent_outputs(ckpt: Path, tmp_path: Path, capsys) -> None:
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(2400, np.float32), RATE)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, wav) == 0
    err = capsys.readouterr().err
    assert f"audiosep: warning: {wav}: all samples are zero" in err
    assert "1 written, 0 skipped, 0 failed" in err
    for k in (1, 2):
        data, rate = sf.read(out / f"silence_s{k}.wav")
        assert rate == RATE and data.shape == (2400,) and not data.any()


def test_control_characters_in_a_file_name_stay_on_one_line(ckpt: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "evil\nname.wav"
    bad.write_bytes(b"")
    assert infer(ckpt, "--out-dir", tmp_path / "out", bad) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "evil\\nname.wav" in lines[0]


# ---------------------------------------------------------------------------------------------
# Output names: no collisions, never an input overwritten, skip vs --overwrite.


def test_same_name_in_two_folders_both_written(ckpt: Path, tmp_path: Path) -> None:
    a, b = write(tmp_path / "in" / "a" / "x.wav", seed=1), write(tmp_path / "in" / "b" / "x.wav", seed=2)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, a, b) == 0
    assert all_files(out) == ["a/x_s1.wav", "a/x_s2.wav", "b/x_s1.wav", "b/x_s2.wav"]
    assert not np.array_equal(sf.read(out / "a" / "x_s1.wav")[0], sf.read(out / "b" / "x_s1.wav")[0])


def test_same_stem_different_suffix_is_refused_before_writing(ckpt: Path, tmp_path: Path, capsys) -> None:
    wav, flac = write(tmp_path / "x.wav", seed=1), write(tmp_path / "x.flac", seed=2)
    other = write(tmp_path / "y.wav", seed=3)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, wav, flac, other) == 1
    _, lines = errors(capsys)
    assert len(lines) == 2 and all("collide" in line for line in lines)
    assert all_files(out) == ["y_s1.wav", "y_s2.wav"]


def test_existing_outputs_are_skipped_unless_overwrite(ckpt: Path, tmp_path: Path, capsys) -> None:
    wav = write(tmp_path / "x.wav")
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, wav) == 0
    written = {k: ((stat := (out / f"x_s{k}.wav").stat()).st_ino, stat.st_mtime_ns) for k in (1, 2)}
    capsys.readouterr()
    assert infer(ckpt, "--out-dir", out, wav) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.out and "0 written, 1 skipped, 0 failed" in captured.err
    assert {k: ((stat := (out / f"x_s{k}.wav").stat()).st_ino, stat.st_mtime_ns) for k in (1, 2)} == written
    assert infer(ckpt, "--out-dir", out, "--overwrite", wav) == 0
    assert "1 written, 0 skipped, 0 failed" in capsys.readouterr().err
    assert sf.info(out / "x_s1.wav").frames == 2400


def test_outputs_not_written_from_this_input_are_never_skipped(ckpt: Path, tmp_path: Path, capsys) -> None:
    """Same stem, same --out-dir, separate runs: the second input must not be reported done."""
    first, second = write(tmp_path / "a" / "mix.wav", seed=1), write(tmp_path / "b" / "mix.wav", seed=2, frames=2000)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, first) == 0
    before = (out / "mix_s1.wav").read_bytes()
    capsys.readouterr()
    assert infer(ckpt, "--out-dir", out, second) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and f"{second}: " in lines[0] and "was not written from this input" in lines[0]
    assert (out / "mix_s1.wav").read_bytes() == before
    for k in (1, 2):  # a user's files that only have the outputs' names
        (out / f"mix_s{k}.wav").write_bytes(b"placeholder")
    assert infer(ckpt, "--out-dir", out, first) == 1
    assert "was not written from this input" in errors(capsys)[1][0]
    assert infer(ckpt, "--out-dir", out, "--overwrite", second) == 0
    assert sf.info(out / "mix_s1.wav").frames == 2000


def test_partial_existing_outputs_are_an_error_without_overwrite(ckpt: Path, tmp_path: Path, capsys) -> None:
    wav = write(tmp_path / "x.wav")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_s1.wav").write_bytes(b"someone else's file")
    assert infer(ckpt, "--out-dir", out, wav) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "x_s1.wav exists and was not written from this input" in lines[0]
    assert all_files(out) == ["x_s1.wav"] and (out / "x_s1.wav").read_bytes() == b"someone else's file"


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_input_in_the_out_dir_is_never_overwritten(
    ckpt: Path, tmp_path: Path, capsys, overwrite: bool
) -> None:
    mixture, victim = write(tmp_path / "x.wav", seed=1), write(tmp_path / "x_s1.wav", seed=2)
    before = victim.read_bytes()
    flags = ["--overwrite"] if overwrite else []
    assert infer(ckpt, "--out-dir", tmp_path, *flags, mixture, victim) == 1
    _, lines = errors(capsys)
    assert (
        len(lines) == 1
        and lines[0].startswith(f"audiosep: error: {mixture}: ")
        and "overwrite the input" in lines[0]
    )
    assert victim.read_bytes() == before
    assert (tmp_path / "x_s1_s1.wav").is_file()  # the other input is separated as usual
    assert not (tmp_path / "x_s2.wav").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_recording_named_like_an_output_in_the_input_folder_is_an_input_not_an_output(
    ckpt: Path, tmp_path: Path, capsys, overwrite: bool
) -> None:
    """Only a file whose comment names its source is taken for an earlier output, never by its name."""
    folder = tmp_path / "rec"
    mixture, recording = write(folder / "w.wav", seed=1), write(folder / "w_s1.wav", seed=2)
    before = recording.read_bytes()
    flags = ["--overwrite"] if overwrite else []
    assert infer(ckpt, "--out-dir", folder, *flags, folder) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"audiosep: error: {mixture}: ") and "overwrite the input" in lines[0]
    assert recording.read_bytes() == before
    assert (folder / "w_s1_s1.wav").is_file()  # the recording gets its outcome: separated


def test_outputs_of_an_input_changed_since_are_stale_not_new_inputs(ckpt: Path, tmp_path: Path, capsys) -> None:
    """Into the input folder: a touched input's old outputs are redone with --overwrite, never separated."""
    folder = tmp_path / "rec"
    mixture = write(folder / "x.wav")
    assert infer(ckpt, "--out-dir", folder, folder) == 0
    os.utime(mixture, ns=(mixture.stat().st_atime_ns, mixture.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    assert infer(ckpt, "--out-dir", folder, folder) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "was not written from this input" in lines[0]
    assert infer(ckpt, "--out-dir", folder, "--overwrite", folder) == 0
    assert all_files(folder) == ["x.wav", "x_s1.wav", "x_s2.wav"]


def test_folder_run_twice_into_itself_does_not_separate_its_outputs(
    ckpt: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "rec"
    write(folder / "x.wav")
    assert infer(ckpt, "--out-dir", folder, folder) == 0
    assert infer(ckpt, "--out-dir", folder, folder) == 0
    captured = capsys.readouterr()
    assert "0 written, 3 skipped, 0 failed" in captured.err  # x.wav's outputs exist; they are its outputs
    assert f"{folder / 'x_s1.wav'}: skipped, an output of {folder / 'x.wav'}" in captured.out
    assert all_files(folder) == ["x.wav", "x_s1.wav", "x_s2.wav"]
    # the same when the shell expands the folder's files (`audiosep infer --out-dir D D/*.wav`)
    assert infer(ckpt, "--out-dir", folder, *sorted(folder.glob("*.wav"))) == 0
    assert "0 written, 3 skipped, 0 failed" in capsys.readouterr().err
    assert all_files(folder) == ["x.wav", "x_s1.wav", "x_s2.wav"]
    other = tmp_path / "other"
    write(other / "y.wav")
    inside = other / "separated"  # an out-dir inside the input folder is not searched
    assert infer(ckpt, "--out-dir", inside, other) == 0
    assert infer(ckpt, "--out-dir", inside, other) == 0
    assert all_files(other) == ["separated/y_s1.wav", "separated/y_s2.wav", "y.wav"]


@pytest.mark.parametrize("change", [("--channel", "1"), ("--keep-model-rate",), ("--dtype", "int8"), ("--ckpt",),
                                    ("--sample-rate",), ("--subtype", "FLOAT")])  # fmt: skip
def test_a_rerun_with_another_model_or_options_does_not_take_old_outputs_for_its_own(
    ckpt: Path, tmp_path: Path, capsys, change: tuple[str, ...]
) -> None:
    mixture = write(tmp_path / "x.wav", rate=16000, channels=2)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, mixture) == 0
    before = (out / "x_s1.wav").read_bytes()
    assert infer(ckpt, "--out-dir", out, mixture) == 0  # the same settings: skipped
    assert "0 written, 1 skipped, 0 failed" in capsys.readouterr().err
    model_file, options = ckpt, list(change)
    if change == ("--ckpt",):  # the same architecture, other weights
        model_file, options = tmp_path / "other.ckpt", []
        model = tiny_model()
        with torch.no_grad():
            next(model.parameters()).mul_(1.5)
        save_model(model, model_file, {"sample_rate": RATE})
    if change == ("--sample-rate",):  # the same weights, recorded for another rate
        model_file, options = tmp_path / "other_rate.ckpt", []
        save_model(tiny_model(), model_file, {"sample_rate": 2 * RATE})
    assert infer(model_file, *options, "--out-dir", out, mixture) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "was separated from this input with another model or other options" in lines[0]
    assert (out / "x_s1.wav").read_bytes() == before  # nothing replaced without --overwrite
    assert infer(model_file, *options, "--out-dir", out, "--overwrite", mixture) == 0
    assert (out / "x_s1.wav").read_bytes() != before


def test_an_input_with_a_very_long_path_is_skipped_on_a_rerun(
    ckpt: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libsndfile drops a comment over ~2045 characters: a long absolute path is named by its digest there
    (files are named relative to a deep working folder: libsndfile refuses long names itself)."""
    from audiosep.inference import COMMENT_PATH_BYTES, written_from

    folder = tmp_path
    while len(str(folder)) <= COMMENT_PATH_BYTES + 600:
        folder = folder / ("d" * 200)
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    write(Path("x.wav"))
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, "x.wav") == 0
    assert written_from(out / "x_s1.wav").startswith("audiosep: separated from sha256:")
    assert infer(ckpt, "--out-dir", out, "x.wav") == 0
    assert "0 written, 1 skipped, 0 failed" in capsys.readouterr().err


def test_a_rerun_that_only_changes_the_chunking_is_skipped(ckpt: Path, tmp_path: Path, capsys) -> None:
    """Chunking moves samples near seams only, and --max-memory picks another chunk on every run."""
    mixture = write(tmp_path / "x.wav")
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, mixture) == 0
    assert infer(ckpt, "--chunk-seconds", "0.1", "--overlap-seconds", "0.02", "--out-dir", out, mixture) == 0
    assert infer(ckpt, "--max-memory", "4000", "--out-dir", out, mixture) == 0
    assert capsys.readouterr().err.count("0 written, 1 skipped, 0 failed") == 2


# ---------------------------------------------------------------------------------------------
# Inputs: folders, --glob, @lists, channels, sample rates, subtypes.


def test_folder_input_recursive_with_glob(ckpt: Path, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write(root / "a" / "one.flac", seed=1)
    write(root / "a" / "deep" / "two.flac", seed=2)
    write(root / "three.wav", seed=3)
    (root / "notes.txt").write_text("not audio")
    write(root / ".hidden" / "four.flac", seed=4)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, "--glob", "*.flac", root) == 0
    assert all_files(out) == ["deep/two_s1.wav", "deep/two_s2.wav", "one_s1.wav", "one_s2.wav"]
    everything = tmp_path / "all"
    assert infer(ckpt, "--out-dir", everything, root) == 0  # default: every audio suffix
    assert all_files(everything) == [
        "a/deep/two_s1.wav", "a/deep/two_s2.wav", "a/one_s1.wav", "a/one_s2.wav", "three_s1.wav", "three_s2.wav"
    ]  # fmt: skip


def test_list_file(ckpt: Path, tmp_path: Path, capsys) -> None:
    write(tmp_path / "data" / "a.wav", seed=1)
    write(tmp_path / "data" / "sub" / "b.flac", seed=2)
    absolute = write(tmp_path / "elsewhere" / "c.wav", seed=3)
    listing = tmp_path / "data" / "list.txt"
    listing.write_text(f"# meeting recordings\na.wav\n\n  sub/b.flac  \n{absolute}\nmissing.wav\n")
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, f"@{listing}") == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "missing.wav: no such file" in lines[0]
    assert all_files(out) == [
        "data/a_s1.wav", "data/a_s2.wav", "data/sub/b_s1.wav", "data/sub/b_s2.wav",
        "elsewhere/c_s1.wav", "elsewhere/c_s2.wav",
    ]  # fmt: skip
    assert infer(ckpt, "--out-dir", out, f"@{tmp_path / 'nope.txt'}") == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "no such list file" in lines[0]


def test_channel_picks_one_channel(ckpt: Path, tmp_path: Path, capsys) -> None:
    stereo = np.stack([speech(1), np.zeros(2400, np.float32), speech(2)], axis=1)  # 3 channels
    wav = tmp_path / "three.wav"
    sf.write(wav, stereo, RATE, subtype="FLOAT")
    mono = tmp_path / "mono" / "three.wav"
    mono.parent.mkdir()
    sf.write(mono, stereo[:, 2], RATE, subtype="FLOAT")
    assert infer(ckpt, "--out-dir", tmp_path / "ch2", "--channel", 2, wav) == 0
    assert infer(ckpt, "--out-dir", tmp_path / "mono_out", mono) == 0
    np.testing.assert_allclose(
        sf.read(tmp_path / "ch2" / "three_s1.wav")[0],
        sf.read(tmp_path / "mono_out" / "three_s1.wav")[0],
        atol=1e-4,
    )
    assert infer(ckpt, "--out-dir", tmp_path / "ch1", "--channel", 1, wav) == 0  # the silent channel
    assert "all samples are zero" in capsys.readouterr().err
    assert infer(ckpt, "--out-dir", tmp_path / "ch3", "--channel", 3, wav) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "channel 3 does not exist: the file has 3 channel(s)" in lines[0]
    assert not (tmp_path / "ch3").exists()
    assert infer(ckpt, "--channel", -1, wav) == 1


def test_any_rate_and_channel_count(ckpt: Path, tmp_path: Path) -> None:
    wav = write(tmp_path / "x.wav", frames=6615, rate=22050, channels=3)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, wav) == 0
    info = sf.info(out / "x_s2.wav")
    assert (info.samplerate, info.frames, info.channels) == (22050, 6615, 1)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_integer_and_float_subtypes(ckpt: Path, tmp_path: Path, subtype: str) -> None:
    reference = write(tmp_path / "ref" / "x.wav", subtype="DOUBLE")
    wav = write(tmp_path / subtype / "x.wav", subtype=subtype)
    assert infer(ckpt, "--out-dir", tmp_path / "out_ref", reference) == 0
    assert infer(ckpt, "--out-dir", tmp_path / "out", wav) == 0
    got, expected = sf.read(tmp_path / "out" / "x_s1.wav")[0], sf.read(tmp_path / "out_ref" / "x_s1.wav")[0]
    assert got.shape == expected.shape == (2400,)
    tolerance = 0.05 if subtype == "PCM_U8" else 2e-3
    np.testing.assert_allclose(got, expected, atol=tolerance)


# ---------------------------------------------------------------------------------------------
# Atomic writes, the inference transform.


def on_second_file_written(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> list[str]:
    """Record the files soundfile writes to (the list returned); ``action()`` runs as the second one is first
    written, before its samples are (a full disk, a kill while the outputs are being written)."""
    real_write = sf.SoundFile.write
    files: list[str] = []

    def write(self, data):
        if self.name not in files:
            files.append(self.name)
            if len(files) == 2:
                action()
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", write)
    return files


def test_failure_writing_the_second_source_leaves_nothing(
    ckpt: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    wav = tmp_path / "in" / "x.wav"
    wav.parent.mkdir()
    sf.write(wav, speech(0), RATE)
    files = on_second_file_written(monkeypatch, disk_full)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, wav) == 1
    assert len(files) == 2 and all(os.fsdecode(name).endswith(".tmp") for name in files)
    _, lines = errors(capsys)
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert all_files(out) == []  # no output, no temp file, no scratch file


def test_sigterm_while_writing_leaves_no_temp_file_and_ends_the_batch(
    ckpt: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """SIGTERM's default action killed the process inside the atomic write and left its ``.tmp`` files."""
    import signal

    folder = tmp_path / "in"
    folder.mkdir()
    for seed, name in enumerate(["a.wav", "b.wav"]):
        sf.write(folder / name, speech(seed), RATE)

    def not_handled(signum, frame):  # without the fix: the test process would die; fail instead
        raise AssertionError("SIGTERM reached the handler outside audiosep's")

    files = on_second_file_written(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.signal(signal.SIGTERM, not_handled)
    out = tmp_path / "out"
    try:
        assert infer(ckpt, "--out-dir", out, folder) == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is not_handled  # the handler is put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "audiosep: terminated" in capsys.readouterr().err
    assert len(files) == 2 and all_files(out) == []  # the second input was not started
    monkeypatch.undo()
    assert infer(ckpt, "--out-dir", out, folder) == 0 and len(all_files(out)) == 4  # lock released


def test_no_optimize_gives_the_same_files(ckpt: Path, tmp_path: Path) -> None:
    wav = write(tmp_path / "x.wav", frames=4000)
    assert infer(ckpt, "--out-dir", tmp_path / "fast", wav) == 0
    assert infer(ckpt, "--out-dir", tmp_path / "plain", "--no-optimize", wav) == 0
    for k in (1, 2):
        fast, plain = (
            sf.read(tmp_path / "fast" / f"x_s{k}.wav")[0],
            sf.read(tmp_path / "plain" / f"x_s{k}.wav")[0],
        )
        assert np.abs(fast).max() > 1e-3
        np.testing.assert_allclose(fast, plain, atol=1e-4)


def test_separator_optimize_keeps_the_plain_model(ckpt: Path) -> None:
    plain = Separator.from_checkpoint(ckpt, optimize=False)
    assert plain.runtime is plain.model and not plain.optimized
    fast = Separator.from_checkpoint(ckpt)
    assert fast.runtime is not fast.model and fast.optimized
    mixture = torch.from_numpy(speech(3, 4000))
    with torch.no_grad():
        expected = fast.model(mixture[None])[0]
    torch.testing.assert_close(fast.separate(mixture, RATE), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(plain.separate(mixture, RATE), expected, atol=1e-5, rtol=1e-4)


def test_python_api_checks(ckpt: Path, tmp_path: Path) -> None:
    separator = Separator.from_checkpoint(ckpt)
    with pytest.raises(SeparationError, match="is a directory"):
        separator.separate_file(tmp_path, tmp_path / "out")
    with pytest.raises(SeparationError, match="non-finite"):
        separator.separate(torch.tensor([0.1, float("nan")] * 100), RATE)
    with pytest.raises(SeparationError, match="too short"):
        separator.separate(torch.ones(WINDOW - 1), RATE)
    wav = write(tmp_path / "x.wav")
    written = separator.separate_file(wav, tmp_path / "out", relative_name="a/b/y")
    assert written == [tmp_path / "out" / "a" / "b" / f"y_s{k}.wav" for k in (1, 2)]
    assert all(path.is_file() for path in written)


def test_an_input_taken_for_the_stream_block_size_is_explained(ckpt: Path, tmp_path: Path, capsys) -> None:
    wav = write(tmp_path / "mix.wav")
    with pytest.raises(SystemExit):
        infer(ckpt, "--stream", wav)
    assert "is not a number of milliseconds (to give inputs right after --stream, put -- before them)" in (
        capsys.readouterr().err
    )


# ---------------------------------------------------------------------------------------------
# Review findings (stop 25): each failed before its fix.


def test_a_codec_that_cannot_seek_is_read_again_from_a_fresh_handle(ckpt: Path, tmp_path: Path) -> None:
    """GSM 6.10 WAV (telephony) cannot seek: the check pass then a rewind refused every such file."""
    wav = write(tmp_path / "call.wav", subtype="GSM610")
    assert not sf.SoundFile(wav).seekable()
    assert infer(ckpt, "--out-dir", tmp_path / "out", wav) == 0
    mixture, rate = read_mixture(wav)
    expected, _ = sf.read(wav, dtype="float32")
    assert rate == RATE and torch.equal(mixture.reshape(-1), torch.from_numpy(expected))


def test_an_output_name_too_long_or_an_input_gone_is_one_line_and_the_batch_goes_on(
    ckpt: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Path.exists raised 'File name too long' (a 253-byte input name) and os.stat of an input removed mid-batch
    raised FileNotFoundError: tracebacks that ended the batch."""
    import audiosep.commands.infer as infer_command

    folder = tmp_path / "in"
    long_name = write(folder / ("a" * 249 + ".wav"))
    for name in ("b.wav", "c.wav"):
        write(folder / name)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, folder) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and long_name.name in lines[0] and "too long" in lines[0]
    assert all_files(out) == ["b_s1.wav", "b_s2.wav", "c_s1.wav", "c_s2.wav"]
    process = infer_command.process

    def removing_b(plan: infer_command.Plan, *args: object) -> None:
        if plan.input.path.name == "b.wav":
            plan.input.path.unlink()
        return process(plan, *args)

    monkeypatch.setattr(infer_command, "process", removing_b)
    assert infer(ckpt, "--out-dir", out, folder / "b.wav", folder / "c.wav") == 1
    captured, lines = errors(capsys)
    assert len(lines) == 1 and "b.wav: cannot check its outputs (No such file or directory)" in lines[0]
    assert f"{folder / 'c.wav'}: skipped, outputs exist" in captured


def test_a_folder_reached_by_a_link_or_renamed_does_not_separate_its_own_outputs(
    ckpt: Path, tmp_path: Path, capsys
) -> None:
    """With --out-dir the input folder, outputs were separated again (x_s1_s1.wav ...) once the input's path
    changed. Through a symbolic link the input is the same file: all skipped. After a rename, the files where
    x.wav's outputs go that name x.wav's file name, size and mtime are its outputs, not inputs; whether they are
    its result cannot be told (the recorded path is gone): one error that --overwrite clears."""
    real = tmp_path / "real"
    write(real / "x.wav")
    assert infer(ckpt, "--out-dir", real, real) == 0
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert infer(ckpt, "--out-dir", link, link) == 0
    assert "0 written, 3 skipped, 0 failed" in capsys.readouterr().err
    moved = tmp_path / "moved"
    real.rename(moved)
    assert infer(ckpt, "--out-dir", moved, moved) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("audiosep: error:")]
    assert "0 written, 2 skipped, 1 failed" in captured.err
    assert len(lines) == 1 and "x_s1.wav exists and was not written from this input" in lines[0]
    assert all_files(moved) == ["x.wav", "x_s1.wav", "x_s2.wav"]
    assert infer(ckpt, "--out-dir", moved, "--overwrite", moved) == 0
    assert all_files(moved) == ["x.wav", "x_s1.wav", "x_s2.wav"]


def test_two_recordings_of_one_name_size_and_mtime_are_not_taken_for_each_other(
    ckpt: Path, tmp_path: Path, capsys
) -> None:
    """Unpacked from one archive, dev/0001.wav and test/0001.wav have one size and mtime: the outputs of one were
    skipped as the other's (reviewer), a silent wrong result."""
    dev, test = write(tmp_path / "dev" / "0001.wav", seed=1), write(tmp_path / "test" / "0001.wav", seed=2)
    os.utime(test, ns=(dev.stat().st_atime_ns, dev.stat().st_mtime_ns))
    out = tmp_path / "sep"
    assert infer(ckpt, "--out-dir", out, dev) == 0
    before = (out / "0001_s1.wav").read_bytes()
    assert infer(ckpt, "--out-dir", out, test) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "0001_s1.wav exists and was not written from this input" in lines[0]
    assert (out / "0001_s1.wav").read_bytes() == before


def test_an_input_gone_before_planning_fails_alone(tmp_path: Path) -> None:
    """An input removed between the search and the plan had no file id: None became a key, and every output not
    written yet (also None) 'would overwrite' it, so every input failed (reviewer)."""
    from audiosep.commands.infer import plan_outputs
    from audiosep.commands.inputs import Input

    inputs = [Input(write(tmp_path / f"{name}.wav"), name) for name in ("a", "b", "c")]
    inputs[1].path.unlink()
    assert [plan.error for plan in plan_outputs(inputs, tmp_path / "out", 2)] == [None, None, None]


def test_another_name_of_an_input_gets_its_own_line(ckpt: Path, tmp_path: Path, capsys) -> None:
    """A symbolic or hard link to an input was dropped without a line: 3 files found, 1 written, 0 skipped."""
    original = write(tmp_path / "all" / "utt1.wav")
    view = tmp_path / "view"
    view.mkdir()
    (view / "spk1_utt1.wav").symlink_to(original)
    os.link(original, view / "hard_utt1.wav")
    assert infer(ckpt, "--out-dir", tmp_path / "out", original, view) == 0
    captured = capsys.readouterr()
    assert "1 written, 2 skipped, 0 failed" in captured.err
    for name in ("spk1_utt1.wav", "hard_utt1.wav"):
        assert f"{view / name}: skipped, the same file as {original}" in captured.out


def test_a_multibyte_or_non_utf8_path_keeps_its_outputs_recognised(
    ckpt: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comment's path budget is in bytes (775 CJK characters were 2215 bytes: the comment was dropped), and
    a Latin-1 file name (not UTF-8) could not be opened nor named in the comment."""
    from audiosep.inference import COMMENT_PATH_BYTES, written_from

    folder = tmp_path
    while len(os.fsencode(folder)) <= COMMENT_PATH_BYTES + 300:
        folder = folder / ("語" * 60)
    assert len(str(folder)) < COMMENT_PATH_BYTES
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    latin1 = os.fsdecode(b"caf\xe9.wav")
    for name in ("x.wav", latin1):
        sf.write(os.fsencode(name), speech(0), RATE)  # soundfile encodes a str name as UTF-8
        out = tmp_path / "out"
        assert infer(ckpt, "--out-dir", out, name) == 0
        stem = Path(name).stem
        assert written_from(out / f"{stem}_s1.wav").startswith("audiosep: separated from sha256:")
        assert infer(ckpt, "--out-dir", out, name) == 0
        assert "0 written, 1 skipped, 0 failed" in capsys.readouterr().err


def test_the_api_returns_ordinary_tensors_and_takes_float64(ckpt: Path) -> None:
    """At the model's rate separate() returned an inference tensor (in-place edits raised), and
    separate_at_model_rate(float64) failed inside the model."""
    separator = Separator.from_checkpoint(ckpt)
    mixture = torch.from_numpy(speech(0))
    for sources in (separator.separate(mixture, RATE), separator.separate(mixture, RATE, keep_model_rate=True),
                    separator.separate_at_model_rate(mixture)):  # fmt: skip
        assert not sources.is_inference()
        sources /= sources.abs().max()
    torch.testing.assert_close(separator.separate_at_model_rate(mixture.double()), separator.separate_at_model_rate(mixture))
    with pytest.raises(SeparationError, match="1 non-finite sample"):
        separator.separate_at_model_rate(torch.where(torch.arange(len(mixture)) == 5, torch.nan, mixture))
    with pytest.raises(SeparationError, match=r"1 sample\(s\) beyond \+-10000"):
        separator.separate(torch.where(torch.arange(len(mixture)) == 5, 1e30, mixture), RATE)


def test_file_names_go_to_soundfile_as_bytes_on_posix_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes let a Latin-1 name open on Linux; on Windows soundfile opens text names by wide characters, which
    bytes would bypass (non-ASCII names there would fail)."""
    from audiosep.io import soundfile_name

    name = os.fsdecode(b"/tmp/caf\xe9.wav") if os.name == "posix" else "café.wav"
    assert soundfile_name(name) == (os.fsencode(name) if os.name == "posix" else name)
    path = Path("café.wav")  # made before os.name changes: pathlib picks its class from it
    monkeypatch.setattr(os, "name", "nt")
    assert soundfile_name(path) == "café.wav"


def test_a_second_run_on_one_output_folder_is_refused_while_the_first_runs(ckpt, tmp_path, capsys) -> None:
    """Two runs on one --out-dir: the second deleted the first's scratch files, which then failed mid-file."""
    from audiosep.io import directory_lock

    wav = tmp_path / "x.wav"
    sf.write(wav, speech(0), RATE)
    with directory_lock(tmp_path / "out", "--out-dir"):
        assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "out"), str(wav)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"audiosep: error: {tmp_path / 'out'}: in use by another running audiosep command; wait for it "
                   "or pass another --out-dir"]  # fmt: skip
    assert list((tmp_path / "out").iterdir()) == []
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "out"), str(wav)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x_s1.wav", "x_s2.wav"]  # no lock file left


def test_a_full_disk_is_named_not_a_libsndfile_system_error(ckpt, tmp_path, capsys, monkeypatch) -> None:
    """libsndfile reports a full disk as "System error."; the user saw "separation failed (... System error.)",
    also once the check looked at the disk: after the failed write's temp files were gone, it had room (reviewer)."""
    import shutil
    from collections import namedtuple

    wav = tmp_path / "x.wav"
    sf.write(wav, speech(0), RATE)
    temps_while_asked = []

    def full(self, data):  # noqa: ANN001, ANN202 (SoundFile.write: its temp file exists, with a header)
        raise sf.LibsndfileError(2, "System error.")

    def usage(path):  # noqa: ANN001, ANN202
        temps_while_asked.append([p.name for p in (tmp_path / "out").iterdir()])
        return namedtuple("Usage", "total used free")(1, 1, 0 if temps_while_asked[-1] else 1)

    monkeypatch.setattr(sf.SoundFile, "write", full)
    monkeypatch.setattr(shutil, "disk_usage", usage)
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "out"), str(wav)]) == 1
    assert (f"cannot write outputs in {tmp_path / 'out' / 'x_s1.wav'} (No space left on device); nothing written for it"
            in capsys.readouterr().err)
    assert not any((tmp_path / "out").glob("*"))  # no output, no temp file


def test_a_refused_write_names_the_file(ckpt, tmp_path, capsys, monkeypatch) -> None:
    """An OSError while writing said only "cannot write outputs (No space left on device)": which disk?"""
    import errno

    target = tmp_path / "out" / "x_s1.wav"

    def refused(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(Separator, "separate_file", refused)
    wav = tmp_path / "x.wav"
    sf.write(wav, speech(0), RATE)
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "out"), str(wav)]) == 1
    assert f"cannot write outputs in {target} (No space left on device)" in capsys.readouterr().err


def test_an_out_dir_that_cannot_be_made_is_one_line_and_no_empty_folders_stay(ckpt, tmp_path, capsys) -> None:
    """A dangling link as --out-dir gave a FileExistsError traceback (the lock's mkdir); a failed run into
    n1/n2/out left the empty n1/ and n1/n2/ behind."""
    wav = tmp_path / "x.wav"
    sf.write(wav, speech(0), RATE)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "dangling"), str(wav)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"audiosep: error: {tmp_path / 'dangling'}: cannot make this folder")
    short = tmp_path / "short.wav"
    sf.write(short, speech(0, frames=3), RATE)
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", str(tmp_path / "n1" / "n2" / "out"), str(short)]) == 1
    assert not (tmp_path / "n1").exists()


def test_a_folder_reached_through_dotdot_is_never_removed(ckpt, tmp_path, capsys, monkeypatch) -> None:
    """--out-dir new1/../x/out, nothing written: new1/../x was counted as made by the run, and x (the user's
    existing empty folder) was removed."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    short = tmp_path / "short.wav"
    sf.write(short, speech(0, frames=3), RATE)
    assert main(["infer", "--ckpt", str(ckpt), "--out-dir", "new1/../x/out", str(short)]) == 1
    assert (tmp_path / "x").is_dir()


def test_ctrl_c_inside_a_lightning_fit_of_a_command_exits_130(monkeypatch, capsys) -> None:
    """Lightning turns KeyboardInterrupt into sys.exit(1) and then ignores Ctrl-C: `demo` and `norms study`
    exited 1 with its message instead of the documented 130 (study reviewer). A command now gets SIGINT
    as an exception Lightning re-raises."""
    import signal

    import lightning as L

    from audiosep.commands import data_demo

    def fit_interrupted(args) -> int:
        trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)  # fmt: skip

        class Model(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.layer = torch.nn.Linear(1, 1)

            def training_step(self, batch, index):
                os.kill(os.getpid(), signal.SIGINT)
                return self.layer(batch).sum()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        trainer.fit(Model(), torch.utils.data.DataLoader(torch.ones(4, 1)))
        return 0

    monkeypatch.setattr(data_demo, "run", fit_interrupted)
    assert main(["data", "demo", "--out", "unused"]) == 130
    assert "audiosep: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards


def test_a_model_of_the_same_weights_but_other_arguments_redoes_the_outputs(tmp_path: Path, capsys) -> None:
    """Outputs were recognised by the weights' digest alone: a SpeechBrain model converted again with tail="drop"
    (same weights, other numbers) found the old outputs and skipped them (diff reviewer)."""
    from audiosep.models import SepFormer

    config = dict(encoder_channels=16, model_channels=16, chunk_size=10, num_blocks=1, num_intra_layers=1,
                  num_inter_layers=1, num_heads=2, ffn_dim=24)  # fmt: skip
    torch.manual_seed(0)
    padded = SepFormer(**config).eval()
    dropped = SepFormer(**config, tail="drop").eval()
    dropped.load_state_dict(padded.state_dict())
    for name, model in (("pad.ckpt", padded), ("drop.ckpt", dropped)):
        save_model(model, tmp_path / name, {"sample_rate": RATE})
    wav = tmp_path / "x.wav"
    sf.write(wav, speech(0, 2403), RATE)
    out = tmp_path / "out"
    assert infer(tmp_path / "pad.ckpt", "--out-dir", out, wav) == 0
    capsys.readouterr()
    assert infer(tmp_path / "drop.ckpt", "--out-dir", out, wav) == 1
    _, lines = errors(capsys)
    assert len(lines) == 1 and "was separated from this input with another model or other options" in lines[0]
    assert infer(tmp_path / "drop.ckpt", "--out-dir", out, wav, "--overwrite") == 0


def test_a_cuda_device_where_there_is_none_is_one_line_before_loading(ckpt: Path, tmp_path: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """As evaluate does (infer passed torch's driver message on, naming no flag: reviewer)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert infer(ckpt, "--device", "cuda", "--out-dir", tmp_path / "out", write(tmp_path / "a.wav", seed=1)) == 1
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_rerun_naming_the_subtype_auto_chose_takes_the_outputs_for_its_own(ckpt: Path, tmp_path: Path, capsys) -> None:
    """The digest holds the subtype written, not the option: auto and PCM_24 on a 24-bit input are one setting,
    and so are auto and PCM_16 on a 16-bit one (whose outputs were 16-bit before there was a choice)."""
    wide, narrow = write(tmp_path / "wide.wav", subtype="PCM_24"), write(tmp_path / "narrow.wav", seed=1)
    out = tmp_path / "out"
    assert infer(ckpt, "--out-dir", out, wide, narrow) == 0
    assert sf.info(str(out / "wide_s1.wav")).subtype == "PCM_24" and sf.info(str(out / "narrow_s1.wav")).subtype == "PCM_16"
    capsys.readouterr()
    assert infer(ckpt, "--out-dir", out, "--subtype", "PCM_24", wide) == 0
    assert infer(ckpt, "--out-dir", out, "--subtype", "PCM_16", narrow) == 0
    assert capsys.readouterr().err.count("0 written, 1 skipped, 0 failed") == 2
    assert infer(ckpt, "--out-dir", out, "--subtype", "PCM_16", wide) == 1  # a different file would be written


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_unreadable_entries_of_a_folder_are_named_not_skipped(ckpt, tmp_path, capsys) -> None:
    """A folder's broken link, link loop and pipe named *.wav were skipped without a word, exit 0 (reviewer);
    letting them through unchecked would block on the pipe."""
    takes = tmp_path / "takes"
    takes.mkdir()
    sf.write(takes / "take1.wav", speech(0), RATE)
    (takes / "take2.wav").symlink_to(tmp_path / "unmounted" / "take2.wav")
    (takes / "take3.wav").symlink_to(takes / "take3.wav")
    os.mkfifo(takes / "take4.wav")
    assert main(["infer", "--ckpt", str(ckpt), "--no-progress", "--out-dir", str(tmp_path / "out"), str(takes)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"audiosep: error: {takes / 'take2.wav'}: broken symbolic link",
                   f"audiosep: error: {takes / 'take3.wav'}: broken symbolic link",
                   f"audiosep: error: {takes / 'take4.wav'}: not a regular file",
                   "audiosep: 1 written, 0 skipped, 3 failed"]  # fmt: skip


def test_channels_that_cancel_in_the_mixdown_are_warned_about(ckpt, tmp_path, capsys) -> None:
    """A stereo file with one channel inverted was separated into one-LSB silence with exit 0 and no word
    (reviewer); an exact cancellation was called "all samples are zero"."""
    voice = speech(0)
    files = {"inverted.wav": ("PCM_16", np.stack([voice, -voice], 1)), "exact.wav": ("FLOAT", np.stack([voice, -voice], 1)),
             "fine.wav": ("PCM_16", np.stack([voice, 0.5 * voice], 1))}  # fmt: skip
    for name, (subtype, samples) in files.items():
        sf.write(tmp_path / name, samples, RATE, subtype=subtype)
    assert main(["infer", "--ckpt", str(ckpt), "--no-progress", "--out-dir", str(tmp_path / "out"),
                 *(str(tmp_path / name) for name in files)]) == 0  # fmt: skip
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2 and all("channels cancel in the mono mixdown" in line for line in warnings)
    assert "inverted.wav: its 2 channels cancel" in warnings[0] and "(silent: one of opposite polarity?)" in warnings[1]
