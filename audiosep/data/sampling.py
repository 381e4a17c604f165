"""Training samplers whose order is a pure function of ``(seed, epoch)`` and that resume mid-epoch.

Every index a sampler yields is a *draw* ``epoch * N + i`` (``i`` the dataset item): a dataset
wrapped in :class:`EpochSeeded` reads item ``i`` with random crops seeded by ``(seed, epoch, i)``,
so what a batch holds never depends on the global RNG, the number of workers or the process.

Under Lightning DDP the sampler is wrapped in a ``DistributedSamplerWrapper`` that shards the
epoch's draws (rank ``r`` takes every ``world_size``-th one) and forwards ``set_epoch``; all ranks
must use the same seed (the LibriMix data module broadcasts rank 0's).

Resume: the data module stores ``(epoch, batches done)`` in each checkpoint (``state_dict``) and
calls :meth:`EpochSampler.resume` with ``batches * batch_size * world_size`` draws to leave out.
That epoch's draws are then *rotated* (the done ones moved to the end), not dropped: the DDP
wrapper sizes its shards once, from the sampler's length, so the length must not change. Rank
``r`` takes draws ``r, r + W, ...`` of the rotated list, which (the skip being a multiple of ``W``)
are exactly the draws it had left, padding included; Lightning, which restores its batch counters,
ends the resumed epoch once it has had the batches it still owed, so the rotated-in tail is never
trained on.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Sampler

from audiosep.errors import UserError


def check_segment(segment: float, sample_rate: int) -> None:
    """Refuse a training crop of less than one sample (0, negative, NaN): 0 gave empty items, a negative one
    random tails of the files (soundfile reads a negative frame count to the end), 1e-5 s zero-size items that
    failed inside the DataLoader workers."""
    if not (math.isfinite(segment) and segment * sample_rate >= 1):
        raise UserError(f"segment must be positive seconds, at least one sample, got {segment}")


def check_loader_sizes(batch_size: int | None, num_workers: int) -> None:
    """Refuse a batch size below 1 and a negative worker count, which torch's DataLoader refused with a traceback
    once training had started (reviewer). ``batch_size`` None: batches sized by duration (ASR)."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise UserError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise UserError(f"num_workers must be a whole number of at least 0, got {num_workers!r}")


class EpochSampler(Sampler[int]):
    """Base class: ``set_epoch``, a one-off mid-epoch skip, and draws ``epoch * N + i``.

    Without :meth:`set_epoch` calls (plain PyTorch loops), each pass moves to the next epoch by
    itself; once Lightning calls it, the epoch is what it says.
    """

    def __init__(self, num_examples: int) -> None:
        self.num_examples = num_examples
        self.epoch = 0
        self._epoch_is_set = False
        self._skip: tuple[int, int] | None = None
        self.epoch_source: Callable[[], int] | None = None  # see follow_trainer_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_is_set = epoch, True

    def resume(self, epoch: int, skip: int) -> None:
        """Start the next pass of ``epoch`` at its draw ``skip`` (the ones before come last, once)."""
        self._skip = (epoch, skip)

    def __len__(self) -> int:
        return self.num_examples

    def order(self, epoch: int) -> list[int]:
        """Dataset items of ``epoch`` in the order they are drawn."""
        raise NotImplementedError

    def __iter__(self):
        pinned = pinned_epoch(self)
        if pinned is not None:
            self.set_epoch(pinned)
        epoch = self.epoch
        if not self._epoch_is_set:
            self.epoch += 1
        draws = [epoch * self.num_examples + i for i in self.order(epoch)]
        if self._skip is not None and self._skip[0] == epoch:
            skip = self._skip[1] % max(1, len(draws))
            draws = draws[skip:] + draws[:skip]
            self._skip = None
        return iter(draws)


class EpochShuffleSampler(EpochSampler):
    """Every item once per epoch, in a permutation seeded by ``(seed, epoch)`` (any non-negative int)."""

    def __init__(self, num_examples: int, seed: int = 0) -> None:
        super().__init__(num_examples)
        self.seed = seed

    def order(self, epoch: int) -> list[int]:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples).tolist()


