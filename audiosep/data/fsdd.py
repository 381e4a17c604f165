"""Digit-string utterances from the Free Spoken Digit Dataset: a real-speech ASR task that trains on a CPU.

Each utterance concatenates 3-7 recordings of one speaker (short random pauses in between,
RMS-normalised) and is transcribed as digit words, e.g. ``"four two seven"``. Splits:

- ``train``: takes ``0 .. train_takes - 1`` of the training speakers;
- ``val`` and ``test``: disjoint held-out takes of the same speakers;
- ``unseen``: every take of one speaker never heard in training.

Everything is seeded, so the same arguments write the same files.
"""

from __future__ import annotations

import csv
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from audiosep.data.asr import Utterance, write_manifest
from audiosep.data.safe_paths import path_inside
from audiosep.errors import UserError, csv_row_error

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TARGET_RMS = 0.05  # about -26 dBFS


@dataclass(frozen=True)
class Recording:
    """One FSDD file: its path, speaker, take number and word."""

    path: Path
    speaker: str
    take: int
    text: str


@dataclass(frozen=True)
class FSDDSplits:
    """How many utterances to write per split and which takes/speaker go where."""

    unseen_speaker: str = "theo"
    train_takes: int = 40
    val_takes: int = 5
    num_train: int = 3000
    num_val: int = 200
    num_test: int = 300
    num_unseen: int = 300
    min_digits: int = 3
    max_digits: int = 7
    max_pause: float = 0.15


FSDD_COLUMNS = ("id", "path", "speaker", "text")


def read_fsdd(root: str | os.PathLike) -> list[Recording]:
    """Recordings listed in ``root/manifest.csv`` (``id,path,speaker,...,text``; ids end in ``_take``).

    Raises:
        UserError: ``manifest.csv`` is missing, lacks a column, or a row has no numeric take or a path
            outside ``root`` (one line naming the file and line; they were tracebacks, and absolute paths
            were read from anywhere).
    """
    root = Path(root)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise UserError(f"{manifest}: FSDD manifest not found")
    with manifest.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM said KeyError: 'id'
        reader = csv.DictReader(handle)
        try:
            missing = [column for column in FSDD_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{manifest}: not an FSDD manifest (missing columns {missing})")
            return [_recording(root, row, f"{manifest}:{reader.line_num}") for row in reader]
        except UnicodeDecodeError as err:  # tracebacks both (reviewer)
            raise UserError(f"{manifest}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
        except csv.Error as err:  # a cell over csv's field limit (128 KiB)
            raise csv_row_error(manifest, reader, err) from None


def _recording(root: Path, row: dict[str, str], where: str) -> Recording:
    """One manifest row as a :class:`Recording` (its take from the id's last ``_`` field)."""
    take = row["id"].rsplit("_", 1)[-1]
    if not take.isdigit():
        raise UserError(f"{where}: id {row['id']!r} does not end in _TAKE (a take number)")
    return Recording(path_inside(root, row["path"], f"{where}: path"), row["speaker"], int(take), row["text"])


def _pools(recordings: list[Recording], splits: FSDDSplits) -> dict[str, dict[str, list[Recording]]]:
    """split -> speaker -> recordings it may use."""
    speakers = sorted({r.speaker for r in recordings})
    if splits.unseen_speaker not in speakers:
        raise ValueError(f"unseen speaker {splits.unseen_speaker!r} not in FSDD speakers {speakers}")
    pools: dict[str, dict[str, list[Recording]]] = defaultdict(lambda: defaultdict(list))
    val_end = splits.train_takes + splits.val_takes
    for rec in recordings:
        if rec.speaker == splits.unseen_speaker:
            split = "unseen"
        else:
            split = "train" if rec.take < splits.train_takes else "val" if rec.take < val_end else "test"
        pools[split][rec.speaker].append(rec)
    return pools


def speaker_utterance(parts: list[Recording], rng: random.Random, max_pause: float) -> tuple[np.ndarray, int]:
    """Concatenate recordings with random pauses; RMS-normalise; returns ``(audio, rate)``."""
    pieces, rate = [], None
    for index, rec in enumerate(parts):
        audio, file_rate = sf.read(str(rec.path), dtype="float32", always_2d=True)
        if rate is not None and file_rate != rate:
            raise ValueError(f"{rec.path}: {file_rate} Hz, expected {rate} Hz like the rest")
        rate = file_rate
        if index:
            pieces.append(np.zeros(int(rng.uniform(0.02, max_pause) * rate), dtype=np.float32))
        pieces.append(audio.mean(axis=1))
    audio = np.concatenate(pieces)
    rms = float(np.sqrt(np.mean(audio**2))) or 1.0
    return np.clip(audio * (TARGET_RMS / rms), -1.0, 1.0), int(rate)


def build_fsdd_asr(
    fsdd_root: str | os.PathLike, out_dir: str | os.PathLike, splits: FSDDSplits | None = None, seed: int = 0
) -> dict[str, Path]:
    """Write digit-string wavs and JSON-lines manifests under ``out_dir``.

    Returns:
        split name (``train``, ``val``, ``test``, ``unseen``) -> manifest path.
    """
    splits = splits or FSDDSplits()
    if not 1 <= splits.min_digits <= splits.max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {splits.min_digits}, {splits.max_digits}")
    pools = _pools(read_fsdd(fsdd_root), splits)
    counts = {
        "train": splits.num_train,
        "val": splits.num_val,
        "test": splits.num_test,
        "unseen": splits.num_unseen,
    }
    out_dir = Path(out_dir)
    manifests = {}
    for offset, (split, count) in enumerate(counts.items()):
        rng = random.Random(seed * 1000 + offset)
        speakers = sorted(pools[split])
        if count and not speakers:  # train_takes=45, val_takes=5 left test none: "integer modulo by zero"
            raise UserError(f"no FSDD recordings for the {split} split (train_takes {splits.train_takes}, "
                            f"val_takes {splits.val_takes}); it asks for {count} utterances")  # fmt: skip
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        utterances = []
        for index in range(count):
            speaker = speakers[index % len(speakers)]
            parts = rng.choices(pools[split][speaker], k=rng.randint(splits.min_digits, splits.max_digits))
            audio, rate = speaker_utterance(parts, rng, splits.max_pause)
            name = f"{split}/{speaker}_{index:05d}.wav"
            sf.write(out_dir / name, audio, rate, subtype="PCM_16")
            text = " ".join(rec.text for rec in parts)
            utterances.append(Utterance(name, round(len(audio) / rate, 4), text))
        manifests[split] = out_dir / f"{split}.jsonl"
        write_manifest(manifests[split], utterances)
    return manifests
