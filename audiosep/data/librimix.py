"""LibriMix in its official on-disk layout, as Datasets and a LightningDataModule.

Layout (what the official generator writes; point ``root`` at ``Libri2Mix`` or its parent)::

    Libri2Mix/wav8k/min/{train-100,train-360,dev,test}/{mix_clean,mix_both,s1,s2,noise}/<id>.wav
    Libri2Mix/wav8k/min/metadata/mixture_<split>_<mix_clean|mix_both>.csv

Files are located by ``mixture_ID`` and the layout rather than by the CSV's absolute paths, so a
moved or copied folder still works.
"""

from __future__ import annotations

import csv
import math
import random
import re
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from audiosep.audio_blocks import declared_frames
from audiosep.data.dynamic_mixing import dynamic_mixing_dataset, dynamic_mixing_loader
from audiosep.data.safe_paths import check_mixture_ids
from audiosep.data.sampling import (
    EpochSampler,
    EpochSeeded,
    EpochShuffleSampler,
    check_loader_sizes,
    check_segment,
    follow_trainer_epoch,
    resume_position,
    resume_state,
    trained_batches,
)
from audiosep.errors import UserError, csv_row_error

Task = Literal["sep_clean", "sep_noisy"]
Mode = Literal["min", "max"]
MIXTURE_FOLDER: dict[str, str] = {"sep_clean": "mix_clean", "sep_noisy": "mix_both"}


def resolve_librimix_dir(root: str | Path, n_src: int, sample_rate: int, mode: str) -> Path:
    """Find ``.../Libri{n}Mix/wav{sr}k/{mode}`` from ``root`` (that folder, ``Libri{n}Mix`` or its parent)."""
    root = Path(root).expanduser()
    tail = Path(f"wav{sample_rate // 1000}k") / mode
    real = root.resolve()  # "." from inside the folder names it too
    named = real.name in ("min", "max") and re.fullmatch(r"wav\d+k", real.parent.name) is not None
    if named and (root / "metadata").is_dir() and Path(real.parent.name, real.name) != tail:
        # the min folder read as max (or 16k as 8k) trained on other data than the recipe says
        raise UserError(f"{root}: a {real.parent.name}/{real.name} folder, but {tail} was asked for (mode, sample_rate)")
    for candidate in (root, root / tail, root / f"Libri{n_src}Mix" / tail):
        if (candidate / "metadata").is_dir():
            return candidate
    raise UserError(
        f"{root}: no LibriMix folder found (looked for metadata/ in {root}, {root / tail} and "
        f"{root / f'Libri{n_src}Mix' / tail})"
    )


SOURCE_COLUMN = re.compile(r"source_(\d+)_path")


def metadata_csv(base: Path, split: str, task: Task) -> Path:
    """The official metadata CSV of ``split`` for ``task`` in a ``Libri{n}Mix/wav{sr}k/{mode}`` folder."""
    return base / "metadata" / f"mixture_{split}_{MIXTURE_FOLDER[task]}.csv"


