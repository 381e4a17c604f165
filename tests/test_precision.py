"""Mixed precision: every separator trains a few bf16-mixed steps on CPU without NaN, with the
loss in float32; a non-finite loss is skipped (no update) and counted in ``nonfinite_steps``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from audiosep.data.librimix import LibriMixDataModule
from audiosep.models.conv_tasnet import ConvTasNet
from audiosep.models.resepformer import RESepFormer
from audiosep.models.sepformer import SepFormer
from audiosep.models.tiny_sepformer import TinySepformer
from audiosep.tasks.separation import SeparationTask

SEPARATORS = {
    "conv_tasnet": lambda: ConvTasNet(enc_num_filters=16, enc_kernel_size=8, bottleneck_channels=8,
                                      hidden_channels=12, skip_channels=6, conv_kernel_size=3, num_layers=3,
                                      num_repeats=2),
    "sepformer": lambda: SepFormer(encoder_channels=16, kernel_size=8, model_channels=12, num_blocks=2,
                                   num_intra_layers=1, num_inter_layers=1, num_heads=2, ffn_dim=24, chunk_size=10),
    "resepformer": lambda: RESepFormer(encoder_channels=12, kernel_size=8, num_blocks=3, num_intra_layers=1,
                                       num_inter_layers=1, num_heads=2, ffn_dim=24, chunk_size=10),
    "tiny_sepformer": lambda: TinySepformer(encoder_channels=16, kernel_size=8, model_channels=12, num_blocks=2,
                                            num_intra_layers=3, num_inter_layers=2, num_heads=2,
                                            attention_channels=8, conv_kernel_size=3, ffn_dim=24, chunk_size=10),
}  # fmt: skip
STEPS = 4


class Watch(L.Callback):
    """Records every step's loss (value and dtype), the model output dtype and the parameters."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor | None] = []
        self.output_dtypes: set[torch.dtype] = set()
        self.params: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.model.register_forward_hook(lambda m, i, out: self.output_dtypes.add(out.dtype))
        self.params.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = (outputs or {}).get("loss")
        self.losses.append(None if loss is None else loss.detach())
        self.params.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})


def fit(task: SeparationTask, root: Path, out: Path, precision: str) -> tuple[L.Trainer, Watch]:
    watch = Watch()
    trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=STEPS, limit_val_batches=0,
                        logger=L.pytorch.loggers.CSVLogger(out), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[watch],
                        gradient_clip_val=5.0, log_every_n_steps=1)
    data = LibriMixDataModule(str(root), train_split="train-360", segment=0.25, batch_size=2, num_workers=0, seed=0)
    trainer.fit(task, datamodule=data)
    return trainer, watch


@pytest.mark.parametrize("name", sorted(SEPARATORS))
def test_bf16_mixed_training_runs_without_nan_and_the_loss_is_float32(name, tiny_librimix, tmp_path) -> None:
    torch.manual_seed(0)
    trainer, watch = fit(SeparationTask(SEPARATORS[name]()), tiny_librimix, tmp_path, "bf16-mixed")
    assert torch.bfloat16 in watch.output_dtypes  # the model really ran under bf16 autocast
    assert len(watch.losses) == STEPS and all(loss is not None for loss in watch.losses)
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in watch.losses)
    assert all(torch.isfinite(p).all() for p in watch.params[-1].values())
    assert any(not torch.equal(watch.params[0][k], v) for k, v in watch.params[-1].items())  # it trained
    assert trainer.callback_metrics["nonfinite_steps"] == 0


class NaNAt(SeparationTask):
    """Poisons the loss of the training batches (counted from 0) in ``poisoned``."""

    def __init__(self, model, poisoned: set[int]) -> None:
        super().__init__(model)
        self.poisoned, self.batches = poisoned, 0

    def compute_loss(self, estimate, sources):
        loss = super().compute_loss(estimate, sources)
        self.batches += 1
        return loss * float("nan") if self.batches - 1 in self.poisoned else loss


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_non_finite_loss_is_skipped_and_counted(precision, tiny_librimix, tmp_path) -> None:
    torch.manual_seed(0)
    trainer, watch = fit(NaNAt(SEPARATORS["conv_tasnet"](), poisoned={1}), tiny_librimix, tmp_path, precision)
    assert [loss is None for loss in watch.losses] == [False, True, False, False]
    before, after = watch.params[1], watch.params[2]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the poisoned step changed nothing
    assert any(not torch.equal(watch.params[2][k], v) for k, v in watch.params[3].items())  # training goes on
    assert all(torch.isfinite(p).all() for p in watch.params[-1].values())
    assert trainer.callback_metrics["nonfinite_steps"] == 1
    logged = (Path(trainer.logger.log_dir) / "metrics.csv").read_text()
    assert "nonfinite_steps" in logged.splitlines()[0]


def test_the_loss_is_computed_in_float32_inside_a_bf16_autocast_region() -> None:
    torch.manual_seed(0)
    sources = torch.randn(2, 2, 800)
    estimate = (sources + 0.3 * torch.randn_like(sources)).bfloat16()
    task = SeparationTask(SEPARATORS["conv_tasnet"]())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = task.compute_loss(estimate, sources.bfloat16())
    reference = task.loss(estimate.float(), sources.bfloat16().float())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-6)


def test_the_norm_study_counts_a_skipped_step_as_divergence() -> None:
    """The study stops a run at its first non-finite loss; the task now skips such a step (no loss)."""
    from types import SimpleNamespace

    from audiosep.norm_study import _StepMonitor

    monitor, trainer = _StepMonitor(), SimpleNamespace(global_step=3, should_stop=False)
    monitor.on_train_batch_start(trainer)
    monitor.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 0)
    assert monitor.diverged_at is None and not trainer.should_stop
    monitor.on_train_batch_end(trainer, None, {}, None, 1)  # what Lightning passes for a skipped step
    assert monitor.diverged_at == 3 and trainer.should_stop


def test_the_bf16_vs_fp32_demo_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """benchmarks/precision_demo.py on a tiny demo set and model, 2 steps per precision."""
    import importlib.util
    import json

    from audiosep.data.prep.demo_set import build_demo_set

    spec = importlib.util.spec_from_file_location(
        "precision_demo", Path(__file__).resolve().parents[1] / "benchmarks" / "precision_demo.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = build_demo_set(tmp_path / "data", seed=0, num_workers=0, num_train=8, num_dev=2, num_test=2,
                          num_speakers=8, progress=False)
    overrides = ["data.segment=0.25", "data.batch_size=2", "trainer.limit_val_batches=1",
                 *(f"model.model.init_args.{k}" for k in ("enc_num_filters=16", "bottleneck_channels=8",
                                                          "hidden_channels=16", "skip_channels=8", "num_layers=2",
                                                          "num_repeats=1"))]  # fmt: skip
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--steps", "2"]
    assert module.main(argv + [f"--override={o}" for o in overrides]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["runs"]) == {"32-true", "bf16-mixed"} and results["max_steps"] == 2
    for run in results["runs"].values():
        assert isinstance(run["test_si_snri_db"], float) and run["nonfinite_steps"] == 0
    assert results["bf16_minus_fp32_db"] == round(
        results["runs"]["bf16-mixed"]["test_si_snri_db"] - results["runs"]["32-true"]["test_si_snri_db"], 3
    )
