"""`audiosep data librimix` against the official metadata, on fabricated LibriSpeech/WHAM! trees.

Audio of the lengths the official LibriSpeech/WHAM! CSVs list is written at the paths a few
official mixture rows name; every output is checked against an independent float64 computation
(gains, scipy's resample_poly as the official script, truncation or zero-padding, sums).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from audiosep.cli import main
from audiosep.data.prep import librimix_generate
from audiosep.io import TEMP_SUFFIX, is_temp_for, temp_prefix

METADATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "librimix_metadata" / "metadata"
LSB = 1.0 / 32768
SHORT_TRAIN_NOISE = 20000  # WHAM! train lengths are not in the shared CSVs: short, to exercise the extension


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def shortest_rows(mixture_csv: Path, speech_lengths: dict[str, int], n_src: int, count: int) -> list[dict]:
    """The ``count`` rows whose longest source is shortest (keeps the fabricated audio tiny)."""
    rows = read_csv(mixture_csv)
    key = lambda row: max(speech_lengths[row[f"source_{i + 1}_path"]] for i in range(n_src))  # noqa: E731
    return sorted(rows, key=key)[:count]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """LibriSpeech + WHAM! trees holding the inputs of a few official rows, and their metadata CSVs."""
    if not METADATA.is_dir():
        pytest.skip(f"official LibriMix metadata not found at {METADATA} (see ../shared/data/README.md)")
    root = tmp_path_factory.mktemp("corpus")
    speech = {}
    for subset in ("dev-clean", "train-clean-100"):
        speech |= {
            r["origin_path"]: int(r["length"]) for r in read_csv(METADATA / "LibriSpeech" / f"{subset}.csv")
        }
    noise = {r["origin_path"]: int(r["length"]) for r in read_csv(METADATA / "Wham_noise" / "dev.csv")}
    picks = {
        (2, "dev-clean"): shortest_rows(METADATA / "Libri2Mix" / "libri2mix_dev-clean.csv", speech, 2, 2),
        (2, "train-clean-100"): shortest_rows(
            METADATA / "Libri2Mix" / "libri2mix_train-clean-100.csv", speech, 2, 1
        ),
        (3, "dev-clean"): shortest_rows(METADATA / "Libri3Mix" / "libri3mix_dev-clean.csv", speech, 3, 1),
    }
    rng = np.random.default_rng(0)
    for (n_src, subset), rows in picks.items():
        folder = root / "metadata" / f"Libri{n_src}Mix"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"libri{n_src}mix_{subset}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        for row in rows:
            for i in range(n_src):
                path = root / "LibriSpeech" / row[f"source_{i + 1}_path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                audio = np.clip(0.03 * rng.standard_normal(speech[row[f"source_{i + 1}_path"]]), -1, 1)
                sf.write(path, audio, 16000, subtype="PCM_16")
            path = root / "wham_noise" / row["noise_path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            length = noise.get(row["noise_path"], SHORT_TRAIN_NOISE)
            sf.write(path, np.clip(0.03 * rng.standard_normal((length, 2)), -1, 1), 16000, subtype="PCM_16")
    return {"root": root, "picks": picks}


def extended_noise_reference(noise: np.ndarray, length: int) -> np.ndarray:
    """The official loop extension as a closed form: period ``L - 8001``, Hann cross-fade at each seam."""
    window = np.hanning(16001)
    rise, fall, overlap = window[:8001], window[8000::-1], 8001
    period = len(noise) - overlap
    last = 0
    while last * period + len(noise) < length:
        last += 1
    out = np.empty(length)
    for t in range(length):
        segment, offset = divmod(t, period)
        if segment > last:  # tail of the last copy, never faded out
            out[t] = noise[period + t - last * period - period]
        elif segment >= 1 and offset < overlap:
            out[t] = noise[period + offset] * fall[offset] + noise[offset] * rise[offset]
        else:
            out[t] = noise[offset]
    return out


def reference_files(row: dict, n_src: int, sample_rate: int, mode: str, root: Path) -> dict[str, np.ndarray]:
    """Independent float64 computation of every output of one row."""
    sources = [sf.read(root / "LibriSpeech" / row[f"source_{i + 1}_path"])[0] for i in range(n_src)]
    longest = max(len(s) for s in sources)
    noise = sf.read(root / "wham_noise" / row["noise_path"])[0][:longest, 0]
    if len(noise) < longest:
        noise = extended_noise_reference(noise, longest)
    gains = [float(row[f"source_{i + 1}_gain"]) for i in range(n_src)] + [float(row["noise_gain"])]
    signals = [
        resample_poly(s * g, sample_rate, 16000) for s, g in zip([*sources, noise], gains, strict=True)
    ]
    length = (min if mode == "min" else max)(len(s) for s in signals)
    signals = [np.pad(s[:length], (0, length - len(s[:length]))) for s in signals]
    files = {f"s{i + 1}": s for i, s in enumerate(signals[:n_src])} | {"noise": signals[-1]}
    files["mix_clean"] = sum(signals[:n_src])
    files["mix_both"] = sum(signals)
    files["mix_single"] = signals[0] + signals[-1]
    return files


def run_librimix(
    root: Path, out: Path, n_src: int, sample_rate: int, mode: str, types: str, *extra: str
) -> int:
    return main(
        ["data", "librimix", "--librispeech", str(root / "LibriSpeech"), "--wham", str(root / "wham_noise")]
        + ["--metadata", str(root / "metadata"), "--out", str(out), "--n-src", str(n_src)]
        + ["--sample-rate", str(sample_rate), "--mode", mode, "--types", types, "--workers", "1", *extra]
    )


@pytest.mark.parametrize(
    ("n_src", "sample_rate", "mode", "types"),
    [
        (2, 8000, "min", "mix_clean,mix_both,mix_single"),
        (2, 16000, "max", "mix_both"),
        (3, 8000, "max", "mix_clean"),
    ],
)
def test_outputs_match_an_independent_computation(corpus, tmp_path, n_src, sample_rate, mode, types):
    assert run_librimix(corpus["root"], tmp_path, n_src, sample_rate, mode, types) == 0
    mode_dir = tmp_path / f"Libri{n_src}Mix" / f"wav{sample_rate // 1000}k" / mode
    folders = [f"s{i + 1}" for i in range(n_src)] + types.split(",")
    folders += [] if types == "mix_clean" else ["noise"]
    checked = 0
    for (rows_n_src, subset), rows in corpus["picks"].items():
        if rows_n_src != n_src:
            continue
        split = subset.replace("-clean", "")
        for row in rows:
            expected = reference_files(row, n_src, sample_rate, mode, corpus["root"])
            for folder in folders:
                audio, rate = sf.read(mode_dir / split / folder / f"{row['mixture_ID']}.wav")
                assert rate == sample_rate
                assert audio.shape == expected[folder].shape, (folder, row["mixture_ID"])
                np.testing.assert_allclose(audio, expected[folder], rtol=0, atol=LSB + 1e-6)
                checked += 1
        for mix_type in types.split(","):
            listed = read_csv(mode_dir / "metadata" / f"mixture_{split}_{mix_type}.csv")
            assert [r["mixture_ID"] for r in listed] == [r["mixture_ID"] for r in rows]
            for entry in listed:
                assert sf.info(entry["mixture_path"]).frames == int(entry["length"])
                assert Path(entry["source_1_path"]).is_file()
    assert checked >= len(folders)


def test_min_mode_is_bit_exact_and_metrics_match(corpus, tmp_path):
    """8 kHz min: int16 samples equal the official float32 operations quantised by soundfile."""
    assert run_librimix(corpus["root"], tmp_path, 2, 8000, "min", "mix_clean,mix_both") == 0
    mode_dir = tmp_path / "Libri2Mix" / "wav8k" / "min"
    row = corpus["picks"][(2, "dev-clean")][0]
    sources = [
        sf.read(corpus["root"] / "LibriSpeech" / row[f"source_{i + 1}_path"], dtype="float32")[0]
        for i in (0, 1)
    ]
    noise = sf.read(corpus["root"] / "wham_noise" / row["noise_path"], dtype="float32")[0][:, 0]
    parts = [
        s * float(row[k])
        for s, k in zip([*sources, noise], ["source_1_gain", "source_2_gain", "noise_gain"], strict=True)
    ]
    parts = [resample_poly(p, 8000, 16000) for p in parts]
    length = min(len(p) for p in parts)
    parts = [p[:length] for p in parts]
    mixture = parts[0] + parts[1]  # same float32 sum order as np.zeros_like(...) += ...
    for folder, samples in {"s1": parts[0], "s2": parts[1], "mix_clean": mixture}.items():
        buffer = io.BytesIO()
        sf.write(buffer, samples, 8000, format="WAV", subtype="PCM_16")
        buffer.seek(0)
        written = sf.read(mode_dir / "dev" / folder / f"{row['mixture_ID']}.wav", dtype="int16")[0]
        np.testing.assert_array_equal(written, sf.read(buffer, dtype="int16")[0])
    metrics = read_csv(mode_dir / "metadata" / "metrics_dev_mix_clean.csv")[0]
    for i, part in enumerate(parts[:2]):
        rest = mixture.astype(np.float64) - part
        snr = 10 * np.log10(np.mean(part.astype(np.float64) ** 2) / np.mean(rest**2))
        assert float(metrics[f"source_{i + 1}_SNR"]) == pytest.approx(snr, abs=1e-3)
    assert list(read_csv(mode_dir / "metadata" / "mixture_dev_mix_both.csv")[0]) == [
        "mixture_ID", "mixture_path", "source_1_path", "source_2_path", "noise_path", "length",
    ]  # fmt: skip


def snapshot(out: Path) -> dict[str, bytes]:
    """Every output file's bytes (paths in CSVs made relative to ``out``)."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != librimix_generate.JOURNAL_NAME:
            files[str(path.relative_to(out))] = path.read_bytes().replace(str(out).encode(), b"<OUT>")
    return files


