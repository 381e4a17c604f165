"""ASR data: JSON-lines manifests, an utterance Dataset, duration-bucketed batches, a DataModule.

A manifest line is ``{"audio_filepath": ..., "duration": seconds, "text": ...}`` (NeMo's format);
relative paths are resolved against the manifest's folder. Batches hold utterances of similar
duration (little padding) and are shuffled as whole batches; batch size is a count, a total
duration, or both. Text is returned raw: the task owns the tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from audiosep.data.audio import read_audio, resample, to_mono
from audiosep.data.sampling import (
    check_loader_sizes,
    follow_trainer_epoch,
    pinned_epoch,
    resume_position,
    resume_state,
    trained_batches,
)
from audiosep.errors import ConfigError, UserError, brief_repr
from audiosep.io import atomic_write_text

REQUIRED_KEYS = ("audio_filepath", "duration", "text")
DURATION_SLACK, DURATION_SLACK_S = 0.05, 0.1  # a file may run 5 % + 0.1 s past its row's (rounded) duration


@dataclass(frozen=True)
class Utterance:
    """One manifest entry with an absolute audio path."""

    audio_filepath: str
    duration: float
    text: str


def read_manifest(
    path: str | os.PathLike, min_duration: float = 0.0, max_duration: float | None = None, audio: bool = True
) -> list[Utterance]:
    """Read a JSON-lines manifest, keeping utterances with ``min_duration <= duration <= max_duration``.

    ``audio``: the kept rows' audio files must exist (False where only the text is read, as for references).

    Raises:
        ValueError: a missing file, or a line that is not UTF-8 JSON, not an object, lacks a required
            key or holds a value of the wrong type, or a kept row's audio file is missing (file and line
            number given).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found")
    entries, missing = [], []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            utterance = parse_manifest_line(line, path.parent)
        except ValueError as err:
            raise ConfigError(f"{path}:{number}: {err}") from err
        duration = utterance.duration
        if min_duration <= duration and (max_duration is None or duration <= max_duration):
            entries.append(utterance)
            if audio and not os.path.isfile(utterance.audio_filepath):  # else found hours into an epoch
                missing.append((number, utterance.audio_filepath))
    if missing:
        number, first = missing[0]
        raise ConfigError(f"{path}:{number}: audio file {first} not found ({len(missing)} of its files missing)")
    return entries


def bad_value(row: dict, key: str, need: str) -> ValueError:
    """The error for a manifest value of the wrong kind (shown short, so the message stays one line)."""
    return ValueError(f"{key} must be {need}, got {brief_repr(row[key], 60)}")


def parse_manifest_line(line: bytes, folder: Path) -> Utterance:
    """One manifest line as an :class:`Utterance` (relative paths joined to ``folder``); raises
    ``ValueError`` saying what is wrong, for :func:`read_manifest` to prefix with the file and line."""
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg})") from err
    except RecursionError:  # 100 000 nested brackets: a traceback (reviewer)
        raise ValueError("nested too deeply to be a manifest line") from None
    if not isinstance(row, dict):
        raise ValueError(f"not a JSON object (got {type(row).__name__})")
    missing = [key for key in REQUIRED_KEYS if key not in row]
    if missing:
        raise ValueError(f"missing {missing} (need {', '.join(REQUIRED_KEYS)})")
    if not isinstance(row["audio_filepath"], str) or not row["audio_filepath"]:
        raise bad_value(row, "audio_filepath", "a non-empty string")
    if not isinstance(row["text"], str):
        raise bad_value(row, "text", "a string")
    try:
        duration = float(row["duration"])  # a number, or one written as a string
    except (TypeError, ValueError, OverflowError):
        duration = math.nan
    if isinstance(row["duration"], bool) or not 0 <= duration < math.inf:
        raise bad_value(row, "duration", "a finite number of seconds >= 0")
    audio = Path(row["audio_filepath"])
    return Utterance(str(audio if audio.is_absolute() else folder / audio), duration, row["text"])


