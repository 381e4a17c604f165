"""The LibriMix loader refuses metadata whose mixture_IDs would read outside the split or repeat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosep.data.librimix import LibriMixDataset
from audiosep.errors import UserError


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """A one-mixture ``test`` split, and a readable wav outside it (``tmp_path/outside/secret.wav``)."""
    for path in [tmp_path / "test" / folder / "a_b.wav" for folder in ("mix_clean", "s1", "s2")] + [
        tmp_path / "outside" / "secret.wav"
    ]:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.full(800, 0.1, "float32"), 8000)
    return tmp_path


def dataset(root: Path, *ids: str, length: str = "800", segment: float | None = None) -> LibriMixDataset:
    metadata = root / "mixture_test_mix_clean.csv"
    metadata.write_text("mixture_ID,mixture_path,source_1_path,source_2_path,length\n" + "".join(
        f'"{mixture_id}",,,,{length}\n' for mixture_id in ids))
    return LibriMixDataset(root / "test", metadata, segment=segment)


def test_plain_ids_load(split):
    assert dataset(split, "a_b")[0][2] == "a_b"


@pytest.mark.parametrize(
    "mixture_id", ["../../outside/secret", "{root}/outside/secret", "", "a\\b", "a..b", "a\tb", "a\x00b"]
)
def test_an_id_that_is_not_a_plain_file_name_is_refused_naming_the_file_and_line(split, mixture_id):
    mixture_id = mixture_id.format(root=split)
    with pytest.raises(UserError) as caught:
        dataset(split, "a_b", mixture_id)
    expected = f"mixture_test_mix_clean.csv:3: mixture_ID {mixture_id!r} is not a plain file name"
    assert expected in str(caught.value)


def test_a_repeated_id_is_refused_naming_both_lines(split):
    with pytest.raises(UserError, match=r"mixture_test_mix_clean.csv:4: mixture_ID 'a_b' repeats line 2"):
        dataset(split, "a_b", "c_d", "a_b")


def test_a_source_shorter_than_its_mixture_is_one_error_naming_the_file(split):
    sf.write(split / "test" / "s2" / "a_b.wav", np.full(700, 0.1, "float32"), 8000)
    with pytest.raises(UserError, match=r"s2/a_b.wav: 700 samples where the mixture has 800"):
        dataset(split, "a_b")[0]


@pytest.mark.parametrize("segment", [None, 0.05])  # whole files (evaluate, validation) and training crops
def test_a_mixture_of_another_length_than_its_metadata_row_is_refused(split, segment):
    """A folder of the other mode (min vs max) holds the same ids at other lengths: its scores would be of
    other audio than the metadata describes."""
    assert dataset(split, "a_b", segment=segment)[0][0].shape[-1] == (int(segment * 8000) if segment else 800)
    for folder in ("mix_clean", "s1", "s2"):
        sf.write(split / "test" / folder / "a_b.wav", np.full(900, 0.1, "float32"), 8000)
    with pytest.raises(UserError, match=r"mix_clean/a_b.wav: 900 samples, but mixture_test_mix_clean.csv lists 800"):
        dataset(split, "a_b", segment=segment)[0]


@pytest.mark.parametrize("length", ["", "8.5", "-3", "many", "8²", "٨٠٠", "9" * 5000])
def test_a_length_that_is_not_a_sample_count_is_refused_naming_the_line(split, length):
    with pytest.raises(UserError, match=r"mixture_test_mix_clean.csv:2: length '.*' is not a whole number"):
        dataset(split, "a_b", length=length)


def test_a_metadata_csv_with_a_byte_order_mark_reads_and_one_in_utf16_is_refused_in_one_line(split):
    metadata = split / "mixture_test_mix_clean.csv"
    text = "mixture_ID,mixture_path,source_1_path,source_2_path,length\na_b,,,,800\n"
    metadata.write_text(text, encoding="utf-8-sig")  # what a spreadsheet saves
    assert LibriMixDataset(split / "test", metadata)[0][2] == "a_b"
    metadata.write_text(text, encoding="utf-16")
    with pytest.raises(UserError, match=r"mixture_test_mix_clean.csv: not UTF-8 text \(byte 0\); save it as UTF-8"):
        LibriMixDataset(split / "test", metadata)


def test_a_stereo_mixture_is_refused_as_such(split):
    sf.write(split / "test" / "mix_clean" / "a_b.wav", np.full((800, 2), 0.1, "float32"), 8000)
    with pytest.raises(UserError, match=r"mix_clean/a_b.wav: 2 channels; LibriMix files are mono"):
        dataset(split, "a_b")[0]


def test_a_missing_source_file_is_named_as_missing(split):
    (split / "test" / "s1" / "a_b.wav").unlink()
    with pytest.raises(UserError, match=r"s1/a_b.wav: no such file"):
        dataset(split, "a_b")[0]


def test_a_split_of_three_sources_is_refused_for_a_two_source_model(split):
    """Libri3Mix read as two sources would score a 2-speaker model against two of three speakers, silently."""
    metadata = split / "mixture_test_mix_clean.csv"
    metadata.write_text("mixture_ID,mixture_path,source_1_path,source_2_path,source_3_path,length\na_b,,,,,800\n")
    with pytest.raises(UserError, match=r"mixture_test_mix_clean.csv: 3 sources per mixture .* the model separates 2"):
        LibriMixDataset(split / "test", metadata)
    assert len(LibriMixDataset(split / "test", metadata, n_src=3)) == 1
    (split / "test" / "s3").mkdir()  # a CSV without source columns: the folder says it
    with pytest.raises(UserError, match=r"test/s3: this split has more than 2 sources per mixture"):
        dataset(split, "a_b")


@pytest.mark.parametrize("segment", [0.0, -1.0, 0.0001, float("nan")])
def test_a_segment_shorter_than_one_sample_is_refused(split, segment):
    """0 gave empty items, -1 random tails of the files (soundfile reads a negative frame count to the end)."""
    metadata = split / "mixture_test_mix_clean.csv"
    metadata.write_text("mixture_ID,length\na_b,800\n")
    with pytest.raises(UserError, match="segment must be positive seconds, at least one sample"):
        LibriMixDataset(split / "test", metadata, segment=segment)
    assert LibriMixDataset(split / "test", metadata, segment=0.05)[0][0].shape == (400,)


def test_a_folder_of_another_mode_or_rate_is_refused(tmp_path, monkeypatch):
    """--data pointing at wav8k/min itself was read as max (the recipe's mode) without a word."""
    from audiosep.data.librimix import resolve_librimix_dir

    folder = tmp_path / "Libri2Mix" / "wav8k" / "min"
    (folder / "metadata").mkdir(parents=True)
    assert resolve_librimix_dir(folder, 2, 8000, "min") == folder
    with pytest.raises(UserError, match=r"min: a wav8k/min folder, but wav8k/max was asked for"):
        resolve_librimix_dir(folder, 2, 8000, "max")
    with pytest.raises(UserError, match=r"a wav8k/min folder, but wav16k/min was asked for"):
        resolve_librimix_dir(folder, 2, 16000, "min")
    monkeypatch.chdir(folder)  # "." from inside it is the same folder (reviewer: it was accepted)
    with pytest.raises(UserError, match=r"a wav8k/min folder, but wav16k/max was asked for"):
        resolve_librimix_dir(".", 2, 16000, "max")