def plant_temp_file(target: Path) -> Path:
    """A half-written temp file of ``target``, named exactly as :mod:`audiosep.io` names it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=TEMP_SUFFIX)
    os.write(fd, b"RIFF half a header")
    os.close(fd)
    assert is_temp_for(Path(name), target)
    return Path(name)


def test_interrupted_run_resumes_to_identical_outputs(corpus, tmp_path, monkeypatch):
    args = (2, 8000, "min", "mix_clean,mix_both,mix_single")
    assert run_librimix(corpus["root"], tmp_path / "whole", *args) == 0
    writes = []
    real_write = librimix_generate.write_wav_atomic

    def dying_write(path, samples, sample_rate):
        if len(writes) == 9:  # row 2 of dev is half written
            raise KeyboardInterrupt
        writes.append(path)
        real_write(path, samples, sample_rate)

    monkeypatch.setattr(librimix_generate, "write_wav_atomic", dying_write)
    assert run_librimix(corpus["root"], tmp_path / "cut", *args) == 130
    split_dir = tmp_path / "cut" / "Libri2Mix" / "wav8k" / "min" / "dev"
    half_written = corpus["picks"][(2, "dev-clean")][1]["mixture_ID"]
    left_over = [  # what a SIGKILL during a write leaves: audiosep.io's own temp names
        plant_temp_file(split_dir / "s1" / f"{half_written}.wav"),
        plant_temp_file(split_dir / "mix_both" / f"{half_written}.wav"),
        plant_temp_file(split_dir.parent / "metadata" / "mixture_dev_mix_clean.csv"),
    ]
    not_ours = split_dir / "s1" / ".notes.txt.tmp"  # looks alike, but no output is called notes.txt
    not_ours.write_bytes(b"keep me")
    with (split_dir / librimix_generate.JOURNAL_NAME).open("a") as handle:
        handle.write('{"mixture_id": "torn')  # a line cut by the kill
    writes.clear()
    monkeypatch.setattr(librimix_generate, "write_wav_atomic", real_write)
    assert run_librimix(corpus["root"], tmp_path / "cut", *args) == 0
    assert [path for path in left_over if path.exists()] == []
    assert not_ours.read_bytes() == b"keep me"
    not_ours.unlink()
    assert snapshot(tmp_path / "cut") == snapshot(tmp_path / "whole")
    monkeypatch.setattr(librimix_generate, "write_wav_atomic", dying_write)  # nothing left to write
    assert run_librimix(corpus["root"], tmp_path / "cut", *args) == 0 and writes == []


def test_parallel_run_equals_serial(corpus, tmp_path):
    args = (2, 8000, "max", "mix_both")
    assert run_librimix(corpus["root"], tmp_path / "one", *args) == 0
    assert run_librimix(corpus["root"], tmp_path / "two", *args, "--workers", "2") == 0
    assert snapshot(tmp_path / "two") == snapshot(tmp_path / "one")


def test_missing_input_fails_loudly_naming_it(corpus, tmp_path, capsys):
    row = corpus["picks"][(2, "dev-clean")][0]
    empty = tmp_path / "empty_wham"
    empty.mkdir()
    code = main(
        ["data", "librimix", "--librispeech", str(corpus["root"] / "LibriSpeech"), "--wham", str(empty)]
        + ["--metadata", str(corpus["root"] / "metadata"), "--out", str(tmp_path / "out"), "--splits", "dev"]
    )
    assert code == 1
    assert str(empty / row["noise_path"]) in capsys.readouterr().err
    assert not (tmp_path / "out" / "Libri2Mix" / "wav8k" / "min" / "dev" / "s1").exists()


def test_official_metadata_folder_is_found_by_split_names():
    if not METADATA.is_dir():
        pytest.skip(f"official LibriMix metadata not found at {METADATA}")
    found = librimix_generate.find_metadata_csvs(METADATA.parent, 3, ["dev", "test-clean"])
    assert [p.name for p in found] == ["libri3mix_dev-clean.csv", "libri3mix_test-clean.csv"]
    rows = librimix_generate.read_metadata_csv(found[0], 3)
    assert len(rows) == 3000 and len(rows[0].source_paths) == 3
    with pytest.raises(librimix_generate.UserError, match="train-360"):
        librimix_generate.find_metadata_csvs(METADATA.parent, 2, ["train-360"])


@pytest.fixture(scope="module")
def own_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LibriSpeech-shaped corpus (3 speakers x 3 utterances per subset, levels 26 dB apart) + WHAM!."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(1)
    for subset in ("train-clean-5", "dev-clean-2"):
        for speaker, level in [("11", 0.01), ("22", 0.05), ("33", 0.2)]:
            folder = root / "corpus" / subset / speaker / "9"
            folder.mkdir(parents=True)
            for index in range(3):
                audio = np.clip(level * rng.standard_normal(int(rng.integers(8000, 16000))), -1, 1)
                sf.write(folder / f"{speaker}-9-{index:04d}.flac", audio, 16000)
    for folder, count in (("tr", 3), ("cv", 6)):
        (root / "wham" / folder).mkdir(parents=True)
        for index in range(count):
            audio = np.clip(0.1 * rng.standard_normal((int(rng.integers(10000, 20000)), 2)), -1, 1)
            sf.write(root / "wham" / folder / f"noise{index}.wav", audio, 16000, subtype="PCM_16")
    (root / "corpus" / "SPEAKERS.TXT").write_text("; ID | SEX | SUBSET\n11 | F | x\n22 | M | x\n33 | F | x\n")
    return root


def check_recipe_row(row: dict, root: Path) -> None:
    """Independent check of one drawn row: LUFS targets, peak protection, noise long enough."""
    import pyloudnorm

    meter = pyloudnorm.Meter(16000)
    signals = [sf.read(root / "corpus" / row[f"source_{i}_path"])[0] for i in (1, 2)]
    length = max(len(s) for s in signals)
    noise = sf.read(root / "wham" / row["noise_path"])[0][:, 0]
    signals = [np.pad(s, (0, length - len(s))) for s in [*signals, noise[:length]]]
    gains = [float(row["source_1_gain"]), float(row["source_2_gain"]), float(row["noise_gain"])]
    scaled = [g * s for g, s in zip(gains, signals, strict=True)]
    peak = np.max(np.abs(sum(scaled)))
    assert peak <= 0.9 + 1e-9
    if peak < 0.9 - 1e-6:  # no mixture-level rescaling: every input met its target or peaks at 0.9
        for part, (low, high) in zip(scaled, [(-33, -25), (-33, -25), (-38, -30)], strict=True):
            loud = meter.integrated_loudness(part)
            assert low - 1e-6 <= loud <= high + 1e-6 or np.max(np.abs(part)) == pytest.approx(0.9)


def test_new_metadata_follows_the_recipe_and_generates(own_corpus, tmp_path, capsys):
    def draw(metadata: Path, workers: str) -> int:
        return main(
            ["data", "librimix", "--new-metadata", "--librispeech", str(own_corpus / "corpus")]
            + [
                "--wham",
                str(own_corpus / "wham"),
                "--metadata",
                str(metadata),
                "--out",
                str(tmp_path / "out"),
            ]
            + ["--splits", "train-clean-5,dev-clean-2", "--min-seconds", "0.5"]
            + ["--types", "mix_both", "--workers", workers, "--seed", "7"]
        )

    assert draw(tmp_path / "md", "1") == 0
    train = read_csv(tmp_path / "md" / "libri2mix_train-clean-5.csv")
    used = [row[f"source_{i}_path"] for row in train for i in (1, 2)]
    assert len(train) >= 3 and len(used) == len(set(used))  # train: each utterance at most once
    dev = read_csv(tmp_path / "md" / "libri2mix_dev-clean-2.csv")
    assert len({tuple(sorted((r["source_1_path"], r["source_2_path"]))) for r in dev}) == len(dev) >= 6
    noise_lengths = {p.name: sf.info(p).frames for p in (own_corpus / "wham" / "cv").glob("*.wav")}
    for row in dev:
        longest = max(sf.info(own_corpus / "corpus" / row[f"source_{i}_path"]).frames for i in (1, 2))
        assert row["noise_path"].startswith("cv/") and noise_lengths[Path(row["noise_path"]).name] >= longest
    for row in train + dev:
        check_recipe_row(row, own_corpus)
    for info in read_csv(tmp_path / "md" / "libri2mix_dev-clean-2_info.csv"):
        assert info["speaker_1_ID"] != info["speaker_2_ID"] and info["speaker_1_sex"] in "FM"
    assert len(
        list((tmp_path / "out" / "Libri2Mix" / "wav8k" / "min" / "dev-2" / "mix_both").glob("*.wav"))
    ) == len(dev)
    assert draw(tmp_path / "md2", "2") == 0  # seeded: same draws with another worker count
    for name in ("libri2mix_train-clean-5.csv", "libri2mix_dev-clean-2.csv"):
        assert (tmp_path / "md2" / name).read_text() == (tmp_path / "md" / name).read_text()
    assert draw(tmp_path / "md2", "1") == 0  # reused: same options
    # Another seed kept the old draw and exited 0 (reviewer).
    assert main(["data", "librimix", "--new-metadata", "--librispeech", str(own_corpus / "corpus"), "--wham",
                 str(own_corpus / "wham"), "--metadata", str(tmp_path / "md2"), "--out", str(tmp_path / "out"),
                 "--splits", "dev-clean-2", "--min-seconds", "0.5", "--types", "mix_both", "--seed", "8"]) == 1  # fmt: skip
    assert "libri2mix_dev-clean-2.csv: drawn with other options (--seed 7 -> 8); delete it" in capsys.readouterr().err


def test_unreadable_input_in_a_worker_fails_naming_it(corpus, tmp_path, capsys):
    import shutil

    shutil.copytree(corpus["root"], tmp_path / "copy")
    row = corpus["picks"][(2, "dev-clean")][1]
    bad = tmp_path / "copy" / "LibriSpeech" / row["source_2_path"]
    bad.write_bytes(bad.read_bytes()[:2000])
    assert (
        run_librimix(tmp_path / "copy", tmp_path / "out", 2, 8000, "min", "mix_clean", "--workers", "2") == 1
    )
    assert str(bad) in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_limit_below_one_is_refused(corpus, tmp_path, capsys, limit):
    # rows[:-1] would silently drop the last mixture of every split
    assert run_librimix(corpus["root"], tmp_path / "out", 2, 8000, "min", "mix_clean", "--limit", limit) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--limit must be at least 1, got {limit}" in err[0]
    assert not (tmp_path / "out").exists()


HEADER = "mixture_ID,source_1_path,source_1_gain,source_2_path,source_2_gain,noise_path,noise_gain\n"
GOOD_SOURCES = "dev-clean/1/2/1-2-0000.flac,1.0,dev-clean/1/2/1-2-0001.flac,1.0"


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    """Two LibriSpeech utterances, a WHAM! noise, and a file of the same kind outside both roots."""
    for path, audio in [
        (tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2" / "1-2-0000.flac", np.full(3200, 0.1, "float32")),
        (tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2" / "1-2-0001.flac", np.full(3200, 0.2, "float32")),
        (tmp_path / "wham" / "cv" / "n.wav", np.full((3200, 2), 0.01, "float32")),
        (tmp_path / "private" / "secret.flac", np.full(3200, 0.3, "float32")),
    ]:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, 16000)
    (tmp_path / "metadata").mkdir()
    return tmp_path


def generate_from_rows(root: Path, rows: str, types: str = "mix_clean") -> int:
    (root / "metadata" / "libri2mix_dev-clean.csv").write_text(HEADER + rows)
    return main(
        ["data", "librimix", "--librispeech", str(root / "LibriSpeech"), "--wham", str(root / "wham")]
        + ["--metadata", str(root / "metadata"), "--out", str(root / "out"), "--types", types]
    )


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_tiny_tree_generates(tiny_tree):
    rows = f"a_b,{GOOD_SOURCES},cv/n.wav,0.5\n"
    assert generate_from_rows(tiny_tree, rows, "mix_both") == 0
    assert (tiny_tree / "out" / "Libri2Mix" / "wav8k" / "min" / "dev" / "mix_both" / "a_b.wav").is_file()


@pytest.mark.parametrize(
    "mixture_id",
    [
        "../../../../../../private/written",  # from out/Libri2Mix/wav8k/min/dev/s1 up to tmp_path
        "{root}/private/written",
        "",
        "..\\..\\written",
        "a..b",
        "a\tb",
        "ok",  # repeats line 2
    ],
)
def test_a_mixture_id_that_is_not_a_plain_unique_file_name_is_refused_before_any_write(
    tiny_tree, capsys, mixture_id
):
    mixture_id = mixture_id.format(root=tiny_tree)
    before = all_files(tiny_tree)
    rows = f"ok,{GOOD_SOURCES},,\n\"{mixture_id}\",{GOOD_SOURCES},,\n"
    assert generate_from_rows(tiny_tree, rows) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"libri2mix_dev-clean.csv:3: mixture_ID {mixture_id!r}" in err[0]
    csv_name = "metadata/libri2mix_dev-clean.csv"
    assert {k: v for k, v in all_files(tiny_tree).items() if k != csv_name} == before
    assert not (tiny_tree / "out").exists()


@pytest.mark.parametrize(
    ("column", "path"),
    [
        ("source_2_path", "../private/secret.flac"),
        ("source_2_path", "{root}/private/secret.flac"),
        ("source_2_path", "dev-clean/../../private/secret.flac"),
        ("noise_path", "../private/secret.flac"),
    ],
)
def test_an_input_outside_its_corpus_root_is_refused_before_any_write(tiny_tree, capsys, column, path):
    path = path.format(root=tiny_tree)
    source_2, noise = "dev-clean/1/2/1-2-0001.flac", "cv/n.wav"
    source_2, noise = (path, noise) if column == "source_2_path" else (source_2, path)
    rows = f"a_b,{GOOD_SOURCES},cv/n.wav,0.5\n"
    rows += f"c_d,dev-clean/1/2/1-2-0000.flac,1.0,{source_2},1.0,{noise},0.5\n"
    assert generate_from_rows(tiny_tree, rows, "mix_both") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"libri2mix_dev-clean.csv:3: {column} {path!r} is not a path inside" in err[0]
    assert not (tiny_tree / "out").exists()


def test_a_corpus_folder_that_links_to_another_disk_is_the_users_layout_and_is_read(tiny_tree):
    """Only the metadata's text is checked: a symlinked subfolder inside the corpus root is fine."""
    (tiny_tree / "LibriSpeech" / "dev-clean" / "link").symlink_to(tiny_tree / "LibriSpeech" / "dev-clean" / "1")
    rows = "a_b,dev-clean/link/2/1-2-0000.flac,1.0,dev-clean/1/2/1-2-0001.flac,1.0,,\n"
    assert generate_from_rows(tiny_tree, rows) == 0