def write_manifest(path: str | os.PathLike, utterances: Sequence[Utterance]) -> None:
    """Write utterances as a JSON-lines manifest (paths as given)."""
    lines = [
        json.dumps({"audio_filepath": u.audio_filepath, "duration": u.duration, "text": u.text})
        for u in utterances
    ]
    atomic_write_text(path, "".join(line + "\n" for line in lines))  # whole or not at all


class ASRDataset(Dataset):
    """Utterances as ``(waveform [N] float32 at sample_rate, text)``; mono mixdown, resampled if needed."""

    def __init__(self, utterances: Sequence[Utterance], sample_rate: int) -> None:
        self.utterances = list(utterances)
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        utterance = self.utterances[index]
        check_listed_duration(utterance)
        waveform, rate = read_audio(utterance.audio_filepath)  # [C, N]
        return resample(to_mono(waveform), rate, self.sample_rate), utterance.text


def check_listed_duration(utterance: Utterance) -> None:
    """Refuse, from its header, a file much longer than its manifest row says: batches are sized (and
    ``max_duration`` filters) by the row, so a 60 s file listed as 1 s would be read and batched whole."""
    try:
        actual = sf.info(utterance.audio_filepath).duration
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return  # read_audio names the problem
    if actual > utterance.duration * (1 + DURATION_SLACK) + DURATION_SLACK_S:
        raise UserError(f"{utterance.audio_filepath}: {actual:.2f} s of audio, but its manifest row says "
                        f"{utterance.duration:.2f} s; fix the manifest's duration")  # fmt: skip


def collate_utterances(items: Sequence[tuple[Tensor, str]]) -> tuple[Tensor, Tensor, list[str]]:
    """Zero-pad to ``(waveforms [B, N_max], lengths [B], texts)``."""
    lengths = torch.tensor([wave.shape[-1] for wave, _ in items], dtype=torch.long)
    waves = torch.zeros(len(items), int(lengths.max()))
    for row, (wave, _) in enumerate(items):
        waves[row, : wave.shape[-1]] = wave
    return waves, lengths, [text for _, text in items]


