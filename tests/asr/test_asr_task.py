"""ASRTask: CTC loss, bf16 safety, schedule stepping, checkpoint -> Transcriber, and recipe smoke fits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from asr_helpers import TINY_BLOCKS

from audiosep.data.asr import ASRDataModule
from audiosep.models.quartznet import QuartzNet
from audiosep.nn.features import LogMelFeatures, SpecAugment
from audiosep.optim import WarmupCosineLR
from audiosep.tasks.asr import ASRTask, ctc_loss
from audiosep.transcriber import Transcriber

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def tiny_task(sample_rate: int = 16000) -> ASRTask:
    features = LogMelFeatures(sample_rate=sample_rate, n_mels=64)
    return ASRTask(QuartzNet(64, 29, TINY_BLOCKS), features=features, spec_augment=SpecAugment(time_width=5))


def test_ctc_loss_is_batch_mean_of_float64_reference():
    torch.manual_seed(0)
    log_probs = torch.randn(3, 12, 5).log_softmax(-1)
    lengths, targets = torch.tensor([12, 9, 6]), [[0, 1, 1], [2], [3, 0]]
    expected = torch.stack([
        F.ctc_loss(log_probs[b, :n].double()[:, None], torch.tensor([t]), torch.tensor([n]), torch.tensor([len(t)]), blank=4, reduction="sum")
        for b, (n, t) in enumerate(zip(lengths.tolist(), targets, strict=True))
    ]).mean()  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ctc_loss(log_probs.bfloat16(), lengths, targets, blank=4)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=0.02, atol=0)
    torch.testing.assert_close(ctc_loss(log_probs, lengths, targets, 4).double(), expected, rtol=1e-5, atol=0)


def test_size_mismatches_raise():
    with pytest.raises(ValueError, match="in_features"):
        ASRTask(QuartzNet(80, 29, TINY_BLOCKS))
    with pytest.raises(ValueError, match="num_classes"):
        ASRTask(QuartzNet(64, 30, TINY_BLOCKS))


def test_training_step_under_bf16_autocast(tiny_asr):
    task = tiny_task().train()
    dm = ASRDataModule(tiny_asr["train"], tiny_asr["val"], batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, log_probs, _ = task._loss(batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and log_probs.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


class StepScheduleTask(ASRTask):
    """ASRTask with an optimizer and step schedule, as LightningCLI would configure them."""

    def configure_optimizers(self):  # noqa: ANN201
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        return [optimizer], [WarmupCosineLR(optimizer, warmup_steps=10)]


def test_fit_steps_schedule_per_batch_and_checkpoint_rebuilds_transcriber(tiny_asr, tmp_path):
    pl.seed_everything(0)
    task = StepScheduleTask(QuartzNet(64, 29, TINY_BLOCKS), features=LogMelFeatures())
    dm = ASRDataModule(tiny_asr["train"], tiny_asr["val"], batch_size=2)
    trainer = pl.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(task, dm)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.lr_scheduler_configs[0].interval == "step" and scheduler.total_steps == 3
    assert scheduler.last_epoch == 3  # stepped after each of the 3 batches, not once per epoch
    trainer.validate(task, dm, verbose=False)
    assert {"val_wer", "val_cer", "val_loss"} <= set(trainer.callback_metrics)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    transcriber = Transcriber.from_checkpoint(tmp_path / "last.ckpt")
    waves, lengths, _ = next(iter(dm.val_dataloader()))
    task.eval()
    with torch.no_grad():
        expected = task.decode(*task(waves, lengths))
    assert transcriber.transcribe([w[:n] for w, n in zip(waves, lengths, strict=True)]) == expected
    assert transcriber.features.config() == task.features.config()


def test_sample_rate_mismatch_is_caught_at_setup(tiny_asr):
    task = tiny_task(sample_rate=8000)
    dm = ASRDataModule(tiny_asr["train"], tiny_asr["val"], sample_rate=16000)
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="sample_rate"):
        trainer.fit(task, dm)


@pytest.mark.parametrize(
    "recipe",
    ["demo/quartznet_fsdd.yaml", "librispeech/quartznet_5x5.yaml", "librispeech/quartznet_15x5.yaml"],
)
def test_recipe_smoke_fit(recipe, tiny_asr, tmp_path, monkeypatch):
    if importlib.util.find_spec("audiosep.training_cli") is None:
        pytest.skip("audiosep.training_cli (the `audiosep fit` LightningCLI) does not exist yet")
    from audiosep.cli import main

    monkeypatch.chdir(tmp_path)
    code = main([
        "fit", "--config", str(RECIPES / recipe), "--trainer.fast_dev_run=2", "--trainer.accelerator=cpu",
        "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.enable_progress_bar=false",
        f"--data.train_manifest={tiny_asr['train']}", f"--data.val_manifest={tiny_asr['val']}",
        f"--data.test_manifest={tiny_asr['test']}", "--data.batch_size=2", "--data.num_workers=0",
    ])  # fmt: skip
    assert code == 0


class BatchLog(pl.Callback):
    """Records the transcripts of every training batch, in order."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, ...]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.batches.append(tuple(batch[2]))