def read_mixture_rows(metadata_csv: Path, n_src: int) -> tuple[list[str], list[int] | None]:
    """The ``mixture_ID`` column of an official metadata CSV, in file order, and its ``length`` column
    (samples per mixture) where it has one.

    Raises:
        UserError: the file or column is missing, the CSV lists another number of sources than
            ``n_src`` (a 2-speaker model on Libri3Mix would be scored against two of three speakers),
            an id is not a plain file name (it would read files outside the split folder) or
            repeats (its mixture would be scored twice), or a length is not a whole number.
    """
    if not metadata_csv.is_file():
        raise UserError(f"{metadata_csv}: metadata file not found")
    try:
        # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name
        with metadata_csv.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "mixture_ID" not in reader.fieldnames:
                raise UserError(f"{metadata_csv}: no mixture_ID column (got {reader.fieldnames})")
            listed = sum(SOURCE_COLUMN.fullmatch(name) is not None for name in reader.fieldnames)
            if listed and listed != n_src:
                raise UserError(f"{metadata_csv}: {listed} sources per mixture (source_*_path columns), the model "
                                f"separates {n_src}; use a Libri{n_src}Mix folder or a {listed}-source model")  # fmt: skip
            has_length = "length" in reader.fieldnames
            rows = [(reader.line_num, row["mixture_ID"], row["length"] if has_length else None) for row in reader]
    except UnicodeDecodeError as err:
        raise UserError(f"{metadata_csv}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except csv.Error as err:  # a cell over csv's field limit (128 KiB): not a metadata file
        raise csv_row_error(metadata_csv, reader, err) from None
    check_mixture_ids([(line, mixture_id) for line, mixture_id, _ in rows], metadata_csv)
    ids = [mixture_id for _, mixture_id, _ in rows]
    if not has_length:
        return ids, None
    return ids, [listed_length(value, f"{metadata_csv}:{line}: length") for line, _, value in rows]


def listed_length(value: str | None, where: str) -> int:
    """A metadata CSV's ``length`` cell as a sample count; else raise at ``where``."""
    text = (value or "").strip()
    # isdigit alone takes "²" and other digits int() refuses; past 4300 digits int() refuses any
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise UserError(f"{where} {value!r} is not a whole number of samples")
    return int(text)


class LibriMixDataset(Dataset):
    """One split of LibriMix: items are ``(mixture[T], sources[S, T], mixture_id)``.

    With ``segment`` (seconds), each item is a random ``segment``-long crop (zero-padded when the
    utterance is shorter); without it, whole utterances.
    """

    def __init__(
        self,
        split_dir: Path,
        metadata_csv: Path,
        n_src: int = 2,
        task: Task = "sep_clean",
        sample_rate: int = 8000,
        segment: float | None = None,
    ) -> None:
        if task not in MIXTURE_FOLDER:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(MIXTURE_FOLDER)}")
        if segment is not None:
            check_segment(segment, sample_rate)
        self.split_dir = Path(split_dir)
        self.metadata_csv = Path(metadata_csv)
        self.ids, self.lengths = read_mixture_rows(self.metadata_csv, n_src)
        self.n_src = n_src
        extra = self.split_dir / f"s{n_src + 1}"
        if extra.is_dir():
            raise UserError(f"{extra}: this split has more than {n_src} sources per mixture, the model separates "
                            f"{n_src}; use a Libri{n_src}Mix folder")  # fmt: skip
        self.mixture_folder = MIXTURE_FOLDER[task]
        self.sample_rate = sample_rate
        self.segment_samples = None if segment is None else int(segment * sample_rate)

    def __len__(self) -> int:
        return len(self.ids)

    def _path(self, folder: str, mixture_id: str) -> Path:
        """The wav of ``mixture_id`` in one folder of the split (``mix_clean``, ``s1``, ...)."""
        return self.split_dir / folder / f"{mixture_id}.wav"

    def files(self, index: int) -> list[Path]:
        """Item ``index``'s files: its mixture, then its sources ``s1``, ``s2``, ..."""
        mixture_id = self.ids[index]
        return [self._path(folder, mixture_id) for folder in (self.mixture_folder, *(f"s{i + 1}" for i in range(self.n_src)))]

    def _read(self, folder: str, mixture_id: str, start: int, frames: int) -> Tensor:
        path = self._path(folder, mixture_id)
        try:
            data, sample_rate = sf.read(str(path), start=start, frames=frames, dtype="float32")
        except (sf.LibsndfileError, RuntimeError) as err:
            if not path.is_file():  # libsndfile says only "System error."
                raise UserError(f"{path}: no such file") from None
            raise UserError(f"{path}: cannot read audio ({err})") from err
        if sample_rate != self.sample_rate:
            raise UserError(f"{path}: sample rate {sample_rate} Hz, expected {self.sample_rate} Hz")
        if data.ndim != 1:
            raise UserError(f"{path}: {data.shape[1]} channels; LibriMix files are mono")
        bad = int(data.size - np.isfinite(data).sum())
        if bad:  # else every batch holding it is skipped as a non-finite step, and the scores are NaN
            raise UserError(f"{path}: {bad} NaN or infinite samples in frames {start}..{start + data.shape[0]}")
        declared = declared_frames(path) if frames < 0 and start == 0 else None  # whole files (evaluate)
        if declared is not None and declared != data.shape[0]:  # soundfile reads a truncated file as shorter
            raise UserError(f"{path}: truncated: the header promises {declared} frames, the file holds {data.shape[0]}")
        return torch.from_numpy(data)

    def _read_sources(self, mixture_id: str, start: int, frames: int, length: int) -> Tensor:
        """``[S, T]`` sources of one mixture, each refused unless it has the mixture's ``length``."""
        sources = []
        for folder in (f"s{i + 1}" for i in range(self.n_src)):
            source = self._read(folder, mixture_id, start, frames)
            if source.shape[-1] != length:
                raise UserError(f"{self._path(folder, mixture_id)}: {source.shape[-1]} samples where the mixture has {length}")
            sources.append(source)
        return torch.stack(sources)

    def _check_length(self, index: int, frames: int) -> None:
        """Refuse a mixture of another length than its metadata row lists (a folder of the other mode,
        ``min`` or ``max``, or a file cut short or replaced): its scores would be of other audio."""
        if self.lengths is not None and frames != self.lengths[index]:
            raise UserError(f"{self._path(self.mixture_folder, self.ids[index])}: {frames} samples, but "
                            f"{self.metadata_csv.name} lists {self.lengths[index]} for it (a folder of the "
                            "other mode, min or max, or a changed file)")  # fmt: skip

    def _crop(self, index: int, rng: np.random.Generator | None) -> tuple[int, int]:
        """Start and frame count of this item's crop (``-1`` frames = whole file)."""
        if self.segment_samples is None:
            return 0, -1
        length = sf.info(str(self._path(self.mixture_folder, self.ids[index]))).frames
        self._check_length(index, length)
        top = max(0, length - self.segment_samples)
        start = random.randint(0, top) if rng is None else int(rng.integers(0, top + 1))
        return start, self.segment_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        return self.get(index)

    def get(self, index: int, rng: np.random.Generator | None = None) -> tuple[Tensor, Tensor, str]:
        """Item ``index``; its crop is drawn from ``rng`` (default: the global ``random`` module)."""
        mixture_id = self.ids[index]
        start, frames = self._crop(index, rng)
        mixture = self._read(self.mixture_folder, mixture_id, start, frames)
        if frames < 0:
            self._check_length(index, mixture.shape[-1])
        sources = self._read_sources(mixture_id, start, frames, mixture.shape[-1])  # S, T
        if self.segment_samples is not None and mixture.shape[-1] < self.segment_samples:
            pad = self.segment_samples - mixture.shape[-1]
            mixture = torch.nn.functional.pad(mixture, (0, pad))
            sources = torch.nn.functional.pad(sources, (0, pad))
        return mixture, sources, mixture_id


