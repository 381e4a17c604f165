"""The synthetic LibriMix-shaped demo set: layout, metadata, mixing arithmetic, determinism, caching."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosep.cli import main
from audiosep.data.prep import demo_set
from audiosep.data.prep.demo_set import build_demo_set
from audiosep.errors import UserError

TINY = {"num_train": 6, "num_dev": 3, "num_test": 3, "num_speakers": 8, "progress": False}
SPLITS = ("train-100", "dev", "test")
HEADER = ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_set(tmp_path_factory.mktemp("demo") / "set", seed=0, num_workers=0, **TINY)


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    path = root / "Libri2Mix" / "wav8k" / "min" / "metadata" / f"mixture_{split}_mix_clean.csv"
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == HEADER
        return list(reader)


def _manifest(root: Path, split: str) -> list[dict]:
    lines = (root / "manifests" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _read_int(path: str | Path) -> np.ndarray:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
    return sf.read(str(path), dtype="int16")[0].astype(np.int64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_metadata_follow_librimix(built: Path) -> None:
    base = built / "Libri2Mix" / "wav8k" / "min"
    for split, count in zip(SPLITS, (6, 3, 3), strict=True):
        rows = _rows(built, split)
        assert len(rows) == count
        for row in rows:
            paths = [Path(row[key]) for key in HEADER[1:4]]
            for path, folder in zip(paths, ("mix_clean", "s1", "s2"), strict=True):
                assert path.is_absolute() and path == base / split / folder / f"{row['mixture_ID']}.wav"
                assert sf.info(str(path)).frames == int(row["length"])
        assert sorted(p.stem for p in (base / split / "mix_clean").iterdir()) == sorted(r["mixture_ID"] for r in rows)
    assert json.loads((built / "demo_set.json").read_text())["complete"] is True


def test_mixtures_are_exact_sums_of_min_truncated_normalised_sources(built: Path) -> None:
    for split in SPLITS:
        utterances = {Path(u["audio_filepath"]).stem: u for u in _manifest(built, split)}
        for row in _rows(built, split):
            first, second = row["mixture_ID"].split("_")
            assert utterances[first]["speaker"] != utterances[second]["speaker"]
            mix, s1, s2 = (_read_int(row[key]) for key in HEADER[1:4])
            assert np.array_equal(mix, s1 + s2)  # exact: the mixture is the integer sum
            assert np.abs(mix).max() <= 0.9 * 32768 + 1
            u1, u2 = (_read_int(utterances[u]["audio_filepath"]) for u in (first, second))
            assert len(mix) == min(len(u1), len(u2))  # "min" mode
            # each source is its utterance, truncated and scaled: least-squares gain, tiny residual
            gains = []
            for source, utterance in ((s1, u1[: len(mix)]), (s2, u2[: len(mix)])):
                gain = float(source @ utterance) / float(utterance @ utterance)
                residual = source - gain * utterance
                assert np.sqrt(np.mean(residual**2.0)) < 1.0  # within 16-bit rounding
                gains.append(gain)
            assert abs(20 * np.log10(gains[0] / gains[1])) <= demo_set.RELATIVE_GAIN_DB + 0.05


def test_utterances_are_loudness_normalised(built: Path) -> None:
    for entry in _manifest(built, "dev"):
        samples = _read_int(entry["audio_filepath"]).astype(np.float64) / 32768
        frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)  # 20 ms frames at 8 kHz
        energy = (frames**2).mean(axis=1)
        active = energy[energy >= energy.max() * 1e-4]
        level_db = 10 * np.log10(active.mean())
        if np.abs(samples).max() < 0.98:  # else scaled down to avoid clipping: quieter, never louder
            assert level_db == pytest.approx(demo_set.TARGET_DBFS, abs=0.1)
        assert level_db < demo_set.TARGET_DBFS + 0.1


def test_manifests_and_speaker_disjointness(built: Path) -> None:
    speakers = {}
    for split in SPLITS:
        entries = _manifest(built, split)
        assert entries and all(set(e) == {"audio_filepath", "duration", "text", "speaker"} for e in entries)
        for entry in entries:
            path = Path(entry["audio_filepath"])
            assert path.is_absolute() and path.parent == built / "speech" / split / entry["speaker"]
            assert entry["duration"] == sf.info(str(path)).frames / 8000
            assert 8 <= len(entry["text"].split()) <= 16
        speakers[split] = {e["speaker"] for e in entries}
        assert len(speakers[split]) >= 2
    assert not speakers["train-100"] & speakers["dev"]
    assert not speakers["train-100"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]


def test_same_seed_same_bytes_any_workers_other_seed_differs(built: Path, tmp_path: Path) -> None:
    again = build_demo_set(tmp_path / "again", seed=0, num_workers=2, **TINY)
    ours, theirs = _files(built), _files(again)
    assert ours.keys() == theirs.keys()
    for name, data in ours.items():
        if name.endswith(".wav"):
            assert data == theirs[name], name
        else:  # text files hold absolute paths: equal once the folder is substituted
            assert data.replace(str(built).encode(), b"") == theirs[name].replace(str(again).encode(), b""), name
    other = _files(build_demo_set(tmp_path / "other", seed=1, num_workers=0, **TINY))
    assert [data for name, data in sorted(other.items()) if name.endswith(".wav")] != [
        data for name, data in sorted(ours.items()) if name.endswith(".wav")]


def test_complete_set_is_reused_and_changed_parameters_are_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Other parameters deleted Libri2Mix whole, with any LibriMix generated there (reviewer): refused now."""
    out = build_demo_set(tmp_path / "set", num_workers=0, **TINY)
    before = _files(out)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt a complete set")

    monkeypatch.setattr(demo_set, "_synthesise_all", fail)
    assert build_demo_set(tmp_path / "set", num_workers=0, **TINY) == out
    assert _files(out) == before
    monkeypatch.undo()
    with pytest.raises(UserError, match="holds a demo set of other settings"):
        build_demo_set(tmp_path / "set", num_workers=0, **{**TINY, "num_train": 4})
    assert _files(out) == before


