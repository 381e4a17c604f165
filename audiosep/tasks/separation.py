"""SeparationTask: trains any separator ``[B, T] -> [B, S, T]`` with PIT SI-SNR.

The task receives a built model (constructor injection) and owns only the training logic:
loss, metrics, the per-utterance test CSV, and the model record embedded in every Lightning
checkpoint so that ``audiosep infer --ckpt X.ckpt`` can rebuild the model without the recipe.

Scale: the loss is computed in float32 outside autocast (``bf16-mixed``/``16-mixed`` change only
the model's compute); non-finite steps are skipped on every rank and counted, and checkpoints carry
the RNG states (:mod:`audiosep.tasks.guards`). Under DDP the test rows of all ranks are gathered
and rank 0 alone writes one CSV, each utterance once (the distributed sampler's padding repeats
some).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from audiosep.checkpoint import LIGHTNING_KEY, model_record
from audiosep.errors import ConfigError
from audiosep.eval_report import guarded_csv
from audiosep.io import atomic_write_text
from audiosep.losses import PITSISNRLoss
from audiosep.metrics import separation_scores
from audiosep.tasks.guards import TrainingGuards

TEST_COLUMNS = ["id", "si_snr", "si_snri", "sdr", "sdri"]

Batch = tuple[Tensor, Tensor, list[str]]


def scores_csv_text(rows: list[dict[str, Any]]) -> str:
    """The per-utterance test CSV, with the project's formula guard on every cell.

    Why: mixture ids come from the data's metadata; an id such as ``=HYPERLINK(...)`` would be run
    by a spreadsheet that opens ``test_scores.csv``. Scores are numbers and are written unchanged.
    """
    return guarded_csv(rows, TEST_COLUMNS, lineterminator="\n")


class SeparationTask(TrainingGuards, L.LightningModule):
    """Lightning wrapper for a separator.

    Args:
        model: the separator, ``forward(mixture[B, T]) -> [B, S, T]`` (an audiosep model, so that
            checkpoints can rebuild it).
        sample_rate: the model's sample rate, stored in checkpoints; ``None`` takes the datamodule's.
        test_csv: where ``test`` writes per-utterance scores; default ``<log_dir>/test_scores.csv``.
    """

    def __init__(self, model: nn.Module, sample_rate: int | None = None, test_csv: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = PITSISNRLoss()
        self.sample_rate = sample_rate
        self.test_csv = test_csv
        self._test_rows: list[dict[str, Any]] = []
        self.init_guards()

    def forward(self, mixture: Tensor) -> Tensor:
        return self.model(mixture)

    def compute_loss(self, estimate: Tensor, sources: Tensor) -> Tensor:
        """PIT SI-SNR in float32, outside any autocast region."""
        with torch.autocast(estimate.device.type, enabled=False):
            return self.loss(estimate.float(), sources.float())

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        mixture, sources, _ = batch
        loss = self.guard_loss(self.compute_loss(self.model(mixture), sources), mixture.shape[0])
        if loss is not None and not self._drop_gradients:
            self.log("train_loss", loss, prog_bar=True, batch_size=mixture.shape[0])
        return loss

    def _evaluate(self, batch: Batch, prefix: str, with_sdr: bool = False, log: bool = True):
        mixture, sources, _ = batch
        estimate = self.model(mixture)
        with torch.autocast(estimate.device.type, enabled=False):
            scores = separation_scores(estimate.float(), sources.float(), mixture.float(), with_sdr=with_sdr)
        if log:
            batch_size = mixture.shape[0]
            self.log(f"{prefix}_loss", -scores.si_snr.mean(), batch_size=batch_size, sync_dist=True)
            self.log(
                f"{prefix}_si_snri", scores.si_snri.mean(), prog_bar=True, batch_size=batch_size, sync_dist=True
            )
        return scores

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        scores = self._evaluate(batch, "test", with_sdr=True, log=False)
        for i, mixture_id in enumerate(batch[2]):
            self._test_rows.append(
                {
                    "id": mixture_id,
                    "si_snr": float(scores.si_snr[i]),
                    "si_snri": float(scores.si_snri[i]),
                    "sdr": float(scores.sdr[i]),
                    "sdri": float(scores.sdri[i]),
                }
            )

    def _gathered_test_rows(self) -> list[dict[str, Any]]:
        """Every rank's rows, each utterance once, in dataset order.

        The distributed sampler gives rank ``r`` items ``r, r + W, ...`` and pads the last round
        with items from the start, so interleaving the ranks' rows and keeping each id's first row
        is the single-process order.
        """
        if self._trainer is None or self.trainer.world_size <= 1 or not torch.distributed.is_initialized():
            rows = self._test_rows
        else:
            gathered: list[list[dict[str, Any]] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self._test_rows)
            rows = [
                row for group in itertools.zip_longest(*gathered) for row in group if row is not None
            ]
        unique: dict[str, dict[str, Any]] = {}
        for row in rows:
            unique.setdefault(row["id"], row)
        return list(unique.values())

    def on_test_epoch_end(self) -> None:
        rows = self._gathered_test_rows()
        if rows:  # every rank logs the same means of the deduplicated rows (nothing to sync)
            for name in TEST_COLUMNS[1:]:
                self.log(f"test_{name}", sum(r[name] for r in rows) / len(rows), sync_dist=False)
            self.log("test_loss", -sum(r["si_snr"] for r in rows) / len(rows), sync_dist=False)
        if self._trainer is not None and not self.trainer.is_global_zero:
            return
        path = self._test_csv_path()
        atomic_write_text(path, scores_csv_text(rows))
        print(f"wrote per-utterance scores of {len(rows)} mixtures to {path}")

    def _test_csv_path(self) -> Path:
        if self.test_csv:
            return Path(self.test_csv)
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(log_dir) / "test_scores.csv"

    def model_sample_rate(self) -> int | None:
        """The sample rate to record: explicit, else the datamodule's."""
        if self.sample_rate is not None:
            return self.sample_rate
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "sample_rate", None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the model record without weights: Lightning's ``state_dict`` already holds them."""
        metadata = {"sample_rate": self.model_sample_rate()}
        checkpoint[LIGHTNING_KEY] = model_record(self.model, metadata, with_weights=False)
        self.save_guards(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_guards(checkpoint)

    def setup(self, stage: str) -> None:
        """Refuse a ``sample_rate`` other than the data's: every checkpoint would record it, and
        ``audiosep infer`` resample its inputs to a rate the model never heard."""
        datamodule = getattr(self.trainer, "datamodule", None)
        rate = getattr(datamodule, "sample_rate", None)
        if self.sample_rate is not None and rate is not None and rate != self.sample_rate:
            raise ConfigError(f"model sample_rate={self.sample_rate} but the data's is {rate} Hz")

    def on_train_start(self) -> None:
        """A resumed run gets the checkpoint's RNG states back; step-interval schedules step per batch."""
        self.restore_rng()
        self.prepare_step_schedules()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam 1e-3 when the recipe gives no ``optimizer:`` (LightningCLI replaces this otherwise)."""
        return torch.optim.Adam(self.parameters(), lr=1e-3)