def fit_logged(
    tiny_asr, root: Path, max_epochs: int, ckpt_path: str | None = None, workers: int = 0
) -> tuple[BatchLog, Path]:
    """Fit the tiny task with batch size 1 (4 batches an epoch), a checkpoint after every step."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    log = BatchLog()
    every_step = ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[log, every_step],
    )  # fmt: skip
    pl.seed_everything(0)
    data = ASRDataModule(tiny_asr["train"], tiny_asr["val"], batch_size=1, seed=5, num_workers=workers)
    trainer.fit(tiny_task(), data, ckpt_path=ckpt_path)
    return log, root


@pytest.mark.parametrize("workers", [0, 1])
def test_each_epoch_draws_a_new_batch_order_and_a_resume_continues_it(tiny_asr, tmp_path, workers):
    """Lightning never called the batch sampler's set_epoch (epochs 0, 1, 2 trained one order), and a resumed
    run started the epoch again (batches trained twice, the rest of the epoch never); with workers, which draw
    indices as soon as Lightning makes the iterator (before its set_epoch), a resume drew epoch 0's order."""
    unbroken, root = fit_logged(tiny_asr, tmp_path / "a", max_epochs=3, workers=workers)
    epochs = [unbroken.batches[i : i + 4] for i in (0, 4, 8)]
    assert all(sorted(epoch) == sorted(epochs[0]) for epoch in epochs)  # each utterance once an epoch
    assert len(set(map(tuple, epochs))) > 1, "every epoch trained the same batch order"
    for step in (6, 4):  # mid-epoch, and after an epoch's last batch
        resumed, _ = fit_logged(tiny_asr, tmp_path / f"b{step}", 3, str(root / f"step={step}.ckpt"), workers=workers)
        assert resumed.batches == unbroken.batches[step:]


def test_validation_transcripts_are_spaced_as_evaluate_scores_them():
    """Greedy CTC's doubled and end spaces went into val_cer/test_cer (42.9 % for " the  cat " against
    "the cat", 0 % in `audiosep evaluate` and jiwer) (metrics reviewer)."""
    from torchmetrics.functional.text import char_error_rate

    task = tiny_task()
    path = []  # a frame per character of " the  cat ", a blank after each: both spaces of "  " survive CTC
    for char in " the  cat ":
        path += [task.tokenizer.vocabulary.index(char), task.tokenizer.blank]
    log_probs = torch.full((1, len(path), task.tokenizer.blank + 1), -30.0)
    log_probs[0, range(len(path)), path] = 0.0
    (hypothesis,) = task.decode(log_probs.log_softmax(-1), torch.tensor([len(path)]))
    assert hypothesis == "the cat" and float(char_error_rate([hypothesis], ["the cat"])) == 0.0


def test_training_transcripts_that_lose_characters_to_the_tokenizer_are_warned_about(tiny_asr, tmp_path):
    """"CHAPTER 12" trained as "chapter" and "12345 !!!" as an empty target, silently (reviewer)."""
    import json

    rows = [json.loads(line) for line in tiny_asr["train"].read_text().splitlines()]
    rows[0]["text"], rows[1]["text"] = "CHAPTER 12", "12345 !!!"
    for row in rows:
        row["audio_filepath"] = str(tiny_asr["train"].parent / row["audio_filepath"])
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = ASRTask(QuartzNet(64, 29, TINY_BLOCKS), features=LogMelFeatures())
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    with pytest.warns(UserWarning, match=r"2 of 4 training transcript\(s\) hold letters or digits outside the "
                                         r"vocabulary \('12345'\), dropped from their CTC targets \(1 left empty\)"):
        trainer.fit(task, ASRDataModule(train, tiny_asr["val"], batch_size=2))
