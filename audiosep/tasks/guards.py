"""What every audiosep task does for training at scale: skip non-finite steps, resume RNG exactly.

:class:`TrainingGuards` is a mixin for a ``LightningModule``:

- :meth:`~TrainingGuards.guard_loss` turns a loss that is not finite on *any* rank (one tiny
  all-reduce under DDP) into a skipped step on every rank, counted in the logged
  ``nonfinite_steps``; :data:`MAX_CONSECUTIVE_NONFINITE` in a row end the run with an error.
  Single-process it returns ``None``, Lightning's own skip. Lightning refuses
  ``None`` in distributed training, so under DDP every rank backpropagates an exact zero through
  every parameter (the gradient all-reduce stays in step) and :meth:`on_before_optimizer_step`
  drops the gradients, so the optimizer leaves the weights and its state as they were. The
  module's floating-point buffers (BatchNorm and running-norm statistics), which the poisoned
  forward pass already updated, are put back as they were before that step (a copy is kept at the
  start of every training batch: a few KB to MB, next to a step's cost).
- :meth:`~TrainingGuards.save_guards` / :meth:`~TrainingGuards.load_guards` put the RNG states
  (``audiosep.rng``) and the counter in checkpoints; the states are restored in ``on_train_start``,
  after loaders and sanity checks, so a resumed run draws what an unbroken one would (dropout,
  augmentation). Under DDP they are rank 0's, given to every rank.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from audiosep.data.identity import data_identity
from audiosep.data.sampling import end_resume_quiet
from audiosep.errors import ConfigError, UserError
from audiosep.rng import collect_rng_states, set_rng_states

RNG_KEY = "audiosep_rng_states"
NONFINITE_KEY = "audiosep_nonfinite_steps"
DATA_KEY = "audiosep_data"  # what the run trains on: a resume must train on the same (training_cli checks it)
MAX_CONSECUTIVE_NONFINITE = 20  # skipped steps in a row that end the run: the weights or the data are broken


def _state_shapes(state: Any) -> dict[Any, dict[str, tuple[int, ...]]]:
    """A saved optimizer state's per-parameter tensor shapes (``exp_avg``, ``momentum_buffer``, ...; not scalars)."""
    if not isinstance(state, dict):
        return {}
    return {index: {key: tuple(value.shape) for key, value in entry.items() if isinstance(value, Tensor) and value.dim()}
            for index, entry in state.items() if isinstance(entry, dict)}  # fmt: skip


def _check_state_shapes(optimizer: Any, shapes: dict[Any, dict[str, tuple[int, ...]]]) -> None:
    """Refuse a saved optimizer state whose tensors do not have their parameter's shape (a damaged or edited
    checkpoint): Adam's first step ended in a size-mismatch traceback.

    Raises:
        ConfigError: naming the first mismatch.
    """
    params = [param for group in optimizer.param_groups for param in group["params"]]
    for index, entries in shapes.items():
        param = params[index] if isinstance(index, int) and 0 <= index < len(params) else None
        for key, shape in entries.items():
            if param is None or shape != tuple(param.shape):
                name = type(optimizer).__name__
                problem = (f"is for parameter {index!r}, and the recipe's {name} has {len(params)}" if param is None
                           else f"of parameter {index!r} has shape {shape}, not its parameter's {tuple(param.shape)}")
                raise ConfigError(f"--ckpt_path: the checkpoint's {name} state {key!r} {problem}; the file is damaged "
                                  "or of another model")  # fmt: skip


