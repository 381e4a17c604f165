"""`audiosep data librispeech`: manifests from a fabricated LibriSpeech tree with a corrupt flac."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosep.cli import main
from audiosep.data.librispeech import list_utterances
from audiosep.data.prep.librispeech_manifest import read_speaker_sexes

SAMPLE_RATE = 16000


def fabricate_librispeech(root: Path, subset: str, seed: int = 0) -> dict[str, tuple[int, str, str]]:
    """Write ``root/subset/<spk>/<chap>/*.flac`` + transcripts; returns ``{utt_id: (frames, text, speaker)}``."""
    rng = np.random.default_rng(seed)
    expected = {}
    for speaker, chapter, count in [("19", "198", 3), ("19", "227", 1), ("1272", "128104", 2)]:
        folder = root / subset / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for index in range(count):
            utterance_id = f"{speaker}-{chapter}-{index:04d}"
            frames = int(rng.integers(2000, 6000))
            sf.write(folder / f"{utterance_id}.flac", 0.1 * rng.standard_normal(frames), SAMPLE_RATE)
            text = f"WORD{index} {'SPEECH ' * (index + 1)}".strip()
            lines.append(f"{utterance_id} {text}\n")
            expected[utterance_id] = (frames, text, speaker)
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return expected


def corrupt(path: Path) -> None:
    """Cut a flac to 60% of its bytes: the header still reads, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def read_manifest(path: Path) -> dict[str, dict]:
    return {Path(r["audio_filepath"]).stem: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_manifest_skips_and_reports_a_corrupt_flac(tmp_path, capsys, workers):
    expected = fabricate_librispeech(tmp_path / "LibriSpeech", "dev-clean")
    bad = tmp_path / "LibriSpeech" / "dev-clean" / "19" / "198" / "19-198-0001.flac"
    corrupt(bad)
    code = main(
        ["data", "librispeech", "--root", str(tmp_path / "LibriSpeech"), "--subsets", "dev-clean"]
        + ["--out", str(tmp_path / "manifests"), "--workers", workers]
    )
    assert code == 0
    manifest = read_manifest(tmp_path / "manifests" / "dev-clean.jsonl")
    assert sorted(manifest) == sorted(set(expected) - {bad.stem})
    for utterance_id, record in manifest.items():
        frames, text, speaker = expected[utterance_id]
        assert record["duration"] == pytest.approx(frames / SAMPLE_RATE, abs=1e-9)
        assert record["text"] == text and record["speaker"] == speaker
        assert Path(record["audio_filepath"]).is_absolute() and Path(record["audio_filepath"]).is_file()
    skipped = (tmp_path / "manifests" / "dev-clean.skipped.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in skipped] == [str(bad)]
    assert str(bad) in capsys.readouterr().err


def test_headers_only_still_catches_an_unreadable_file_and_missing_transcript(tmp_path):
    expected = fabricate_librispeech(tmp_path / "LS", "train-clean-100")
    chapter = tmp_path / "LS" / "train-clean-100" / "1272" / "128104"
    (chapter / "1272-128104-0000.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    sf.write(chapter / "1272-128104-0099.flac", np.zeros(3000), SAMPLE_RATE)  # no transcript line
    code = main(
        ["data", "librispeech", "--root", str(tmp_path / "LS"), "--subsets", "train-clean-100"]
        + ["--out", str(tmp_path / "m"), "--workers", "1", "--headers-only"]
    )
    assert code == 0
    manifest = read_manifest(tmp_path / "m" / "train-clean-100.jsonl")
    assert sorted(manifest) == sorted(set(expected) - {"1272-128104-0000"})
    skipped = dict(
        line.split("\t") for line in (tmp_path / "m" / "train-clean-100.skipped.tsv").read_text().splitlines()
    )
    assert set(map(lambda p: Path(p).stem, skipped)) == {"1272-128104-0000", "1272-128104-0099"}
    assert "trans.txt" in skipped[str(chapter / "1272-128104-0099.flac")]


def test_missing_subset_is_a_one_line_error(tmp_path, capsys):
    code = main(
        ["data", "librispeech", "--root", str(tmp_path), "--subsets", "dev-clean", "--out", str(tmp_path)]
    )
    assert code == 1
    assert str(tmp_path / "dev-clean") in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_a_worker_count_below_one_is_refused(tmp_path, capsys, workers):
    """-3 ran as 1, silently (reviewer)."""
    fabricate_librispeech(tmp_path / "LibriSpeech", "dev-clean")
    argv = ["data", "librispeech", "--root", str(tmp_path / "LibriSpeech"), "--subsets", "dev-clean",
            "--out", str(tmp_path / "out"), "--workers", workers]  # fmt: skip
    assert main(argv) == 1
    assert f"--workers must be at least 1, got {workers}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_second_subset_is_refused_before_the_first_is_written(tmp_path, capsys):
    """dev-clean was decoded and written, then test-clean was found missing (study reviewer)."""
    fabricate_librispeech(tmp_path / "LibriSpeech", "dev-clean")
    out = tmp_path / "manifests"
    argv = ["data", "librispeech", "--root", str(tmp_path / "LibriSpeech"), "--subsets", "dev-clean,test-clean",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 1
    assert "test-clean: LibriSpeech subset folder not found" in capsys.readouterr().err
    assert not out.exists() or not list(out.iterdir())


def test_listing_and_speakers_file(tmp_path):
    fabricate_librispeech(tmp_path, "test-clean")
    (tmp_path / "SPEAKERS.TXT").write_text(
        "; ID |SEX| SUBSET | MINUTES | NAME\n19 | F | train-clean-100 | 25.19 | Kara\n"
    )
    utterances = list_utterances(tmp_path, "test-clean")
    assert [u.utterance_id for u in utterances] == sorted(u.utterance_id for u in utterances)
    assert {u.speaker for u in utterances} == {"19", "1272"}
    assert read_speaker_sexes(tmp_path) == {"19": "F"}


@pytest.mark.parametrize(
    ("subsets", "says"),
    [("../escape", "'../escape' is not a subset folder name"), ("dev-clean/", "'dev-clean/' is not a subset"),
     (",", "no subset named"), ("..", "'..' is not a subset")],
)  # fmt: skip
def test_a_subset_that_is_not_a_folder_name_is_refused_before_writing(tmp_path, capsys, subsets, says):
    """``--subsets`` names ``<out>/<name>.jsonl``: ../x wrote outside --out, dev-clean/ a hidden .jsonl."""
    fabricate_librispeech(tmp_path / "LibriSpeech", "dev-clean")
    out = tmp_path / "sub" / "out"
    code = main(["data", "librispeech", "--root", str(tmp_path / "LibriSpeech"), "--subsets", subsets, "--out", str(out)])
    assert code == 1 and says in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()


def test_an_out_that_is_a_file_and_a_non_utf8_transcript_are_one_line_errors(tmp_path, capsys):
    fabricate_librispeech(tmp_path / "LibriSpeech", "dev-clean")
    argv = ["data", "librispeech", "--root", str(tmp_path / "LibriSpeech"), "--subsets", "dev-clean", "--out"]
    (tmp_path / "file").write_text("x")
    assert main([*argv, str(tmp_path / "file")]) == 1
    assert "--out" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"
    transcript = tmp_path / "LibriSpeech" / "dev-clean" / "19" / "198" / "19-198.trans.txt"
    transcript.write_bytes(transcript.read_bytes() + b"19-198-0009 CAF\xe9\n")  # Latin-1, not UTF-8
    assert main([*argv, str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{transcript}: not UTF-8 text" in err[0]


def test_transcripts_split_on_newlines_only_and_ignore_a_byte_order_mark(tmp_path):
    """splitlines() cut a text at U+2028, U+0085 or a form feed (the rest of the text silently lost), and a
    byte-order mark made the first id unknown (its utterance dropped as having no transcript line)."""
    from audiosep.data.librispeech import read_transcripts

    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_bytes(
        "\ufeff19-198-0000 THE CAF\u2028E IS OPEN\r\n19-198-0001 A\x0cB C\n19-198-0002 D\u0085E\n".encode())
    assert read_transcripts(chapter) == {
        "19-198-0000": "THE CAF\u2028E IS OPEN", "19-198-0001": "A\x0cB C", "19-198-0002": "D\u0085E"}


def test_transcript_lines_without_text_twice_or_tab_separated_are_handled(tmp_path):
    """An id-only line became "text": "", a repeated id kept its last line, a tab-separated line was reported
    as a missing transcript, all without a word (reviewer)."""
    from audiosep.data.librispeech import read_transcripts
    from audiosep.errors import UserError

    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    path = chapter / "19-198.trans.txt"
    path.write_text("19-198-0000\tHELLO WORLD\n19-198-0001 GOOD DAY\n")
    assert read_transcripts(chapter) == {"19-198-0000": "HELLO WORLD", "19-198-0001": "GOOD DAY"}
    for content, message in (("19-198-0000\n", ":1: 19-198-0000 has no transcript"),
                             ("19-198-0000 A\n19-198-0000 B\n", ":2: a second line for 19-198-0000")):  # fmt: skip
        path.write_text(content)
        with pytest.raises(UserError, match=message):
            read_transcripts(chapter)