class EpochSeeded(Dataset):
    """Reads draw ``k`` as item ``k % N`` of ``dataset`` with an RNG seeded by ``(seed, k // N, k % N)``.

    ``dataset`` (or each part of a ``ConcatDataset``) must have ``get(index, rng)``, as
    :class:`~audiosep.data.librimix.LibriMixDataset` does.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, draw: int) -> Any:
        index, epoch = draw % len(self), draw // len(self)
        rng = np.random.default_rng([self.seed, epoch, index])
        if isinstance(self.dataset, ConcatDataset):
            part = bisect.bisect_right(self.dataset.cumulative_sizes, index)
            offset = self.dataset.cumulative_sizes[part - 1] if part else 0
            return self.dataset.datasets[part].get(index - offset, rng)  # type: ignore[attr-defined]
        return self.dataset.get(index, rng)  # type: ignore[attr-defined]


def follow_trainer_epoch(sampler: Any, trainer: Any) -> None:
    """Make ``sampler`` draw the epoch the trainer counts (``trainer.current_epoch``) whatever ``set_epoch`` says,
    once a resume's first epoch (set by :func:`resume_position`) is drawn.

    Why: Lightning passes ``set_epoch`` its count of processed epochs, which after a resume from a checkpoint
    saved at an epoch's end by a validation (as ``audiosep demo`` saves) stays one ahead for the rest of the
    run: every later epoch drew the next one's order and crops, and the resumed run left the unbroken one's path.
    The resumed epoch itself is resume_position's: with DataLoader workers Lightning makes its iterator before
    it counts the epoch before it as done.
    """
    if trainer is not None:
        sampler.epoch_source = lambda: int(trainer.current_epoch)


def pinned_epoch(sampler: Any) -> int | None:
    """The epoch a sampler's next pass draws whatever ``set_epoch`` said (:func:`follow_trainer_epoch`): a
    resume's first, else the trainer's; None without a trainer (``set_epoch`` or its own count decides)."""
    if sampler._skip is not None:
        return sampler._skip[0]
    return sampler.epoch_source() if sampler.epoch_source is not None else None


def trained_batches(trainer: Any, batches: int) -> int:
    """How many of an epoch's ``batches`` Lightning trains: all, or its ``limit_train_batches`` (a count or a fraction)."""
    limit = getattr(trainer, "limit_train_batches", None)
    if limit is None or isinstance(limit, bool):
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * float(limit))


def resume_position(sampler: Any, state: dict[str, Any], batches_per_epoch: int) -> tuple[int, int]:
    """Set ``sampler`` to the epoch a resumed run trains first; returns it and the batches of it already done.

    Why now, not at Lightning's ``set_epoch``: Lightning makes the resumed epoch's iterator before it calls
    ``set_epoch``, and DataLoader workers draw indices from it at once (a resumed run drew epoch 0's order).
    A checkpoint taken after an epoch's last batch resumes at the next epoch's start.
    """
    epoch, batches = int(state["epoch"]), int(state["batches"])
    if batches >= batches_per_epoch:
        epoch, batches = epoch + 1, 0
    sampler.set_epoch(epoch)
    # Lightning warns of "unreliable results" after a mid-epoch resume unless the loader itself saves state;
    # this position makes the resume exact (tested against unbroken runs), so the warning would mislead
    warnings.filterwarnings("ignore", message=RESUME_WARNING)
    return epoch, batches


RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


def end_resume_quiet() -> None:
    """Drop the filter :func:`resume_position` set once training runs: filters are process-wide, and a later
    resume in the same process (not through our data modules) must still get Lightning's warning.

    ("ignore" filters leave nothing in the modules' warning registries, so removing one needs no reset.)
    """
    warnings.filters[:] = [f for f in warnings.filters if not (f[0] == "ignore" and getattr(f[1], "pattern", None) == RESUME_WARNING)]


def resume_state(trainer: Any, sampler: Any) -> dict[str, int]:
    """What a data module saves in a checkpoint: the sampler's epoch and the batches done in it.

    ``sampler``: an :class:`EpochSampler`, a ``DurationBucketSampler`` (anything with ``epoch``) or None.
    """
    if sampler is None or trainer is None:
        return {}
    return {"epoch": sampler.epoch, "batches": int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)}
