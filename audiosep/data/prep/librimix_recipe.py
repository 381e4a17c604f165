"""Fresh LibriMix metadata for any LibriSpeech-shaped corpus, drawn with the LibriMix recipe.

Follows JorisCos/LibriMix ``create_librimix_metadata.py``: utterances of at least 3 s, groups of
distinct speakers, a WHAM! noise at least as long as the longest utterance, random loudness targets
in LUFS (pyloudnorm) and clipping protection. The output CSVs have the official columns, so
:func:`audiosep.data.prep.librimix_generate.generate_split` turns them into audio like the official ones.
The random stream is ours (numpy, seeded), so the draws differ from the official ones.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiosep.data.mixing import LOUDNESS_RANGE, NOISE_LOUDNESS, RATE, peak_weight, protected_gain
from audiosep.data.parallel import imap_with_progress
from audiosep.data.prep.librimix_generate import csv_text, mix, read_first_channel
from audiosep.data.prep.librispeech_manifest import probe_many, read_speaker_sexes
from audiosep.errors import UserError
from audiosep.io import atomic_write_text

logger = logging.getLogger(__name__)

NOISE_FOLDERS = {"train": "tr", "dev": "cv", "test": "tt"}
DEFAULT_EVAL_MIXTURES = 3000  # dev/test size of the official metadata


@dataclass(frozen=True)
class Clip:
    """An input file (path relative to its corpus root) with its speaker and length in samples."""

    path: str
    speaker: str
    length: int


def list_clips(root: Path, folder: str, pattern: str, speakers: bool, workers: int) -> list[Clip]:
    """16 kHz files under ``root/folder`` sorted by length; unreadable ones are logged and skipped."""
    paths = sorted((root / folder).glob(pattern))
    if not paths:
        raise UserError(f"{root / folder}: no {pattern} files found")
    probes = probe_many(paths, workers, decode=False, desc=f"listing {folder}")
    clips = []
    for path in paths:
        probe = probes[path]
        if probe.error is not None:
            logger.warning("%s: skipped (%s)", path, probe.error)
            continue
        if probe.sample_rate != RATE:
            raise UserError(f"{path}: {probe.sample_rate} Hz, the LibriMix recipe needs {RATE} Hz inputs")
        speaker = path.parent.parent.name if speakers else ""
        clips.append(Clip(path.relative_to(root).as_posix(), speaker, probe.num_frames))
    return sorted(clips, key=lambda c: (c.length, c.path))


def draw_groups(speech: list[Clip], n_src: int, rng: np.random.Generator) -> list[list[int]]:
    """One pass over a shuffled corpus: groups of ``n_src`` clips of distinct speakers, each clip once."""
    pending, groups = deque(rng.permutation(len(speech)).tolist()), []
    while len(pending) >= n_src:
        group, deferred = [], []
        while pending and len(group) < n_src:
            index = pending.popleft()
            clash = speech[index].speaker in {speech[g].speaker for g in group}
            (deferred if clash else group).append(index)
        pending.extendleft(reversed(deferred))
        if len(group) < n_src:
            break
        groups.append(group)
    return groups


class NoisePool:
    """Draws unused noises at least as long as a group, as the recipe does (reused once exhausted).

    Non-augmented noises only, unless the mixtures outnumber them. With no unused noise long enough,
    train takes the longest left (the recipe) and dev/test reuse the pool, dropping the group only
    when no noise at all is long enough.
    """

    def __init__(self, noises: list[Clip], num_mixtures: int, rng: np.random.Generator) -> None:
        plain = [i for i, n in enumerate(noises) if "sp08" not in n.path and "sp12" not in n.path]
        self.candidates = plain if num_mixtures <= len(plain) else list(range(len(noises)))
        self.noises, self.rng = noises, rng
        self.unused: list[int] = []  # sorted by length, with their lengths alongside
        self.lengths: list[int] = []

    def take(self, min_length: int, longest_if_none: bool) -> int | None:
        """A random unused noise of at least ``min_length`` samples (``None``: none and not train).

        Why dev/test refill when no unused noise is long enough, not only when none is unused: a leftover
        short noise blocked the refill and every later group was dropped.
        """
        if not self.unused or (self.lengths[-1] < min_length and not longest_if_none):
            self.unused = sorted(self.candidates, key=lambda i: self.noises[i].length)
            self.lengths = [self.noises[i].length for i in self.unused]
        position = bisect.bisect_left(self.lengths, min_length)
        if position == len(self.lengths):
            if not longest_if_none:
                return None
            position -= 1
        else:
            position = int(self.rng.integers(position, len(self.lengths)))
        self.lengths.pop(position)
        return self.unused.pop(position)


def draw_plan(
    speech: list[Clip],
    noises: list[Clip],
    n_src: int,
    subset: str,
    num_mixtures: int | None,
    rng: np.random.Generator,
) -> list[tuple[list[int], int | None]]:
    """``(clip indices, noise index)`` of each new mixture.

    Train subsets use each clip once (more passes only when ``num_mixtures`` asks for more); others
    draw passes until ``num_mixtures`` (default 3000) distinct groups, or until none is new. Fewer
    than an explicit ``num_mixtures`` is logged as a warning with the reason (it was silent).
    """
    is_train = subset.startswith("train")
    target = num_mixtures or (None if is_train else DEFAULT_EVAL_MIXTURES)
    pool = NoisePool(noises, target or len(speech) // n_src, rng) if noises else None
    plan, seen, no_noise = [], set(), 0
    while target is None or len(plan) < target:
        added = 0
        for group in draw_groups(speech, n_src, rng):
            key = tuple(sorted(group))
            noise = None
            if key in seen or (target is not None and len(plan) >= target):
                continue
            if pool is not None:
                noise = pool.take(max(speech[i].length for i in group), longest_if_none=is_train)
                if noise is None:
                    no_noise += 1
                    continue
            seen.add(key)
            plan.append((group, noise))
            added += 1
        if added == 0 or target is None:
            break
    if num_mixtures is not None and len(plan) < num_mixtures:
        dropped = f" ({no_noise} group(s) dropped: no noise as long as their longest utterance)" if no_noise else ""
        logger.warning(
            "%s: drew only %d of the %d mixtures asked for: a pass over the utterances added no new group "
            "of %d distinct speakers%s", subset, len(plan), num_mixtures, n_src, dropped
        )
    return plan


@dataclass(frozen=True)
class GainJob:
    """Inputs of one new mixture, and the seed of its loudness targets."""

    index: int
    sources: tuple[Path, ...]
    noise: Path | None
    seed: int


def recipe_gains(job: GainJob) -> tuple[int, list[float] | None]:
    """Gains that bring each input to a random LUFS target, with the recipe's clipping protection.

    Sources are zero-padded to the longest and the noise cut/padded to it (the recipe's max mode);
    a source peaking at or above 1 is scaled to peak 0.9 instead, and when the max-mode mixture
    peaks above 0.9 every gain is scaled down to bring it to 0.9. ``None`` for a silent input.
    The recipe re-measures loudness after scaling; loudness is homogeneous, so the gains are the same.
    """
    import pyloudnorm

    rng = np.random.default_rng([job.seed, job.index])
    signals = [read_first_channel(p) for p in job.sources]
    length = max(len(s) for s in signals)
    if job.noise is not None:
        signals.append(read_first_channel(job.noise)[:length])
    meter, gains, scaled = pyloudnorm.Meter(RATE), [], []
    for i, signal in enumerate(np.pad(s, (0, length - len(s))) for s in signals):
        is_noise = job.noise is not None and i == len(signals) - 1
        target = rng.uniform(*(NOISE_LOUDNESS if is_noise else LOUDNESS_RANGE))
        try:
            loudness = meter.integrated_loudness(signal)
        except ValueError:
            return job.index, None
        if not np.isfinite(loudness):
            return job.index, None
        gain = protected_gain(signal, loudness, target)
        gains.append(gain)
        scaled.append(signal * gain)
    weight = peak_weight(float(np.max(np.abs(mix(scaled)))))
    return job.index, [float(g * weight) for g in gains]


def noise_folder(subset: str) -> str:
    """WHAM! folder that pairs with a LibriSpeech subset (train -> tr, dev -> cv, test -> tt)."""
    for prefix, folder in NOISE_FOLDERS.items():
        if subset.startswith(prefix):
            return folder
    raise UserError(
        f"subset {subset!r}: cannot pair it with WHAM! noise (name must start with train/dev/test)"
    )


def draw_metadata(
    librispeech_dir: str | Path,
    wham_dir: str | Path | None,
    subset: str,
    out_dir: str | Path,
    n_src: int,
    seed: int = 0,
    num_mixtures: int | None = None,
    min_seconds: float = 3.0,
    workers: int = 1,
) -> Path:
    """Draw fresh ``libri{n}mix_<subset>.csv`` (+ ``_info.csv``) for a LibriSpeech-shaped corpus.

    The LibriMix recipe: utterances of at least ``min_seconds``, groups of distinct speakers
    (train: each utterance once; dev/test: ``num_mixtures``, default 3000), a WHAM! noise at least
    as long as the longest utterance, LUFS targets in [-33, -25] (noise 5 LU lower) and clipping
    protection (:func:`recipe_gains`). Without ``wham_dir`` the noise columns stay empty (mix_clean only).

    Returns:
        The written mixture CSV, which :func:`generate_split` reads like an official one.

    Raises:
        UserError: a folder is missing or holds too few speakers, an input is not 16 kHz, or no
            mixture could be drawn.
    """
    if num_mixtures is not None and num_mixtures < 1:
        raise UserError(f"the number of mixtures must be at least 1, got {num_mixtures}")
    librispeech_dir, out_dir = Path(librispeech_dir).expanduser(), Path(out_dir).expanduser()
    speech = [
        c
        for c in list_clips(librispeech_dir, subset, "*/*/*.flac", True, workers)
        if c.length >= min_seconds * RATE
    ]
    if len({c.speaker for c in speech}) < n_src:
        raise UserError(
            f"{librispeech_dir / subset}: fewer than {n_src} speakers with utterances >= {min_seconds} s"
        )
    noises = []
    if wham_dir is not None:
        wham_dir = Path(wham_dir).expanduser()
        noises = list_clips(wham_dir, noise_folder(subset), "**/*.wav", False, workers)
    plan = draw_plan(speech, noises, n_src, subset, num_mixtures, np.random.default_rng(seed))
    jobs = [
        GainJob(
            i,
            tuple(librispeech_dir / speech[k].path for k in group),
            None if n is None else wham_dir / noises[n].path,
            seed,
        )
        for i, (group, n) in enumerate(plan)
    ]
    gains = dict(imap_with_progress(recipe_gains, jobs, len(jobs), workers, f"loudness {subset}"))
    sexes = read_speaker_sexes(librispeech_dir)
    rows, info = [], []
    for i, (group, noise) in enumerate(plan):
        if gains[i] is None:
            logger.warning("mixture %d of %s skipped: a silent input", i, subset)
            continue
        clips = [speech[k] for k in group]
        mixture_id = "_".join(Path(c.path).stem for c in clips)
        row = [mixture_id, *(x for c, g in zip(clips, gains[i], strict=False) for x in (c.path, repr(g)))]
        rows.append(row + ([noises[noise].path, repr(gains[i][-1])] if noise is not None else ["", ""]))
        info.append([mixture_id, *(x for c in clips for x in (c.speaker, sexes.get(c.speaker, "")))])
    if not rows:  # an empty CSV was written, then reused on every rerun and refused by generation
        raise UserError(f"{librispeech_dir / subset}: no mixtures drawn (no noise as long as the utterances, "
                        "or only silent ones)")
    header = ["mixture_ID", *(f"source_{i + 1}_{k}" for i in range(n_src) for k in ("path", "gain"))]
    csv_path = out_dir / f"libri{n_src}mix_{subset}.csv"
    atomic_write_text(csv_path, csv_text([*header, "noise_path", "noise_gain"], rows))
    info_header = ["mixture_ID", *(f"speaker_{i + 1}_{k}" for i in range(n_src) for k in ("ID", "sex"))]
    atomic_write_text(out_dir / f"libri{n_src}mix_{subset}_info.csv", csv_text(info_header, info))
    return csv_path
