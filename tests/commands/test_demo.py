"""`audiosep demo` end to end on a tiny built-in set: data, 2 training steps, separation, report."""

import json
from pathlib import Path

import pytest
import soundfile as sf

from audiosep.cli import main
from audiosep.inference import Separator


def test_demo_writes_model_wavs_plot_and_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-train", "8", "--num-dev", "2", "--num-test", "2", "--max-steps", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "before training" in printed and "after" in printed
    assert "it/s" not in printed  # Lightning's bars went to a redirected stdout, between these lines (reviewer)
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"si_snri_before_db", "si_snri_after_db", "validation_curve", "wall_time_s", "training_time_s"}
    assert len(report["validation_curve"]) >= 1
    assert (out / "spectrograms.png").stat().st_size > 10_000
    estimates = sorted((out / "separated").glob("*_est*.wav"))
    assert len(estimates) == 4  # 2 test mixtures x 2 sources
    assert sf.info(estimates[0]).samplerate == 8000
    separator = Separator.from_checkpoint(out / "model.ckpt")
    assert separator.sample_rate == 8000


def test_a_rerun_resumes_the_training_of_an_earlier_run(tmp_path: Path, capsys) -> None:
    """A killed demo (here: a finished 2-step one asked for 4 steps) goes on from its last checkpoint."""
    import torch

    from audiosep.training_cli import find_last_checkpoint

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-train", "8", "--num-dev", "2", "--num-test", "2", "--max-steps"]
    assert main([*argv, "2"]) == 0
    first = find_last_checkpoint(out / "train")
    capsys.readouterr()
    first_report = json.loads((out / "report.json").read_text())
    curve = first_report["validation_curve"]
    assert main([*argv, "4"]) == 0
    assert f"resuming from {first}" in capsys.readouterr().out
    last = torch.load(find_last_checkpoint(out / "train"), weights_only=True)
    assert last["global_step"] == 4
    # the resumed run kept the first run's best score and curve (a new version_N folder forgot the best, and
    # the report held the resumed part only; reviewer)
    best = last["callbacks"][next(k for k in last["callbacks"] if k.startswith("ModelCheckpoint"))]
    report = json.loads((out / "report.json").read_text())
    assert report["validation_curve"][: len(curve)] == curve and len(report["validation_curve"]) > len(curve)
    assert round(float(best["best_model_score"]), 3) == max(row["val_si_snri"] for row in report["validation_curve"])
    # the training time counts both runs (wall_time_s is this run's only)
    assert report["training_time_s"] >= max(report["validation_curve"][-1]["elapsed_s"], first_report["training_time_s"])
    assert main([*argv, "4"]) == 0  # a rerun of a finished demo keeps its report
    assert json.loads((out / "report.json").read_text())["validation_curve"] == report["validation_curve"]
    assert main([*argv, "4", "--seed", "1"]) == 1  # another seed's data and model: never resumed from these
    assert "train/run.json: a run of other settings (seed, num_train, num_dev, num_test)" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--threads", "-1"], "--threads must be >= 1, got -1"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["--max-time", "banana"], "--max-time must be DD:HH:MM:SS"),
    (["--max-time", "00:00:00:00"], "--max-time must be longer than 00:00:00:00"),  # was a CheckpointError traceback
    (["--num-train", "0"], "num_train must be at least 1, got 0"),  # was checked after claiming --out (reviewer)
])  # fmt: skip
def test_bad_arguments_are_one_line_errors_before_any_work(argv: list[str], message: str, tmp_path: Path,
                                                          capsys) -> None:  # fmt: skip
    assert main(["demo", "--out", str(tmp_path / "demo"), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "demo").exists()  # nothing built


def test_the_spectrogram_plot_of_digital_silence_warns_nothing(tmp_path: Path) -> None:
    """A reference with silent stretches has -inf dB bins: matplotlib's log10 warned "divide by zero" on every
    `audiosep demo` (seen in the quick start); they are drawn as the colour map's floor."""
    import warnings

    import torch

    from audiosep.demo_report import Example, plot_spectrograms

    tone = torch.sin(torch.arange(4000) * 0.3)
    silent = torch.cat([torch.zeros(2000), tone[:2000]])
    example = Example("m", tone, torch.stack([tone, silent]), torch.stack([silent, tone]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_spectrograms(example, 8000, tmp_path / "spec.png")
    assert (tmp_path / "spec.png").stat().st_size > 1000


def test_a_second_demo_into_a_folder_in_use_is_refused(tmp_path: Path, capsys) -> None:
    """It trained into the same checkpoints and would have written the same model and report (reviewer)."""
    from audiosep.io import folder_lock

    out = tmp_path / "demo"
    with folder_lock(out, "--out"):  # what a running demo holds
        assert main(["demo", "--out", str(out), "--num-train", "8", "--num-dev", "2", "--num-test", "2",
                     "--max-steps", "2"]) == 1  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "demo: in use by a running audiosep command" in error[0]
    assert [path.name for path in out.iterdir()] == [".audiosep.lock"]  # nothing built or trained


def _set_lr_nan(checkpoint: dict) -> None:
    checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] = float("nan")


def _best_path_elsewhere(checkpoint: dict) -> None:
    state = checkpoint["callbacks"][next(k for k in checkpoint["callbacks"] if k.startswith("ModelCheckpoint"))]
    state["best_model_path"] = "/tmp/someone-elses-model.ckpt"  # the demo would ship that file as its model


@pytest.mark.parametrize("tamper", [_set_lr_nan, _best_path_elsewhere])
def test_a_rerun_checks_the_checkpoint_it_resumes_as_fit_does(tamper, tmp_path: Path, capsys) -> None:
    """The demo resumed its last.ckpt after a weight-shape check only: a NaN learning rate trained NaN weights, a
    saved best path named the model it shipped."""
    import torch

    from audiosep.training_cli import find_last_checkpoint

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-train", "8", "--num-dev", "2", "--num-test", "2", "--max-steps"]
    assert main([*argv, "2"]) == 0
    last = find_last_checkpoint(out / "train")
    checkpoint = torch.load(last, weights_only=True)
    tamper(checkpoint)
    torch.save(checkpoint, last)
    shipped = (out / "model.ckpt").read_bytes()
    capsys.readouterr()
    assert main([*argv, "4"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("audiosep")]  # not Lightning's
    assert len(err) == 1 and err[0].startswith(f"audiosep: error: {last}: ") and "to train the demo from its start" in err[0]
    assert (out / "model.ckpt").read_bytes() == shipped
