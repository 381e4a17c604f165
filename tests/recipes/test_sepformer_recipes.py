"""Smoke `fit` of the SepFormer-family LibriMix recipes with tiny model overrides."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from audiosep.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "librimix"
MODEL = "--model.model.init_args."
TINY_COMMON = [f"{MODEL}num_blocks=1", f"{MODEL}num_intra_layers=1", f"{MODEL}num_inter_layers=1",
               f"{MODEL}num_heads=2", f"{MODEL}ffn_dim=16", f"{MODEL}chunk_size=10"]  # fmt: skip
TINY_MODELS = {
    "sepformer.yaml": [f"{MODEL}encoder_channels=16", f"{MODEL}model_channels=8", *TINY_COMMON],
    "resepformer.yaml": [f"{MODEL}encoder_channels=8", *TINY_COMMON],
    "tiny_sepformer.yaml": [f"{MODEL}encoder_channels=16", f"{MODEL}model_channels=8", f"{MODEL}attention_channels=4",
                            *TINY_COMMON],
}  # fmt: skip

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("audiosep.training_cli") is None,
    reason="needs the training CLI (audiosep.training_cli)",
)


@pytest.fixture
def librimix_root(request: pytest.FixtureRequest) -> Path:
    try:
        return request.getfixturevalue("tiny_librimix")
    except pytest.FixtureLookupError:
        pytest.skip("needs the tiny_librimix fixture of tests/conftest.py")


@pytest.mark.parametrize("recipe", sorted(TINY_MODELS))
def test_recipe_fits_two_steps_with_a_tiny_model(recipe: str, librimix_root: Path, tmp_path: Path) -> None:
    argv = [
        "fit", "--config", str(RECIPES / recipe), "--data.root", str(librimix_root), "--data.segment=0.25",
        "--data.batch_size=2", "--data.num_workers=0", "--trainer.fast_dev_run=2", "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false", *TINY_MODELS[recipe],
    ]  # fmt: skip
    assert main(argv) == 0


@pytest.mark.parametrize("recipe", sorted(TINY_MODELS))
def test_recipe_keeps_speechbrain_training_settings(recipe: str) -> None:
    config = yaml.safe_load((RECIPES / recipe).read_text())
    assert config["optimizer"]["init_args"]["lr"] == 1.5e-4
    assert config["trainer"]["gradient_clip_val"] == 5.0
    assert config["trainer"]["precision"] == "bf16-mixed"
    plateau = {"monitor": "val_loss", "mode": "min", "factor": 0.5, "patience": 2}
    assert config["lr_scheduler"]["init_args"] == plateau
