"""Metadata and manifest CSV readers: a broken file is one line naming it and the row, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiosep.data.fsdd import read_fsdd
from audiosep.data.librimix import read_mixture_rows
from audiosep.data.prep.librimix_generate import read_metadata_csv
from audiosep.errors import UserError

HUGE = "x" * 200_000  # beyond csv's field limit (128 KiB): csv.Error escaped all three readers (reviewer)


def _mixture_csv(path: Path) -> Path:
    path.write_text(f"mixture_ID,mixture_path,length\nok,a.wav,8000\n{HUGE},b.wav,8000\n", encoding="utf-8")
    return path


def _metadata_csv(path: Path) -> Path:
    header = "mixture_ID,source_1_path,source_1_gain,source_2_path,source_2_gain,noise_path,noise_gain"
    path.write_text(f"{header}\nok,a.flac,1,b.flac,1,,\n{HUGE},a.flac,1,b.flac,1,,\n", encoding="utf-8")
    return path


def _fsdd_manifest(root: Path) -> Path:
    (root / "manifest.csv").write_text(f"id,path,speaker,text\n0_jackson_0,a.wav,jackson,zero\n0_x_1,{HUGE},x,zero\n")
    return root


@pytest.mark.parametrize(
    ("make", "read"),
    [
        (lambda tmp: _mixture_csv(tmp / "mixture.csv"), lambda path: read_mixture_rows(path, 2)),
        (lambda tmp: _metadata_csv(tmp / "metadata.csv"), lambda path: read_metadata_csv(path, 2)),
        (_fsdd_manifest, read_fsdd),
    ],
    ids=["librimix_mixtures", "librimix_generate", "fsdd"],
)
def test_a_cell_beyond_the_csv_field_limit_is_one_line_naming_the_file_and_row(tmp_path: Path, make, read) -> None:
    path = make(tmp_path)
    with pytest.raises(UserError) as refused:
        read(path)
    message = str(refused.value)
    assert message.endswith(":3: not a CSV row (field larger than field limit (131072))") and "\n" not in message
    assert message.startswith(str(path if path.is_file() else path / "manifest.csv"))


def test_an_fsdd_manifest_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_bytes(b"id,path,speaker,text\n0_j\xe9_0,a.wav,j,zero\n")
    with pytest.raises(UserError, match=r"manifest.csv: not UTF-8 text \(byte \d+\); save it as UTF-8$"):
        read_fsdd(tmp_path)