def collate_padded(batch: list[tuple[Tensor, Tensor, str]]) -> tuple[Tensor, Tensor, list[str]]:
    """Stack items, zero-padding to the longest: ``(mixture[B, T], sources[B, S, T], ids)``."""
    length = max(item[0].shape[-1] for item in batch)
    mixtures = torch.stack([torch.nn.functional.pad(m, (0, length - m.shape[-1])) for m, _, _ in batch])
    sources = torch.stack([torch.nn.functional.pad(s, (0, length - s.shape[-1])) for _, s, _ in batch])
    return mixtures, sources, [item[2] for item in batch]


class LibriMixDataModule(L.LightningDataModule):
    """LibriMix train/dev/test loaders from the official folder layout.

    Args:
        root: the ``Libri2Mix``/``Libri3Mix`` folder, its parent, or the ``wav8k/min`` folder itself.
        n_src: number of speakers (2 or 3).
        sample_rate: 8000 or 16000 (selects ``wav8k``/``wav16k``).
        mode: ``min`` (truncated to the shortest source) or ``max`` (zero-padded).
        task: ``sep_clean`` (``mix_clean``) or ``sep_noisy`` (``mix_both``).
        train_split: ``train-360`` (the usual recipe), ``train-100``, or both joined with ``+``.
        segment: training crop length in seconds (validation/test use whole utterances).
        batch_size: training batch size (validation and test use 1).
        num_workers: DataLoader worker processes.
        dynamic_mixing: train on mixtures drawn on the fly from LibriSpeech (+ WHAM! ``tr`` noise for
            ``sep_noisy``) instead of the fixed train split; validation and test stay fixed.
        librispeech_root: LibriSpeech folder for dynamic mixing (subsets follow ``train_split``).
        wham_root: WHAM! noise folder for dynamic mixing with ``sep_noisy``.
        dm_cache_dir: where inputs resampled once to ``sample_rate`` are kept (default
            ``~/.cache/audiosep/dynamic_mixing``).
        dm_seed: seed of the drawn mixtures; ``None`` follows ``seed_everything``.
        seed: seed of the training order and crops (fixed split); ``None`` follows ``seed_everything``.

    The training order and crops are pure functions of ``(seed, epoch)``
    (:mod:`audiosep.data.sampling`), and each checkpoint records how far into its epoch training
    was, so ``--ckpt_path last`` resumes on the very next batch an unbroken run would have seen.
    """

    def __init__(
        self,
        root: str,
        n_src: int = 2,
        sample_rate: int = 8000,
        mode: Mode = "min",
        task: Task = "sep_clean",
        train_split: str = "train-360",
        segment: float = 3.0,
        batch_size: int = 4,
        num_workers: int = 2,
        dynamic_mixing: bool = False,
        librispeech_root: str | None = None,
        wham_root: str | None = None,
        dm_cache_dir: str | None = None,
        dm_seed: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if dynamic_mixing and librispeech_root is None:
            raise UserError("dynamic_mixing needs librispeech_root (the LibriSpeech folder)")
        if dynamic_mixing and task == "sep_noisy" and wham_root is None:
            raise UserError("dynamic_mixing with task sep_noisy needs wham_root (the wham_noise folder)")
        self.root = root
        self.n_src = n_src
        self.sample_rate = sample_rate
        self.mode = mode
        self.task = task
        self.train_split = train_split
        self.segment = segment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dynamic_mixing = dynamic_mixing
        self.librispeech_root = librispeech_root
        self.wham_root = wham_root
        self.dm_cache_dir = dm_cache_dir
        self.dm_seed = dm_seed
        self.seed = seed
        self._train_sampler: EpochSampler | None = None
        self._resume: dict[str, int] = {}
        self._seed_used: int | None = None

    def setup(self, stage: str | None = None) -> None:
        """Check the loader sizes before any loader exists (refused in ``__init__``, the recipe parser showed the
        message inside a traceback)."""
        check_loader_sizes(self.batch_size, self.num_workers)

    def split_dataset(self, split: str, segment: float | None) -> Dataset:
        """The dataset of one split (``train-100+train-360`` concatenates)."""
        base = resolve_librimix_dir(self.root, self.n_src, self.sample_rate, self.mode)
        parts = []
        for name in split.split("+"):
            csv_path = metadata_csv(base, name, self.task)
            part = LibriMixDataset(base / name, csv_path, n_src=self.n_src, task=self.task,
                                   sample_rate=self.sample_rate, segment=segment)  # fmt: skip
            if len(part) == 0:  # Lightning would only warn, and the run end with exit 0 having done nothing
                raise UserError(f"{csv_path}: lists no mixtures")
            parts.append(part)
        return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_padded,
            drop_last=shuffle,
            persistent_workers=self.num_workers > 0,
        )

    def _shared_seed(self, seed: int | None) -> int:
        """``seed``, else the checkpoint's when resuming, else ``torch.initial_seed()``; under DDP rank
        0's, so every rank shards one order."""
        value = seed if seed is not None else self._seed_used if self._seed_used is not None else torch.initial_seed()
        if self._world_size() > 1:
            value = int(self.trainer.strategy.broadcast(value, src=0))
        self._seed_used = value
        return value

    def train_dataloader(self) -> DataLoader:
        if self.dynamic_mixing:
            # Under DDP each node's rank 0 builds the resampling cache first; the others then read it.
            seed = self._shared_seed(self.dm_seed)  # a collective: before the barrier, on every rank
            distributed = self._world_size() > 1
            if distributed and self.trainer.local_rank != 0:
                self.trainer.strategy.barrier("dynamic mixing cache")
            try:
                dataset = dynamic_mixing_dataset(
                    self.librispeech_root,
                    self.train_split,
                    self.wham_root if self.task == "sep_noisy" else None,
                    self.n_src,
                    self.sample_rate,
                    self.segment,
                    seed=seed,
                    cache_dir=self.dm_cache_dir,
                )
            finally:  # also on failure, so the other ranks are let through (and fail the same way)
                if distributed and self.trainer.local_rank == 0:
                    self.trainer.strategy.barrier("dynamic mixing cache")
            loader = dynamic_mixing_loader(dataset, self.batch_size, self.num_workers, collate_padded)
            self._train_sampler = loader.sampler  # type: ignore[assignment]
        else:
            seed = self._shared_seed(self.seed)
            dataset = EpochSeeded(self.split_dataset(self.train_split, self.segment), seed)
            self._check_one_batch(len(dataset))
            self._train_sampler = EpochShuffleSampler(len(dataset), seed)
            loader = DataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=self._train_sampler,
                num_workers=self.num_workers,
                collate_fn=collate_padded,
                drop_last=True,
                persistent_workers=self.num_workers > 0,
            )
        follow_trainer_epoch(self._train_sampler, self.trainer)
        if "batches" in self._resume:
            per_rank = self._rank_share(len(self._train_sampler)) // self.batch_size  # type: ignore[arg-type]
            epoch, skip = resume_position(self._train_sampler, self._resume, trained_batches(self.trainer, per_rank))
            self._train_sampler.resume(epoch, skip * self.batch_size * self._world_size())  # type: ignore[union-attr]
            self._resume = {}
        return loader

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _rank_share(self, items: int) -> int:
        """Items each rank draws in an epoch of ``items`` (the DDP sampler pads the shares to equal ones)."""
        return math.ceil(items / self._world_size())

    def _check_one_batch(self, items: int) -> None:
        """Refuse a training split too small for one batch on every rank (the loader drops partial batches:
        0 steps, no checkpoint, exit 0)."""
        share = self._rank_share(items)
        if share < self.batch_size:
            per_process = f" ({share} for each of {self._world_size()} processes)" if self._world_size() > 1 else ""
            raise UserError(f"the {self.train_split} split has {items} mixtures{per_process}, fewer than batch_size "
                            f"{self.batch_size}: not one full batch to train on")  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The training sampler's epoch and the batches done in it (saved in every checkpoint)."""
        state = resume_state(self.trainer, self._train_sampler)
        return state | {"seed": self._seed_used} if state and self._seed_used is not None else state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict)
        self._seed_used = state_dict.get("seed", self._seed_used)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("dev", None), 1, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("test", None), 1, False)