class DurationBucketSampler(Sampler[list[int]]):
    """Batches of utterances of similar duration, shuffled as whole batches each epoch.

    Utterances are sorted by duration (with a little seeded jitter so ties mix), cut into batches
    of at most ``batch_size`` items and ``max_batch_duration`` seconds, and the batch order is
    shuffled. With several processes each rank takes every ``num_replicas``-th batch; all ranks
    get the same number of batches (the list is padded by repeating batches).

    Args:
        durations: seconds per utterance.
        batch_size: maximum utterances per batch (``None`` = no count limit).
        max_batch_duration: maximum total seconds per batch (``None`` = no duration limit).
        shuffle: shuffle the batch order (and jitter the sort) each epoch.
        seed: base seed; the epoch is added (call :meth:`set_epoch`).
        num_replicas, rank: distributed sharding.
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int | None = 32,
        max_batch_duration: float | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size is None and max_batch_duration is None:
            raise ValueError("set batch_size, max_batch_duration or both")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.durations = list(durations)
        self.batch_size, self.max_batch_duration = batch_size, max_batch_duration
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self._skip: tuple[int, int] | None = None
        self.epoch_source: Callable[[], int] | None = None  # see audiosep.data.sampling.follow_trainer_epoch

    @property
    def sampler(self) -> DurationBucketSampler:
        """This batch sampler itself: Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler``
        (never on the batch sampler), so without it every epoch had epoch 0's batches in epoch 0's order."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shuffle for ``epoch`` (Lightning calls this, through :attr:`sampler`)."""
        self.epoch = epoch

    def resume(self, epoch: int, skip: int) -> None:
        """Start the next pass of ``epoch`` at this rank's batch ``skip``, the ones before it moved to the end.

        Why rotate, not drop: the length stays that of the epoch; Lightning, which restores its batch
        counter, ends the resumed epoch after the batches it still owed, so the moved ones are not trained.
        """
        self._skip = (epoch, skip)

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        jitter = [rng.uniform(-0.05, 0.05) if self.shuffle else 0.0 for _ in self.durations]
        order = sorted(range(len(self.durations)), key=lambda i: self.durations[i] * (1 + jitter[i]))
        batches: list[list[int]] = []
        current: list[int] = []
        for index in order:
            full = self.batch_size is not None and len(current) >= self.batch_size
            longest = max([self.durations[i] for i in current] + [self.durations[index]])
            too_long = (
                self.max_batch_duration is not None and longest * (len(current) + 1) > self.max_batch_duration
            )
            if current and (full or too_long):
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        if self.num_replicas > 1 and batches:
            per_rank = -(-len(batches) // self.num_replicas)
            batches = (batches * self.num_replicas)[: per_rank * self.num_replicas]
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        pinned = pinned_epoch(self)
        if pinned is not None:
            self.epoch = pinned
        batches = self._rank_batches()
        if self._skip is not None and self._skip[0] == self.epoch:
            skip = self._skip[1] % max(1, len(batches))
            batches = batches[skip:] + batches[:skip]
            self._skip = None
        yield from batches

    def __len__(self) -> int:
        return len(self._rank_batches())


class ASRDataModule(pl.LightningDataModule):
    """Train/val/test loaders from JSON-lines manifests, batched by duration.

    Args:
        train_manifest: manifest path(s) for training (several are concatenated).
        val_manifest: manifest path(s) for validation.
        test_manifest: manifest path(s) for testing (optional).
        sample_rate: rate the audio is resampled to (must match the task's features).
        batch_size: maximum utterances per batch.
        max_batch_duration: maximum padded seconds per batch (``None`` = count only).
        min_duration, max_duration: training utterances outside this range are skipped (seconds).
        num_workers: DataLoader worker processes.
        seed: shuffling seed.
    """

    def __init__(
        self,
        train_manifest: str | list[str],
        val_manifest: str | list[str],
        test_manifest: str | list[str] | None = None,
        sample_rate: int = 16000,
        batch_size: int = 32,
        max_batch_duration: float | None = None,
        min_duration: float = 0.1,
        max_duration: float | None = 16.7,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.manifests = {"train": train_manifest, "val": val_manifest, "test": test_manifest}
        self.sample_rate, self.batch_size, self.max_batch_duration = (
            sample_rate,
            batch_size,
            max_batch_duration,
        )
        self.min_duration, self.max_duration = min_duration, max_duration
        self.num_workers, self.seed = num_workers, seed
        self.datasets: dict[str, ASRDataset] = {}
        self._train_sampler: DurationBucketSampler | None = None
        self._resume: dict[str, Any] = {}

    def _load(self, split: str) -> ASRDataset:
        paths = self.manifests[split]
        if paths is None:
            raise ConfigError(f"no {split}_manifest configured")
        limits = (self.min_duration, self.max_duration) if split == "train" else (0.0, None)
        paths = [paths] if isinstance(paths, str | os.PathLike) else paths
        utterances = [u for p in paths for u in read_manifest(p, *limits)]
        if not utterances:
            raise ConfigError(f"{split} manifest(s) {', '.join(map(str, paths))} hold no usable utterances")
        return ASRDataset(utterances, self.sample_rate)

    def setup(self, stage: str | None = None) -> None:
        check_loader_sizes(self.batch_size, self.num_workers)  # in __init__, a traceback from the recipe parser
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "fit", ())
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self._load(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.datasets[split] = self._load(split)
        dataset = self.datasets[split]
        trainer = self.trainer
        sampler = DurationBucketSampler(
            [u.duration for u in dataset.utterances],
            self.batch_size,
            self.max_batch_duration,
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_utterances,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        self._train_sampler = loader.batch_sampler  # type: ignore[assignment]
        follow_trainer_epoch(self._train_sampler, self.trainer)
        if "batches" in self._resume:
            sampler = self._train_sampler
            sampler.set_epoch(self._resume["epoch"])  # its batch count may change with the epoch's order
            batches = trained_batches(self.trainer, len(sampler))  # type: ignore[arg-type]
            sampler.resume(*resume_position(sampler, self._resume, batches))  # type: ignore[arg-type]
            self._resume = {}
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training sampler's epoch and the batches done in it (saved in every checkpoint): a resumed
        run trains the batches an unbroken one would have, not the epoch's first ones again."""
        return resume_state(self.trainer, self._train_sampler)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
