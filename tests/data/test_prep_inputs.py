"""Data preparation refuses or rebuilds what it cannot trust: stale demo sets, split names, noise reuse, empty inputs, long rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosep.cli import main
from audiosep.data.prep import demo_set, librimix_generate, librimix_recipe
from audiosep.data.prep.librimix_recipe import Clip, NoisePool
from audiosep.errors import UserError

TINY_DEMO = {"num_train": 2, "num_dev": 1, "num_test": 1, "num_speakers": 6, "progress": False,
             "num_workers": 0}
HEADER = "mixture_ID,source_1_path,source_1_gain,source_2_path,source_2_gain,noise_path,noise_gain\n"
ROW = "a_b,dev-clean/1/2/1-2-0000.flac,1.0,dev-clean/1/2/1-2-0001.flac,1.0,,\n"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _delete_first(pattern: str, root: Path) -> None:
    sorted(root.glob(pattern))[0].unlink()


def _truncate_first(pattern: str, root: Path) -> None:
    path = sorted(root.glob(pattern))[0]
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    "damage",
    [
        lambda root: _delete_first("Libri2Mix/wav8k/min/train-100/s1/*.wav", root),
        lambda root: _truncate_first("Libri2Mix/wav8k/min/dev/mix_clean/*.wav", root),
        lambda root: _truncate_first("speech/test/*/*.wav", root),
        lambda root: (root / "manifests" / "test.jsonl").unlink(),
        lambda root: _truncate_first("Libri2Mix/wav8k/min/metadata/mixture_train-100_mix_clean.csv", root),
    ],
    ids=["deleted-source", "truncated-mixture", "truncated-utterance", "deleted-manifest", "truncated-csv"],
)
def test_a_complete_demo_set_with_a_missing_or_truncated_file_is_rebuilt(tmp_path: Path, damage) -> None:
    """The "complete" marker alone said ready; the damage surfaced later inside training."""
    out = demo_set.build_demo_set(tmp_path / "set", **TINY_DEMO)
    before = _files(out)
    damage(out)
    assert demo_set.build_demo_set(tmp_path / "set", **TINY_DEMO) == out
    assert _files(out) == before


def _write_csvs(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(HEADER + ROW)


def test_two_metadata_csvs_of_one_split_are_refused_naming_both(tmp_path: Path) -> None:
    """libri2mix_dev-clean.csv and libri2mix_dev.csv both wrote dev/; the first one's metadata was lost."""
    _write_csvs(tmp_path, ["libri2mix_dev-clean.csv", "libri2mix_dev.csv", "libri2mix_test-clean.csv"])
    for splits in (None, ["dev"], ["test"]):
        with pytest.raises(UserError, match="_dev-clean.csv and .*libri2mix_dev.csv: both give split 'dev'"):
            librimix_generate.find_metadata_csvs(tmp_path, 2, splits)


@pytest.mark.parametrize("name", ["libri2mix_...csv", "libri2mix_.csv", "libri2mix_.hidden.csv"])
def test_a_csv_whose_split_name_is_not_a_plain_folder_name_is_refused(tmp_path: Path, name: str) -> None:
    """``libri2mix_...csv`` gave split ``..``: wavs, journal and metadata landed outside the mode folder."""
    _write_csvs(tmp_path, [name])
    with pytest.raises(UserError, match="not a plain folder name"):
        librimix_generate.find_metadata_csvs(tmp_path, 2)


def _clip(path: str, length: int, speaker: str = "") -> Clip:
    return Clip(path, speaker, length)


def test_the_noise_pool_reuses_a_long_noise_when_only_short_ones_are_unused() -> None:
    """A leftover short noise blocked the refill: every later dev/test group was dropped."""
    pool = NoisePool([_clip("cv/long.wav", 1000), _clip("cv/short.wav", 10)], 5, np.random.default_rng(0))
    assert [pool.take(500, longest_if_none=False) for _ in range(3)] == [0, 0, 0]
    assert pool.take(2000, longest_if_none=False) is None  # none in the whole pool is long enough
    assert pool.take(2000, longest_if_none=True) == 0  # train: the longest


def test_drawing_fewer_mixtures_than_asked_warns_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    """``--num-mixtures 5`` on a corpus with one possible pair wrote 1 row, silently."""
    speech = [_clip("dev-clean/1/9/1-9-0000.flac", 100, "1"), _clip("dev-clean/2/9/2-9-0000.flac", 200, "2")]
    noises = [_clip("cv/short.wav", 150), _clip("cv/long.wav", 300)]
    with caplog.at_level(logging.WARNING, logger=librimix_recipe.__name__):
        plan = librimix_recipe.draw_plan(speech, noises, 2, "dev-clean", 5, np.random.default_rng(0))
    assert len(plan) == 1
    (record,) = caplog.records
    assert record.getMessage().startswith("dev-clean: drew only 1 of the 5 mixtures asked for: ")
    assert "no new group of 2 distinct speakers" in record.getMessage()


