"""The ASR recipes run under Lightning DDP (2 CPU processes, gloo): the duration-bucket batch sampler
shards itself per rank, so the recipes turn off Lightning's sampler injection (which cannot wrap a
batch sampler and raised a TypeError before any step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