def _edit_gain(root: Path, column: str, value: str) -> None:
    """Set ``column`` of the first row of the Libri2Mix dev-clean CSV below ``root`` to ``value``."""
    path = root / "metadata" / "Libri2Mix" / "libri2mix_dev-clean.csv"
    rows = read_csv(path)
    rows[0][column] = value
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_row_whose_gains_changed_is_regenerated_on_a_rerun(corpus, tmp_path):
    import shutil

    root = Path(shutil.copytree(corpus["root"], tmp_path / "corpus"))
    args = (2, 8000, "min", "mix_clean")
    assert run_librimix(root, tmp_path / "out", *args) == 0
    first = read_csv(root / "metadata" / "Libri2Mix" / "libri2mix_dev-clean.csv")[0]
    _edit_gain(root, "source_1_gain", str(float(first["source_1_gain"]) / 2))
    assert run_librimix(root, tmp_path / "out", *args) == 0  # into the same folder: a resume
    assert run_librimix(root, tmp_path / "fresh", *args) == 0
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "fresh")


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "1e30"])
def test_a_gain_that_is_not_a_plausible_number_is_refused(corpus, tmp_path, capsys, value):
    import shutil

    root = Path(shutil.copytree(corpus["root"], tmp_path / "corpus"))
    _edit_gain(root, "source_2_gain", value)
    assert run_librimix(root, tmp_path / "out", 2, 8000, "min", "mix_clean") == 1
    err = capsys.readouterr().err
    assert "libri2mix_dev-clean.csv:2: bad gain value" in err and f"gain {value!r} is not a number" in err


