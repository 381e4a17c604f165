"""SeparationTask: trains any separator ``[B, T] -> [B, S, T]`` with PIT SI-SNR.

The task receives a built model (constructor injection) and owns only the training logic:
loss, metrics, the per-utterance test CSV, and the model record embedded in every Lightning
checkpoint so that ``audiosep infer --ckpt X.ckpt`` can rebuild the model without the recipe.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from audiosep.checkpoint import LIGHTNING_KEY, model_record
from audiosep.losses import PITSISNRLoss
from audiosep.metrics import separation_scores

Batch = tuple[Tensor, Tensor, list[str]]


class SeparationTask(L.LightningModule):
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

    def forward(self, mixture: Tensor) -> Tensor:
        return self.model(mixture)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        mixture, sources, _ = batch
        loss = self.loss(self.model(mixture), sources)
        self.log("train_loss", loss, prog_bar=True, batch_size=mixture.shape[0])
        return loss

    def _evaluate(self, batch: Batch, prefix: str, with_sdr: bool = False):
        mixture, sources, _ = batch
        estimate = self.model(mixture)
        scores = separation_scores(estimate, sources, mixture, with_sdr=with_sdr)
        batch_size = mixture.shape[0]
        self.log(f"{prefix}_loss", -scores.si_snr.mean(), batch_size=batch_size, sync_dist=True)
        self.log(f"{prefix}_si_snri", scores.si_snri.mean(), prog_bar=True, batch_size=batch_size, sync_dist=True)
        return scores

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        scores = self._evaluate(batch, "test", with_sdr=True)
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
        self.log("test_sdri", scores.sdri.mean(), batch_size=len(batch[2]), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        path = self._test_csv_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        rank_suffix = f".rank{self.global_rank}" if self.trainer.world_size > 1 else ""
        path = path.with_name(path.stem + rank_suffix + path.suffix)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "si_snr", "si_snri", "sdr", "sdri"])
            writer.writeheader()
            writer.writerows(self._test_rows)
        print(f"wrote per-utterance scores of {len(self._test_rows)} mixtures to {path}")

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

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam 1e-3 when the recipe gives no ``optimizer:`` (LightningCLI replaces this otherwise)."""
        return torch.optim.Adam(self.parameters(), lr=1e-3)
