"""Training inputs that used to end in exit 0 with nothing learned, or in a traceback (stop 26 review)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from recipe_args import RECIPE, TINY_MODEL

from audiosep.cli import main
from audiosep.errors import ConfigError, UserError, user_message


def fit_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--config", RECIPE, f"--data.root={root}", "--data.segment=0.25", "--data.batch_size=2",
            f"--trainer.default_root_dir={out}", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", "--data.num_workers=0", *TINY_MODEL, *extra]  # fmt: skip


def copied(tiny_librimix: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_librimix, tmp_path / "Libri2Mix"))


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("audiosep: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_nan_sample_in_a_data_file_is_an_error_naming_it(tiny_librimix, tmp_path) -> None:
    """It was skipped as a non-finite step in every epoch, the dev scores were NaN, and the run ended with exit 0."""
    from audiosep.data.librimix import LibriMixDataModule

    root = copied(tiny_librimix, tmp_path)
    dataset = LibriMixDataModule(str(root)).split_dataset("dev", None)
    path = root / "wav8k" / "min" / "dev" / "s2" / f"{dataset.ids[1]}.wav"
    audio, rate = sf.read(path, dtype="float32")
    audio[5] = np.inf
    audio[9] = np.nan
    sf.write(path, audio, rate, subtype="FLOAT")
    dataset.get(0)
    with pytest.raises(UserError, match=rf"^{path}: 2 NaN or infinite samples in frames 0\.\.{len(audio)}$"):
        dataset.get(1)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--data.batch_size=0"], "batch_size must be a whole number of at least 1, got 0"),  # 58-line traceback
        (["--data.num_workers=-1"], "num_workers must be a whole number of at least 0, got -1"),
        (["--optimizer=torch.optim.Adam", "--optimizer.lr=-1"],
         "optimizer or lr_scheduler settings: ValueError: Invalid learning rate: -1.0"),  # fmt: skip
    ],
)
def test_loader_and_optimizer_settings_torch_refuses_are_one_line(tiny_librimix, tmp_path, capsys, extra, says) -> None:
    """Each ended in a traceback from torch's DataLoader or optimizer (reviewer)."""
    assert main(fit_argv(tiny_librimix, tmp_path, *extra)) == 1
    assert one_error_line(capsys) == f"audiosep: error: {says}"


def test_a_split_with_fewer_mixtures_than_a_batch_or_none_is_refused(tiny_librimix, tmp_path, capsys) -> None:
    """drop_last made 0 batches of 4 mixtures at batch size 8: no step, no checkpoint, exit 0."""
    assert main(fit_argv(tiny_librimix, tmp_path / "a", "--data.batch_size=8")) == 1
    assert "the train-100 split has 4 mixtures, fewer than batch_size 8" in one_error_line(capsys)
    root = copied(tiny_librimix, tmp_path)
    metadata = root / "wav8k" / "min" / "metadata" / "mixture_test_mix_clean.csv"
    metadata.write_text(metadata.read_text().splitlines()[0] + "\n")
    from audiosep.data.librimix import LibriMixDataModule

    with pytest.raises(UserError, match=r"mixture_test_mix_clean.csv: lists no mixtures$"):
        LibriMixDataModule(str(root)).test_dataloader()


def test_a_model_sample_rate_other_than_the_datas_is_refused(tiny_librimix, tmp_path, capsys) -> None:
    """16000 on 8 kHz data was recorded in every checkpoint, and infer resampled its inputs to it."""
    assert main(fit_argv(tiny_librimix, tmp_path, "--model.sample_rate=16000")) == 1
    assert "model sample_rate=16000 but the data's is 8000 Hz" in one_error_line(capsys)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_step_schedule_steps_per_batch_in_a_separation_run(tiny_librimix, tmp_path) -> None:
    """WarmupCosineLR stepped once per epoch under the separation task, without its total length."""
    from audiosep.optim import WarmupCosineLR

    argv = fit_argv(tiny_librimix, tmp_path, "--lr_scheduler=audiosep.optim.WarmupCosineLR",
                    "--lr_scheduler.warmup_steps=1", "--trainer.max_steps=3")  # fmt: skip
    assert main(argv) == 0
    state = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False)["lr_schedulers"][0]
    assert state["last_epoch"] == 3 and state["total_steps"] == 3
    assert WarmupCosineLR.interval == "step"