def test_a_noise_path_without_its_gain_is_refused(corpus, tmp_path, capsys):
    """An empty noise_gain made noise/ and mix_both/ files of constant -32768, exit 0 (reviewer)."""
    import shutil

    root = Path(shutil.copytree(corpus["root"], tmp_path / "corpus"))
    _edit_gain(root, "noise_gain", "")
    assert run_librimix(root, tmp_path / "out", 2, 8000, "min", "mix_clean") == 1
    err = capsys.readouterr().err
    assert "libri2mix_dev-clean.csv:2: bad gain value (noise_path and noise_gain must be both set" in err


def test_a_non_utf8_csv_an_out_file_and_a_read_only_out_are_one_line(corpus, tmp_path, capsys):
    """Each was a traceback (UnicodeDecodeError, NotADirectoryError, PermissionError) (reviewer)."""
    import os
    import shutil

    root = Path(shutil.copytree(corpus["root"], tmp_path / "corpus"))
    csv_path = root / "metadata" / "Libri2Mix" / "libri2mix_dev-clean.csv"
    good = csv_path.read_bytes()
    csv_path.write_bytes(good.replace(b"mixture_ID", b"mixture_\xffID", 1))
    assert run_librimix(root, tmp_path / "out", 2, 8000, "min", "mix_clean") == 1
    assert "libri2mix_dev-clean.csv: not UTF-8 text (byte 8)" in capsys.readouterr().err
    csv_path.write_bytes(good)
    (tmp_path / "a_file").write_text("x")
    assert run_librimix(root, tmp_path / "a_file", 2, 8000, "min", "mix_clean") == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "read_only").mkdir(mode=0o500)
        assert run_librimix(root, tmp_path / "read_only", 2, 8000, "min", "mix_clean") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Permission denied" in err[0]


