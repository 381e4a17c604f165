"""SepPrune's search phase as a LightningModule: only the channel gates train, the separator is frozen.

What is known of SepPrune's recipe (its public code): Adam at lr 0.1 without weight decay on the
scores only, gradient clipping at 5, ReduceLROnPlateau, about one epoch capped at a few hundred
batches, the permutation-invariant SNR loss. We add the MACs-budget term
``budget_weight * relu(expected_macs / total_macs - target)`` so that a target is met rather than
hoped for (the final selection in :func:`audiosep.pruning.surgery.select_by_score` then enforces
it exactly). Lightning checkpoints of this task hold the scores, so the search resumes.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from audiosep.losses import PITSISNRLoss
from audiosep.metrics import separation_scores
from audiosep.pruning.gates import ChannelGates

Batch = tuple[Tensor, Tensor, list[str]]


class ChannelGateTask(L.LightningModule):
    """Train ``gates`` on a frozen, eval-mode ``model`` with PIT SI-SNR plus a MACs-budget term.

    Args:
        model: the separator (its weights are frozen; BatchNorm statistics and dropout stay in eval mode).
        gates: the gates, attached to ``model`` here.
        total_macs: the unpruned model's MACs per audio second.
        target: the MACs fraction to reach (``None``: no budget term, the threshold alone decides).
        budget_weight: weight of the budget term (the SI-SNR loss is in dB, so a weight of a few
            dB per unit of excess MACs fraction dominates it quickly).
        lr: Adam learning rate of the scores.
    """

    def __init__(
        self,
        model: nn.Module,
        gates: ChannelGates,
        total_macs: float,
        target: float | None = 0.5,
        budget_weight: float = 20.0,
        lr: float = 0.1,
    ) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.gates = gates
        self.gates.attach(self.model)
        self.total_macs = float(total_macs)
        self.target = target
        self.budget_weight = budget_weight
        self.lr = lr
        self.loss = PITSISNRLoss()

    def train(self, mode: bool = True) -> ChannelGateTask:
        """Lightning switches modules to training mode; the frozen separator stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def macs_fraction(self) -> Tensor:
        """Expected MACs after pruning, as a fraction of the unpruned model's (differentiable)."""
        fixed = self.total_macs - sum(g.macs_per_channel * g.size for g in self.gates.groups)
        return (fixed + self.gates.expected_macs()) / self.total_macs

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        mixture, sources, _ = batch
        separation = self.loss(self.model(mixture), sources)
        fraction = self.macs_fraction()
        budget = torch.relu(fraction - self.target) if self.target is not None else fraction.new_zeros(())
        loss = separation + self.budget_weight * budget
        size = mixture.shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=size)
        self.log("macs_fraction", fraction, prog_bar=True, batch_size=size)
        self.log("open_fraction", self._open_fraction(), batch_size=size)
        return loss

    def _open_fraction(self) -> float:
        opened = sum(len(v) for v in self.gates.open_channels().values())
        return opened / sum(g.size for g in self.gates.groups)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        mixture, sources, _ = batch
        scores = separation_scores(self.model(mixture), sources, mixture)
        self.log("val_si_snri", scores.si_snri.mean(), prog_bar=True, batch_size=mixture.shape[0], sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.gates.parameters(), lr=self.lr, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
        # Checked every 25 steps: the search is about one epoch, an epoch-level plateau never comes.
        schedule = {"scheduler": scheduler, "monitor": "train_loss", "interval": "step", "frequency": 25}
        return {"optimizer": optimizer, "lr_scheduler": schedule}
