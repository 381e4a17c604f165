"""The ASR recipes run under Lightning DDP (2 CPU processes, gloo): the duration-bucket batch sampler
shards itself per rank, so the recipes turn off Lightning's sampler injection (which cannot wrap a
batch sampler and raised a TypeError before any step); a non-finite CTC loss is skipped and counted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from asr_helpers import TINY_BLOCKS

from audiosep.data.asr import ASRDataModule
from audiosep.models.quartznet import QuartzNet
from audiosep.nn.features import LogMelFeatures
from audiosep.tasks.asr import ASRTask

REPO = Path(__file__).resolve().parents[2]
EXTRA: list[str] = []
ASR_RECIPES = ["demo/quartznet_fsdd.yaml", "librispeech/quartznet_5x5.yaml", "librispeech/quartznet_15x5.yaml"]


@pytest.mark.parametrize("recipe", ASR_RECIPES)
def test_asr_recipes_let_the_bucket_sampler_shard(recipe: str) -> None:
    config = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    assert config["data"]["class_path"] == "audiosep.data.asr.ASRDataModule"
    assert config["trainer"]["use_distributed_sampler"] is False


def test_quartznet_recipe_fits_with_two_ddp_processes(tiny_asr: dict[str, Path], tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run([
        sys.executable, "-m", "audiosep.cli", "fit", "--config", str(REPO / "recipes/librispeech/quartznet_5x5.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.precision=32-true",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--trainer.max_epochs=1", *EXTRA, f"--trainer.default_root_dir={tmp_path}",
        f"--data.train_manifest={tiny_asr['train']}", f"--data.val_manifest={tiny_asr['val']}",
        "--data.batch_size=2", "--data.num_workers=0",
    ], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert list(tmp_path.rglob("last.ckpt"))


class NaNSecondBatch(ASRTask):
    """The second training batch's audio is NaN: its forward pass poisons the BatchNorm statistics."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches, self.checksums, self.statistics = 0, [], []

    def _loss(self, batch):
        self.batches += 1
        if self.batches == 2:
            batch = (batch[0] * float("nan"), *batch[1:])
        return super()._loss(batch)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.checksums.append(sum(float(p.double().sum()) for p in self.model.parameters()))
        self.statistics.append({k: v.clone() for k, v in self.model.named_buffers() if v.is_floating_point()})


def test_asr_task_skips_and_counts_a_non_finite_loss(tiny_asr: dict[str, Path], tmp_path: Path) -> None:
    pl.seed_everything(0)
    task = NaNSecondBatch(QuartzNet(64, 29, TINY_BLOCKS), features=LogMelFeatures())
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    trainer.fit(task, ASRDataModule(tiny_asr["train"], tiny_asr["val"], batch_size=2))
    first, skipped, third = task.checksums
    assert skipped == first and third != skipped
    assert task.statistics[0]  # QuartzNet has BatchNorm running statistics
    for name, value in task.statistics[1].items():  # put back after the skipped step, not NaN
        assert torch.equal(value, task.statistics[0][name]), name
    assert all(torch.isfinite(v).all() for v in task.statistics[2].values())
    assert task.nonfinite_steps == 1 and trainer.callback_metrics["nonfinite_steps"] == 1
