"""Run by tests/test_distributed.py: 2-process DDP (gloo) training where only rank 1's loss is NaN at
batch 1; writes ``<out>/rank<R>.json`` with the step count, nonfinite_steps and a weight checksum."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from audiosep.data.librimix import LibriMixDataModule
from audiosep.models.conv_tasnet import ConvTasNet
from audiosep.tasks.separation import SeparationTask
from audiosep.training_cli import release_process_group


class NaNOnRank1(SeparationTask):
    def __init__(self, model) -> None:
        super().__init__(model)
        self.batches = 0
        self.checksums: list[float] = []

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.checksums.append(sum(float(p.double().sum()) for p in self.parameters()))

    def compute_loss(self, estimate, sources):
        loss = super().compute_loss(estimate, sources)
        self.batches += 1
        return loss * float("nan") if self.global_rank == 1 and self.batches == 2 else loss


def main(root: str, out: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    model = ConvTasNet(enc_num_filters=16, enc_kernel_size=8, bottleneck_channels=8, hidden_channels=12,
                       skip_channels=6, conv_kernel_size=3, num_layers=3, num_repeats=2)
    task = NaNOnRank1(model)
    trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_steps=3, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    data = LibriMixDataModule(root, train_split="train-360", segment=0.25, batch_size=1, num_workers=0, seed=0)
    trainer.fit(task, datamodule=data)
    checksum = sum(float(p.double().sum()) for p in task.parameters())
    finite = all(bool(torch.isfinite(p).all()) for p in task.parameters())
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(
        {"global_step": trainer.global_step, "nonfinite_steps": task.nonfinite_steps, "checksum": checksum,
         "finite": finite, "batches": task.batches, "checksums": task.checksums}))
    release_process_group()  # as `audiosep fit` does: left to the exit, gloo's threads can abort it


if __name__ == "__main__":
    main(*sys.argv[1:3])