def test_an_unfinished_set_of_the_same_settings_is_rebuilt(tmp_path: Path) -> None:
    config = demo_set.DemoSetConfig()
    demo_set._write_marker(tmp_path, config, complete=False)
    (tmp_path / "Libri2Mix" / "partial").mkdir(parents=True)
    assert demo_set._prepare_out_dir(tmp_path, config) is False
    assert not (tmp_path / "Libri2Mix").exists()


def test_data_librimix_refuses_a_demo_set_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both write Libri2Mix/wav8k/min: LibriMix overwrote the demo's dev CSV, which then still said ready."""
    demo_set._write_marker(tmp_path, demo_set.DemoSetConfig(), complete=True)
    assert main(["data", "librimix", "--out", str(tmp_path), "--librispeech", str(tmp_path), "--metadata",
                 str(tmp_path)]) == 1  # fmt: skip
    assert "holds the demo set of `audiosep data demo`" in capsys.readouterr().err


def test_refuses_foreign_data_and_bad_sizes(tmp_path: Path) -> None:
    (tmp_path / "foreign" / "Libri2Mix").mkdir(parents=True)
    with pytest.raises(UserError, match="not written by"):
        build_demo_set(tmp_path / "foreign", **TINY)
    with pytest.raises(UserError, match="num_train"):
        build_demo_set(tmp_path / "bad", **{**TINY, "num_train": 0})
    with pytest.raises(UserError, match="from 8000 to 48000"):  # 8 MHz: 2.9 GB for 8 mixtures (reviewer)
        build_demo_set(tmp_path / "bad", **{**TINY, "sample_rate": 8_000_000})


def test_speed_perturbation_shifts_frequency_by_the_rate_ratio() -> None:
    native, sample_rate = 22050, 8000
    t = np.arange(native) / native
    tone = np.sin(2 * np.pi * 1000.0 * t) * np.hanning(native)
    for index, rate in enumerate((7200, 8000, 8800)):
        out = demo_set._perturb_and_colour(tone, native, rate, sample_rate, np.random.default_rng(index))
        assert len(out) == round(native * rate / native)
        spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
        peak_hz = int(spectrum.argmax()) * sample_rate / len(out)
        # resampled to `rate` but labelled `sample_rate`: 1 kHz plays at 1000 * sample_rate / rate
        assert peak_hz == pytest.approx(1000.0 * sample_rate / rate, abs=2.0)


def test_cli_builds_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "demo", "--out", str(tmp_path / "cli"), "--num-train", "4", "--num-dev", "2",
                 "--num-test", "2", "--num-speakers", "6", "--workers", "0", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "cli") in printed and "manifests" in printed
    assert len(_rows(tmp_path / "cli", "dev")) == 2
    assert main(["data", "demo", "--out", str(tmp_path / "bad"), "--num-speakers", "2", "--no-progress"]) == 1
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["data", "demo", "--out", str(a_file), "--no-progress"]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err and a_file.read_text() == "x"


@pytest.mark.parametrize("marker", [b"[]", b"\xff\xfe not utf-8", b'{"complete": tr', b'{"complete": true}'])
def test_a_damaged_or_foreign_marker_deletes_nothing(tmp_path: Path, marker: bytes) -> None:
    """Any demo_set.json let the builder delete Libri2Mix, a user's files in it included (reviewer)."""
    (tmp_path / "demo_set.json").write_bytes(marker)
    (tmp_path / "Libri2Mix" / "keep").mkdir(parents=True)
    with pytest.raises(UserError, match="holds a demo set of other settings"):
        demo_set._prepare_out_dir(tmp_path, demo_set.DemoSetConfig())
    assert (tmp_path / "Libri2Mix" / "keep").is_dir()


def test_a_second_build_into_a_folder_being_built_is_refused(tmp_path: Path) -> None:
    """Two concurrent builds into one folder crashed one with a traceback or left 933 files of the other seed."""
    from audiosep.io import directory_lock

    with directory_lock(tmp_path / "set", "--out"):  # what a running build holds
        with pytest.raises(UserError, match="in use by another running audiosep command"):
            build_demo_set(tmp_path / "set", num_workers=0, **TINY)
    assert build_demo_set(tmp_path / "set", num_workers=0, **TINY) == (tmp_path / "set").resolve()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_while_workers_synthesise_ends_the_build(tmp_path: Path, sig: str) -> None:
    """The pool's forked workers inherited the command's raising signal handlers: one raised while writing its
    result and the parent waited on it forever (diff reviewer). They leave Ctrl-C to the parent now."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from recipe_args import REPO, subprocess_env

    argv = [sys.executable, "-m", "audiosep", "data", "demo", "--out", str(tmp_path / "set"), "--num-train", "2000",
            "--workers", "2", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (tmp_path / "set" / "speech").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)  # the workers are synthesising
    assert process.poll() is None, "the build ended before the signal"
    os.killpg(process.pid, getattr(signal, sig))  # what a terminal's Ctrl-C does: the whole process group
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"the build hung after {sig}") from None
    assert code == 128 + getattr(signal, sig), process.stderr.read()[-2000:]