def fit_with_a_nan_weight_saved(tiny_librimix: Path, tmp_path: Path, saved_as: Path | None) -> tuple[Path, str]:
    """Fit two steps, then store the run's last.ckpt with its first weight NaN at ``saved_as`` (None: in place)."""
    assert main(fit_argv(tiny_librimix, tmp_path)) == 0
    last = next(tmp_path.rglob("last.ckpt"))
    checkpoint = torch.load(last, weights_only=False)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name].fill_(float("nan"))
    torch.save(checkpoint, saved_as or last)
    return saved_as or last, name


def test_a_resumed_checkpoint_with_a_nan_weight_is_refused(tiny_librimix, tmp_path, capsys) -> None:
    """Every step was skipped to the end of the run, exit 0, a best checkpoint at val_si_snri=nan."""
    path, name = fit_with_a_nan_weight_saved(tiny_librimix, tmp_path, tmp_path / "nan.ckpt")
    assert main(fit_argv(tiny_librimix, tmp_path, f"--ckpt_path={path}", "--trainer.max_steps=4")) == 1
    assert f"its weight '{name}' holds NaN or infinite values" in one_error_line(capsys)


def test_steps_that_stay_non_finite_end_the_run() -> None:
    from audiosep.tasks import guards
    from audiosep.tasks.separation import SeparationTask

    task = SeparationTask(torch.nn.Linear(1, 1), sample_rate=8000)
    task.log = lambda *args, **kwargs: None
    task._trainer = type("T", (), {"world_size": 1, "global_step": 7})()
    for _ in range(guards.MAX_CONSECUTIVE_NONFINITE - 1):
        assert task.guard_loss(torch.tensor(float("nan")), 1) is None
    assert task.guard_loss(torch.tensor(1.0), 1) is not None  # a finite step starts the count again
    for _ in range(guards.MAX_CONSECUTIVE_NONFINITE - 1):
        task.guard_loss(torch.tensor(float("nan")), 1)
    with pytest.raises(UserError, match=f"^{guards.MAX_CONSECUTIVE_NONFINITE} training steps in a row"):
        task.guard_loss(torch.tensor(float("inf")), 1)


def test_a_user_error_raised_in_a_dataloader_worker_is_one_line(tmp_path) -> None:
    """torch re-raises a worker's exception with the worker's traceback as its message (28 lines)."""

    class Missing(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> None:
            raise UserError(f"{tmp_path / 'x.wav'}: no such file")

    with pytest.raises(UserError) as caught:
        next(iter(torch.utils.data.DataLoader(Missing(), num_workers=1)))
    assert len(str(caught.value).splitlines()) > 3
    assert user_message(caught.value) == f"{tmp_path / 'x.wav'}: no such file"


def test_asr_manifest_errors_are_config_errors(tmp_path) -> None:
    from audiosep.data.asr import read_manifest

    with pytest.raises(ConfigError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, UserError)


def test_test_without_a_checkpoint_warns_that_it_scores_untrained_weights(tiny_librimix, tmp_path, capsys) -> None:
    """`audiosep test` without --ckpt_path wrote the scores of random weights, exit 0, without a word."""
    argv = ["test", "--config", RECIPE, f"--data.root={tiny_librimix}", f"--trainer.default_root_dir={tmp_path}",
            f"--model.test_csv={tmp_path / 's.csv'}", "--trainer.enable_progress_bar=false", *TINY_MODEL]  # fmt: skip
    assert main(argv) == 0
    assert "audiosep: warning: no --ckpt_path: test scores the model as the recipe builds it" in capsys.readouterr().err


def test_ckpt_path_last_with_a_nan_weight_is_refused_not_skipped(tiny_librimix, tmp_path, capsys) -> None:
    """`--ckpt_path last` took a NaN last.ckpt for another job's file and trained from step 0, exit 0."""
    last, name = fit_with_a_nan_weight_saved(tiny_librimix, tmp_path, None)
    assert main(fit_argv(tiny_librimix, tmp_path, "--ckpt_path=last", "--trainer.max_steps=4")) == 1
    assert f"--ckpt_path last ({last.resolve()}): its weight '{name}' holds NaN" in one_error_line(capsys)


def test_one_full_batch_is_counted_per_process_under_ddp() -> None:
    """5 mixtures on 2 processes are 3 for each (the sampler pads): a batch of 3 was refused as none."""
    from audiosep.data.librimix import LibriMixDataModule

    data = LibriMixDataModule("unused", batch_size=3)
    data.trainer = type("T", (), {"world_size": 2})()
    data._check_one_batch(5)
    with pytest.raises(UserError, match=r"4 mixtures \(2 for each of 2 processes\), fewer than batch_size 3"):
        data._check_one_batch(4)