def test_drawing_no_mixture_at_all_is_refused_without_writing_a_csv(tmp_path: Path) -> None:
    """An empty drawn CSV was reused by every rerun (``already drawn``) and refused by generation."""
    for speaker in ("1", "2"):
        path = tmp_path / "ls" / "dev-clean" / speaker / "9" / f"{speaker}-9-0000.flac"
        path.parent.mkdir(parents=True)
        sf.write(path, np.full(16000, 0.1, "float32"), 16000)
    (tmp_path / "wham" / "cv").mkdir(parents=True)
    sf.write(tmp_path / "wham" / "cv" / "short.wav", np.full(800, 0.01, "float32"), 16000)
    with pytest.raises(UserError, match="dev-clean: no mixtures drawn"):
        librimix_recipe.draw_metadata(tmp_path / "ls", tmp_path / "wham", "dev-clean", tmp_path / "md", 2,
                                      min_seconds=0.5)
    assert not (tmp_path / "md").exists()


def _librimix(root: Path, csv_text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    (root / "ls" / "dev-clean").mkdir(parents=True, exist_ok=True)
    (root / "md").mkdir(exist_ok=True)
    (root / "md" / "libri2mix_dev-clean.csv").write_text(csv_text)
    code = main(["data", "librimix", "--librispeech", str(root / "ls"), "--metadata", str(root / "md"),
                 "--out", str(root / "out"), "--types", "mix_clean", "--workers", "1"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_header_only_mixture_csv_fails_naming_it(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """It printed ``dev: 0 mixtures`` and exited 0 with empty metadata CSVs."""
    code, err = _librimix(tmp_path, HEADER, capsys)
    assert code == 1 and len(err) == 1 and err[0].endswith("libri2mix_dev-clean.csv: lists no mixtures")
    assert not list((tmp_path / "out").rglob("*.*"))


def test_a_mixture_csv_row_with_extra_fields_fails_naming_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """csv.DictReader put the extra fields under key None: the row generated as if they were not there."""
    long_row = ROW.replace("a_b", "c_d").strip() + ",EXTRA,STUFF\n"
    code, err = _librimix(tmp_path, HEADER + ROW + long_row, capsys)
    assert code == 1 and len(err) == 1
    assert err[0].endswith("libri2mix_dev-clean.csv:3: 9 fields, but the header has 7 columns")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("rate", "content", "problem"), [(8000, None, "8000 Hz, not 16000"),
                                                       (16000, b"fLaC" + bytes(296), "Error")])  # fmt: skip
def test_an_input_of_another_rate_or_a_broken_header_fails_before_any_mixture_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rate: int, content: bytes | None, problem: str
) -> None:
    """Inputs were only checked to exist: a bad second row failed after the first row's files were written."""
    chapter = tmp_path / "ls" / "dev-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    for index in range(4):
        sf.write(chapter / f"1-2-000{index}.flac", np.full(1600, 0.1, "float32"), 16000)
    bad = chapter / "1-2-0003.flac"
    sf.write(bad, np.full(800, 0.1, "float32"), rate)
    if content is not None:
        bad.write_bytes(content)
    second = ROW.replace("a_b", "c_d").replace("1-2-0000", "1-2-0002").replace("1-2-0001", "1-2-0003")
    code, err = _librimix(tmp_path, HEADER + ROW + second, capsys)
    assert code == 1 and err[-1].startswith("audiosep: error: 1 input file(s) unusable (LibriMix reads 16000 Hz audio)")
    assert f"{bad}: " in err[-1] and problem in err[-1]
    assert not list((tmp_path / "out").rglob("*.wav"))


def test_a_librispeech_subset_with_no_usable_utterance_fails_and_leaves_no_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty .trans.txt skipped every file, wrote an empty .jsonl and exited 0."""
    chapter = tmp_path / "ls" / "dev-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    for index in range(2):
        sf.write(chapter / f"1-2-000{index}.flac", np.full(1600, 0.1, "float32"), 16000)
    (chapter / "1-2.trans.txt").write_text("")
    code = main(["data", "librispeech", "--root", str(tmp_path / "ls"), "--subsets", "dev-clean",
                 "--out", str(tmp_path / "out"), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 1 and "utterances ->" not in captured.out
    assert captured.err.strip().splitlines()[-1].endswith(
        "dev-clean: no utterances written (all 2 file(s) skipped, listed above)")
    assert not (tmp_path / "out" / "dev-clean.jsonl").exists()
    (tmp_path / "out" / "dev-clean.jsonl").write_text("an earlier run's manifest\n")  # kept: only refused
    assert main(["data", "librispeech", "--root", str(tmp_path / "ls"), "--subsets", "dev-clean",
                 "--out", str(tmp_path / "out"), "--workers", "1"]) == 1
    assert (tmp_path / "out" / "dev-clean.jsonl").read_text() == "an earlier run's manifest\n"