def test_a_rerun_on_another_corpus_at_the_same_paths_regenerates(corpus, tmp_path):
    """The journal keyed rows by relative paths and gains: pointed at another LibriSpeech with the same file
    names, a rerun kept the old mixtures ("0 generated, 4 already done") (reviewer)."""
    import shutil

    first = Path(shutil.copytree(corpus["root"], tmp_path / "first"))
    second = Path(shutil.copytree(corpus["root"], tmp_path / "second"))
    for flac in sorted((second / "LibriSpeech").rglob("*.flac")):
        audio, rate = sf.read(flac, dtype="float32")
        sf.write(flac, 0.5 * audio, rate)  # other recordings at the same paths
    args = (2, 8000, "min", "mix_clean")
    assert run_librimix(first, tmp_path / "out", *args) == 0
    assert run_librimix(second, tmp_path / "out", *args) == 0  # the same --out: a resume
    assert run_librimix(second, tmp_path / "fresh", *args) == 0
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "fresh")


def test_a_metadata_csv_saved_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "libri2mix_dev-clean.csv"
    path.write_text("mixture_ID,source_1_path,source_1_gain,source_2_path,source_2_gain,noise_path,noise_gain\n"
                    "a_b,x/a.flac,0.5,x/b.flac,0.7,,\n", encoding="utf-8-sig")  # fmt: skip
    (row,) = librimix_generate.read_metadata_csv(path, 2)
    assert row.mixture_id == "a_b" and row.source_gains == (0.5, 0.7)
