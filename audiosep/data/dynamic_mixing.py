"""Dynamic mixing: new LibriMix-style training mixtures drawn on the fly from LibriSpeech (+ WHAM!).

Each training example picks ``n_src`` utterances of distinct speakers, a random crop of each, and
random loudness targets as the LibriMix recipe does (speech in [-33, -25] LUFS, noise 5 LU lower,
peaks kept at 0.9). Example ``k`` is a pure function of ``(seed, k)`` and :class:`FreshEpochSampler`
hands out new ``k`` every epoch, so runs are reproducible for any number of workers yet never
repeat a mixture. The hot path only reads crops: inputs are resampled once (``resample_poly``, as
the LibriMix generator) into a cache folder, whose index also holds each file's loudness.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from audiosep.data.librispeech import list_utterances
from audiosep.data.mixing import LOUDNESS_RANGE, NOISE_LOUDNESS, RATE, peak_weight, protected_gain
from audiosep.data.parallel import imap_with_progress
from audiosep.data.sampling import EpochSampler, check_segment
from audiosep.errors import UserError
from audiosep.io import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceEntry:
    """A file at the training rate: where it is, whose voice (``""`` for noise), length, LUFS."""

    path: str
    speaker: str
    frames: int
    loudness: float


@dataclass(frozen=True)
class CacheJob:
    """One input to bring to the cache: read ``source``, resample into ``cached`` when rates differ."""

    source: Path
    cached: Path
    speaker: str


def default_cache_dir() -> Path:
    """``$AUDIOSEP_CACHE/dynamic_mixing`` (``AUDIOSEP_CACHE`` defaults to ``~/.cache/audiosep``)."""
    return Path(os.environ.get("AUDIOSEP_CACHE", "~/.cache/audiosep")).expanduser() / "dynamic_mixing"


def corpus_cache_dir(cache_dir: str | Path, root: Path, sample_rate: int) -> Path:
    """Cache folder of one corpus at one rate: ``<cache_dir>/<name>-<hash of its path>/wav8k``."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return Path(cache_dir).expanduser() / f"{root.name}-{digest}" / f"wav{sample_rate // 1000}k"


def cache_one(sample_rate: int, job: CacheJob) -> SourceEntry | None:
    """Resample one input into the cache (unless already there) and measure its loudness.

    Returns ``None`` (logged) for an unreadable, silent or sub-0.4 s input, which mixing skips.
    """
    import pyloudnorm
    from scipy.signal import resample_poly

    try:
        if job.cached == job.source or job.cached.is_file():
            samples, rate = sf.read(str(job.cached), dtype="float32", always_2d=True)
            samples = samples[:, 0]
        else:
            samples, rate = sf.read(str(job.source), dtype="float32", always_2d=True)
            samples = resample_poly(samples[:, 0], sample_rate, rate)
            atomic_write(
                job.cached, lambda tmp: sf.write(tmp, samples, sample_rate, format="WAV", subtype="PCM_16")
            )
            rate = sample_rate
        if rate != sample_rate:
            raise ValueError(f"{rate} Hz, expected {sample_rate} Hz")
        loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(samples)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        logger.warning("%s: skipped for dynamic mixing (%s)", job.source, err)
        return None
    if not np.isfinite(loudness):
        logger.warning("%s: skipped for dynamic mixing (silent)", job.source)
        return None
    return SourceEntry(str(job.cached), job.speaker, len(samples), float(loudness))


def build_index(
    root: str | Path, folder: str, sample_rate: int, cache_dir: str | Path, speech: bool, workers: int = 1
) -> list[SourceEntry]:
    """Entries of ``root/folder`` at ``sample_rate``: read from ``cache_dir`` or built once, then reused.

    Speech is LibriSpeech's ``<speaker>/<chapter>/*.flac``; noise is every ``*.wav`` below (WHAM!).
    At 16 kHz the originals are read in place and only the index is cached. The index is not
    refreshed when the corpus changes: delete ``<folder>.index.jsonl`` to rebuild it.
    """
    root = Path(root).expanduser()
    index_path = corpus_cache_dir(cache_dir, root, sample_rate) / f"{folder}.index.jsonl"
    if index_path.is_file():
        return [SourceEntry(**json.loads(line)) for line in index_path.read_text().splitlines()]
    if speech:
        files = [(u.path, u.speaker) for u in list_utterances(root, folder)]
    else:
        files = [(p, "") for p in sorted((root / folder).rglob("*.wav"))]
        if not files:
            raise UserError(f"{root / folder}: no *.wav noise files found")
    out = index_path.parent / folder
    jobs = [
        CacheJob(p, p if sample_rate == RATE else (out / p.relative_to(root / folder)).with_suffix(".wav"), s)
        for p, s in files
    ]
    work = partial(cache_one, sample_rate)
    entries = [e for e in imap_with_progress(work, jobs, len(jobs), workers, f"caching {folder}") if e]
    entries.sort(key=lambda e: e.path)
    atomic_write_text(index_path, "".join(json.dumps(asdict(e)) + "\n" for e in entries))
    return entries


class DynamicMixingDataset(Dataset):
    """Items ``(mixture[T], sources[S, T], id)`` like :class:`~audiosep.data.librimix.LibriMixDataset`.

    Args:
        sources: speech entries at ``sample_rate`` (from :func:`build_index`).
        n_src: speakers per mixture (distinct speakers).
        sample_rate: rate of every entry and of the output.
        segment: example length in seconds (shorter utterances are zero-padded).
        noises: noise entries; when given, the mixture adds one (the targets stay clean).
        num_examples: examples per epoch; default one pass worth of utterances (``len(sources) // n_src``).
        seed: example ``k`` depends only on ``(seed, k)``.

    Raises:
        UserError: fewer than ``n_src`` speakers, or a non-positive segment.
    """

    def __init__(
        self,
        sources: list[SourceEntry],
        n_src: int = 2,
        sample_rate: int = 8000,
        segment: float = 3.0,
        noises: list[SourceEntry] | None = None,
        num_examples: int | None = None,
        seed: int = 0,
    ) -> None:
        if len({e.speaker for e in sources}) < n_src:
            raise UserError(
                f"dynamic mixing needs at least {n_src} speakers, got {len({e.speaker for e in sources})}"
            )
        check_segment(segment, sample_rate)
        self.sources, self.noises = sources, noises or []
        self.n_src, self.sample_rate, self.seed = n_src, sample_rate, seed
        self.segment_samples = int(round(segment * sample_rate))
        self.num_examples = num_examples or max(1, len(sources) // n_src)

    def __len__(self) -> int:
        return self.num_examples

    def _pick_sources(self, rng: np.random.Generator) -> list[SourceEntry]:
        """``n_src`` utterances drawn uniformly, redrawing any whose speaker is already taken."""
        picked: list[SourceEntry] = []
        while len(picked) < self.n_src:
            entry = self.sources[int(rng.integers(len(self.sources)))]
            if entry.speaker not in {p.speaker for p in picked}:
                picked.append(entry)
        return picked

    def _crop(self, entry: SourceEntry, rng: np.random.Generator, loop: bool = False) -> np.ndarray:
        """A random ``segment``-long crop (zero-padded, or looped for noise, when the file is shorter)."""
        start = int(rng.integers(0, max(1, entry.frames - self.segment_samples + 1)))
        samples, _ = sf.read(
            entry.path, start=start, frames=self.segment_samples, dtype="float32", always_2d=True
        )
        samples = samples[:, 0]
        missing = self.segment_samples - len(samples)
        return np.pad(samples, (0, missing), mode="wrap" if loop else "constant") if missing else samples

    @staticmethod
    def _gain(entry: SourceEntry, samples: np.ndarray, target: float) -> float:
        """Gain to ``target`` LUFS, or to a 0.9 peak when that would reach 1 (the recipe's protection).

        The loudness is the whole file's (from the index), as the recipe measures whole utterances.
        """
        return protected_gain(samples, entry.loudness, target)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        rng = np.random.default_rng([self.seed, index])
        picked = self._pick_sources(rng)
        scaled = []
        for entry in picked:
            crop = self._crop(entry, rng)
            scaled.append(crop * self._gain(entry, crop, rng.uniform(*LOUDNESS_RANGE)))
        sources = np.stack(scaled)  # S, T
        mixture = sources.sum(axis=0)
        if self.noises:
            entry = self.noises[int(rng.integers(len(self.noises)))]
            noise = self._crop(entry, rng, loop=True)
            mixture = mixture + noise * self._gain(entry, noise, rng.uniform(*NOISE_LOUDNESS))
        weight = peak_weight(float(np.max(np.abs(mixture))))
        if weight != 1.0:
            mixture, sources = mixture * weight, sources * weight
        speakers = "_".join(Path(e.path).stem for e in picked)
        return (
            torch.from_numpy(mixture.astype(np.float32)),
            torch.from_numpy(sources),
            f"dm{index}_{speakers}",
        )


class FreshEpochSampler(EpochSampler):
    """Indices ``epoch * N .. (epoch + 1) * N - 1``: every epoch draws mixtures never seen before.

    Lightning calls :meth:`set_epoch` (under DDP through its ``DistributedSamplerWrapper``, which
    also shards the draws across ranks), so a resumed run sees the same data as an unbroken one;
    without it, each pass moves to the next epoch by itself. :meth:`resume` skips the draws of an
    interrupted epoch already trained on.
    """

    def order(self, epoch: int) -> list[int]:
        return list(range(self.num_examples))


def librispeech_subsets(train_split: str) -> list[str]:
    """LibriSpeech folders behind a LibriMix split name: ``train-360`` -> ``train-clean-360`` (``+`` joins)."""
    names = [name.strip() for name in train_split.split("+")]
    return [name.replace("train-", "train-clean-", 1) if "clean" not in name else name for name in names]


def dynamic_mixing_dataset(
    librispeech_root: str,
    train_split: str,
    wham_root: str | None,
    n_src: int,
    sample_rate: int,
    segment: float,
    seed: int | None = None,
    cache_dir: str | None = None,
    workers: int | None = None,
) -> DynamicMixingDataset:
    """The dataset a datamodule trains on: LibriSpeech subsets of ``train_split``, WHAM! ``tr`` noise.

    ``seed=None`` takes ``torch.initial_seed()`` (what ``seed_everything`` set); the cache defaults
    to :func:`default_cache_dir`. The first call builds the cache (in parallel), later ones reuse it.
    """
    workers = workers or os.cpu_count() or 1
    cache = cache_dir or default_cache_dir()
    sources = [
        entry
        for subset in librispeech_subsets(train_split)
        for entry in build_index(librispeech_root, subset, sample_rate, cache, True, workers)
    ]
    noises = None if wham_root is None else build_index(wham_root, "tr", sample_rate, cache, False, workers)
    seed = torch.initial_seed() if seed is None else seed
    return DynamicMixingDataset(sources, n_src, sample_rate, segment, noises, seed=seed)


def dynamic_mixing_loader(
    dataset: DynamicMixingDataset, batch_size: int, num_workers: int, collate_fn
) -> DataLoader:
    """Training loader over ``dataset`` with a :class:`FreshEpochSampler`."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=FreshEpochSampler(len(dataset)),
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=True,
        persistent_workers=num_workers > 0,
    )
