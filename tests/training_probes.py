"""Callbacks the distributed and resume tests pass to ``audiosep fit`` subprocesses.

They are imported by class path (``tests`` is put on ``PYTHONPATH``), record what each rank
trained on, and pause training at a given step so that a test can SIGKILL it there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class RecordTrainIds(L.Callback):
    """Writes ``<out_dir>/train_ids.rank<R>.json``: ``{epoch: [mixture ids in training order]}``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.ids: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.ids.setdefault(trainer.current_epoch, []).extend(batch[2])

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"train_ids.rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.ids))


class PauseAtStep(L.Callback):
    """At global step ``step``, writes ``marker`` (with the step) and sleeps until killed, or until a SIGTERM
    (which Lightning notes) lets training go on to stop at the next check."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(json.dumps({"step": trainer.global_step, "batch_idx": batch_idx}))
            while not trainer.received_sigterm:
                time.sleep(0.2)


class SaveFinalWeights(L.Callback):
    """Saves the model's ``state_dict``, the global step and the batches this process trained on."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.batches_here = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches_here += 1

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        torch.save({"step": trainer.global_step, "batches_here": self.batches_here,
                    "state_dict": pl_module.state_dict()}, self.path)