class TrainingGuards:
    """Mixin (list it before ``LightningModule``); call :meth:`init_guards` in ``__init__``."""

    def init_guards(self) -> None:
        self.nonfinite_steps = 0
        self._nonfinite_in_a_row = 0
        self._rng_to_restore: dict[str, Any] | None = None
        self._drop_gradients = False
        self._buffers_before: list[tuple[Tensor, Tensor]] = []
        self._resume_quiet_ended = False

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Keep a copy of the floating-point buffers (running statistics) to undo a skipped step; the first
        batch ends the quiet of an exact resume (:func:`audiosep.data.sampling.end_resume_quiet`)."""
        if not self._resume_quiet_ended:
            end_resume_quiet()
            self._resume_quiet_ended = True
        self._buffers_before = [
            (buffer, buffer.detach().clone())
            for buffer in self.buffers()  # type: ignore[attr-defined]
            if buffer.is_floating_point()
        ]

    def _restore_buffers(self) -> None:
        with torch.no_grad():
            for buffer, saved in self._buffers_before:
                buffer.copy_(saved)

    def _world_size(self) -> int:
        return self.trainer.world_size if getattr(self, "_trainer", None) is not None else 1  # type: ignore[attr-defined]

    def _all_finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every rank."""
        finite = torch.isfinite(loss.detach()).all().float()
        if self._world_size() > 1:
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")  # type: ignore[attr-defined]
        return bool(finite > 0)

    def guard_loss(self, loss: Tensor, batch_size: int) -> Tensor | None:
        """``loss`` when finite everywhere; otherwise what skips this step on every rank."""
        finite = self._all_finite(loss)
        self._nonfinite_in_a_row = 0 if finite else self._nonfinite_in_a_row + 1
        if not finite:
            self.nonfinite_steps += 1
        if self._nonfinite_in_a_row >= MAX_CONSECUTIVE_NONFINITE:
            raise UserError(
                f"{self._nonfinite_in_a_row} training steps in a row had a non-finite loss (step "
                f"{self.trainer.global_step}): the weights or the data hold NaN or infinity; the run stops"  # type: ignore[attr-defined]
            )
        self.log("nonfinite_steps", float(self.nonfinite_steps), batch_size=batch_size)  # type: ignore[attr-defined]
        if finite:
            return loss
        self._restore_buffers()
        if self._world_size() == 1:
            return None  # Lightning skips backward and the optimizer step
        self._drop_gradients = True
        params = [p for p in self.parameters() if p.requires_grad]  # type: ignore[attr-defined]
        return torch.stack([p.sum() for p in params]).sum() * 0.0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_gradients:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            self._drop_gradients = False

    def save_guards(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = collect_rng_states()
        checkpoint[NONFINITE_KEY] = self.nonfinite_steps
        trainer = getattr(self, "_trainer", None)  # a task saved outside a Trainer has no data
        checkpoint[DATA_KEY] = data_identity(getattr(trainer, "datamodule", None))

    def load_guards(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get(RNG_KEY)
        self.nonfinite_steps = int(checkpoint.get(NONFINITE_KEY, 0))
        states = checkpoint.get("optimizer_states", [])
        self._saved_param_groups = [state.get("param_groups", []) for state in states]
        self._saved_state_shapes = [_state_shapes(state.get("state", {})) for state in states]
        self.check_resumed_optimizers()

    def on_fit_start(self) -> None:
        self.check_resumed_optimizers()

    def check_resumed_optimizers(self) -> None:
        """Compare a resumed checkpoint's optimizer state with the recipe's optimizers, once both exist.

        Lightning loads the saved state into the recipe's optimizers: another optimizer (Adam saved,
        SGD configured) ended in a ``KeyError: 'momentum'`` traceback, and a changed learning rate was
        silently replaced by the saved one (warned here). Runs from ``on_fit_start``, where the
        optimizers exist and the saved state is not restored yet.

        Raises:
            ConfigError: the recipe's optimizers are not the ones the checkpoint was trained with.
        """
        saved = getattr(self, "_saved_param_groups", None)
        trainer = getattr(self, "_trainer", None)
        if saved is None or trainer is None or not trainer.optimizers:
            return
        self._saved_param_groups = None
        current = [optimizer.param_groups for optimizer in trainer.optimizers]
        if len(saved) != len(current):
            raise ConfigError(f"--ckpt_path: the checkpoint holds {len(saved)} optimizer states and the recipe "
                              f"configures {len(current)} optimizers; resume with the recipe it was trained with")  # fmt: skip
        for optimizer, saved_groups, groups in zip(trainer.optimizers, saved, current, strict=True):
            # Settings saved that the recipe's optimizer does not know mark another optimizer (Adam's betas for
            # SGD); settings it knows and the checkpoint lacks are an older torch's, filled in by its loader
            foreign = sorted(set().union(*map(set, saved_groups)) - set().union(*map(set, groups)) - {"initial_lr"})
            if foreign or len(saved_groups) != len(groups):
                raise ConfigError(f"--ckpt_path: the checkpoint was trained with another optimizer than the recipe's "
                                  f"{type(optimizer).__name__} (its settings {', '.join(foreign) or 'groups'}); "
                                  "resume with the optimizer it was trained with (its run's config.yaml names it)")  # fmt: skip
            self._warn_replaced_learning_rates(saved_groups, groups, bool(trainer.lr_scheduler_configs))
        for optimizer, shapes in zip(trainer.optimizers, getattr(self, "_saved_state_shapes", []), strict=False):
            _check_state_shapes(optimizer, shapes)

    @staticmethod
    def _warn_replaced_learning_rates(saved: list[dict], groups: list[dict], scheduled: bool) -> None:
        """Warn where the recipe's learning rate differs from the one the restored state brings back."""
        key = "initial_lr" if all("initial_lr" in g for g in saved + groups) else None if scheduled else "lr"
        for old, new in ((s[key], g[key]) for s, g in zip(saved, groups, strict=True)) if key else ():
            if old != new:
                warnings.warn(f"--ckpt_path: Lightning restores the checkpoint's optimizer state, so the learning "
                              f"rate is its {old:g}, not the recipe's {new:g}", stacklevel=2)  # fmt: skip

    def prepare_step_schedules(self) -> None:
        """Call from ``on_train_start``: schedules that say ``interval = "step"`` (e.g.
        :class:`audiosep.optim.WarmupCosineLR`) are stepped per batch, and given their length."""
        for config in self.trainer.lr_scheduler_configs:  # type: ignore[attr-defined]
            if getattr(config.scheduler, "interval", None) == "step":
                config.interval = "step"
                if getattr(config.scheduler, "total_steps", 0) is None:
                    config.scheduler.set_total_steps(int(self.trainer.estimated_stepping_batches))  # type: ignore[attr-defined]

    def restore_rng(self) -> None:
        """Call from ``on_train_start``: the checkpoint's RNG states, once."""
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
