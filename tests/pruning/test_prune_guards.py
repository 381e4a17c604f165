"""`audiosep prune`'s guards: work-folder identity, inputs checked before any work, honest counts and splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from audiosep.checkpoint import load_model, save_model
from audiosep.checkpoint_io import AtomicCheckpointIO
from audiosep.cli import main
from audiosep.errors import UserError
from audiosep.models import ConvTasNet
from audiosep.pruning import pipeline
from audiosep.pruning.pipeline import PruneSettings, claim_work_dir, run_identity
from audiosep.training_cli import packaged_recipe

RECIPE = "demo/convtasnet_tiny.yaml"
TINY = dict(enc_num_filters=16, enc_kernel_size=8, bottleneck_channels=8, hidden_channels=16, skip_channels=8,
            num_layers=2, num_repeats=2)  # fmt: skip


def _checkpoint(folder: Path, name: str = "model.pt", metadata: dict | None = None, **kwargs) -> Path:
    """A tiny Conv-TasNet model file (seed 0) in ``folder``."""
    torch.manual_seed(0)
    path = folder / name
    save_model(ConvTasNet(**(TINY | kwargs)).eval(), path, {"sample_rate": 8000} if metadata is None else metadata)
    return path


def _argv(tmp_path: Path, ckpt: Path, root: Path | str, *extra: str) -> list[str]:
    """L1 pruning with one fine-tuning step (so the work folder holds a checkpoint), no latency check."""
    return ["prune", "--ckpt", str(ckpt), "--config", RECIPE, "--data-root", str(root), "--out", str(tmp_path / "p.pt"),
            "--method", "l1", "--target-macs", "0.6", "--finetune-epochs", "0.5", "--latency-seconds", "0",
            "--accelerator", "cpu", "--multiple", "1", "--work-dir", str(tmp_path / "work"), *extra]  # fmt: skip


def _one_error(capsys: pytest.CaptureFixture[str], *parts: str) -> str:
    """The single stderr line of a refused command, checked to hold every one of ``parts``."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("audiosep: error: ") and all(part in err[0] for part in parts), err[0]
    return err[0]


# Finding 1: the work folder's identity is the data and recipe as they are, not paths as typed.


def test_the_same_relative_data_root_naming_other_data_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], make_tiny_librimix
) -> None:
    ckpt = _checkpoint(tmp_path)
    for seed, folder in ((0, "a"), (1, "b")):
        make_tiny_librimix(tmp_path / folder / "data", seed=seed)
    argv = [*_argv(tmp_path, ckpt, "data/Libri2Mix"), "--config", str(packaged_recipe(RECIPE))]  # absolute: no cwd
    monkeypatch.chdir(tmp_path / "a")
    assert main(argv) == 0
    before = (tmp_path / "p.pt").read_bytes()
    monkeypatch.chdir(tmp_path / "b")
    capsys.readouterr()
    assert main(argv) == 1
    _one_error(capsys, "holds an earlier pruning of other weights or settings")
    assert (tmp_path / "p.pt").read_bytes() == before


def test_a_recipe_edited_in_place_is_another_run(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(packaged_recipe(RECIPE).read_text())
    ckpt = _checkpoint(tmp_path)
    assert main([*_argv(tmp_path, ckpt, tiny_librimix), "--config", str(recipe)]) == 0
    recipe.write_text(recipe.read_text().replace("batch_size: 4", "batch_size: 2"))
    capsys.readouterr()
    assert main([*_argv(tmp_path, ckpt, tiny_librimix), "--config", str(recipe)]) == 1
    _one_error(capsys, "holds an earlier pruning of other weights or settings")


def test_a_packaged_recipe_and_a_relative_data_root_resume_from_any_folder(
    tiny_librimix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run typed from two folders (relative root once, absolute once) is the same run: no false refusal."""
    ckpt = _checkpoint(tmp_path)
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path / "x")
    assert main(_argv(tmp_path, ckpt, tiny_librimix)) == 0
    monkeypatch.chdir(tiny_librimix.parent)
    assert main(_argv(tmp_path, ckpt, tiny_librimix.name)) == 0


# Finding 5: the model's class and constructor arguments are part of the identity.


def test_the_same_weights_in_another_architecture_are_another_run() -> None:
    gln = ConvTasNet(**TINY).eval()
    cln = ConvTasNet(**TINY, norm="cLN", causal=True).eval()
    cln.load_state_dict(gln.state_dict())
    settings = PruneSettings(method="l1")
    assert run_identity(gln, 8000, settings) != run_identity(cln, 8000, settings)
    same = ConvTasNet(**TINY).eval()
    same.load_state_dict(gln.state_dict())
    assert run_identity(gln, 8000, settings) == run_identity(same, 8000, settings)


# Finding 4: no training batch, no search, and the steps done are reported.


def test_a_train_split_smaller_than_a_batch_is_refused_before_any_work(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "big_batch.yaml"
    recipe.write_text(packaged_recipe(RECIPE).read_text().replace("batch_size: 4", "batch_size: 8"))
    assert main([*_argv(tmp_path, _checkpoint(tmp_path), tiny_librimix), "--config", str(recipe)]) == 1
    _one_error(capsys, "train split train-100", "batch_size 8", "no training batch")
    assert not (tmp_path / "work").exists() and not (tmp_path / "p.pt").exists()


def test_sepprune_without_search_steps_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["prune", "--ckpt", str(_checkpoint(tmp_path)), "--out", str(tmp_path / "p.pt"), "--search-steps", "0"]
    assert main(argv) == 1
    _one_error(capsys, "--search-steps must be >= 1 with --method sepprune")


def test_the_search_runs_the_steps_asked_across_epochs_and_reports_them(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny train-100 split is one batch an epoch; 3 search steps are 3 steps, not capped at one epoch."""
    report = tmp_path / "r.json"
    argv = [*_argv(tmp_path, _checkpoint(tmp_path), tiny_librimix), "--method", "sepprune", "--search-steps", "3",
            "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(report.read_text())
    assert data["search_steps"] == 3 and data["finetune_steps"] == 1 and data["train_batches_per_epoch"] == 1
    assert "steps done: search 3, fine-tuning 1 (1 training batches per epoch)" in capsys.readouterr().out


# Finding 6: atomic phase checkpoints, and a damaged one is a one-line error.


def test_phase_checkpoints_are_written_atomically(tmp_path: Path) -> None:
    trainer = pipeline._trainer(tmp_path, PruneSettings(accelerator="cpu"), max_steps=1)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_truncated_phase_checkpoint_is_one_error_line(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*_argv(tmp_path, _checkpoint(tmp_path), tiny_librimix), "--method", "sepprune", "--search-steps", "1",
            "--finetune-epochs", "0"]  # fmt: skip
    assert main(argv) == 0
    last = tmp_path / "work" / "search" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"audiosep: error: {last}: not a readable checkpoint")
    assert "delete it" in err


# Finding 7: the model and the data must agree.


@pytest.mark.parametrize(
    ("kwargs", "metadata", "problem"),
    [
        ({"num_sources": 3}, None, "separates 3 sources, but demo/convtasnet_tiny.yaml has n_src 2"),
        ({}, {"sample_rate": 16000}, "sample rate 16000 Hz, but demo/convtasnet_tiny.yaml is at 8000 Hz"),
    ],
)
def test_a_model_that_does_not_fit_the_data_is_refused_before_any_work(
    kwargs: dict, metadata: dict | None, problem: str, tiny_librimix: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    ckpt = _checkpoint(tmp_path, metadata=metadata, **kwargs)
    assert main(_argv(tmp_path, ckpt, tiny_librimix)) == 1
    _one_error(capsys, str(ckpt), problem)
    assert not (tmp_path / "work").exists()


def test_a_model_without_a_sample_rate_takes_the_datas_and_says_so(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path, metadata={})
    assert main([*_argv(tmp_path, ckpt, tiny_librimix), "--finetune-epochs", "0"]) == 0
    assert "no sample_rate in its metadata; the data's 8000 Hz is used" in capsys.readouterr().err
    assert load_model(tmp_path / "p.pt")[1]["sample_rate"] == 8000


# Finding 8: outputs never land in the work folder or the data, and a file parent is caught up front.


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--out", "{tmp}/same", "--work-dir", "{tmp}/same"], "--out {tmp}/same: inside the work folder"),
        (["--out", "{tmp}/w/p.pt", "--work-dir", "{tmp}/w"], "--out {tmp}/w/p.pt: inside the work folder"),
        (["--report", "{tmp}/work/run.json"], "--report {tmp}/work/run.json: inside the work folder"),
        (["--out", "{tmp}/p.pt", "--work-dir", "{tmp}/p.pt.work", "--report", "{tmp}/p.pt.work"], "inside the work folder"),
        (["--out", "{tmp}/afile/x.pt"], "{tmp}/afile is a file, not a folder"),
        (["--out", "{data}/wav8k/min/metadata/mixture_dev_mix_clean.csv"], "inside the data folder"),
        (["--work-dir", "{tmp}/p.pt/work"], "--work-dir {tmp}/p.pt/work: the same as or inside --out"),
        (["--work-dir", "{data}/wav8k/min/work"], "--work-dir {tmp}/data/wav8k/min/work: inside the data folder"),
    ],
)
def test_output_paths_that_clash_with_the_work_folder_or_data_are_refused_up_front(
    flags: list[str], problem: str, tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_librimix, data)
    (tmp_path / "afile").write_text("x")
    ckpt = _checkpoint(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    filled = [flag.format(tmp=tmp_path, data=data) for flag in flags]
    assert main([*_argv(tmp_path, ckpt, data), *filled]) == 1
    _one_error(capsys, problem.format(tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing claimed, nothing written


# Finding 9: a failed start claims nothing.


def test_a_typo_in_the_data_root_does_not_block_the_corrected_command(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path)
    assert main(_argv(tmp_path, ckpt, f"{tiny_librimix}x")) == 1
    _one_error(capsys, "no LibriMix folder found")
    assert not (tmp_path / "work").exists()
    assert main(_argv(tmp_path, ckpt, tiny_librimix)) == 0


def _identity(seed: int) -> dict:
    """The record prune writes for the tiny model (weights of seed 0) pruned by L1 with ``seed``."""
    torch.manual_seed(0)
    return run_identity(ConvTasNet(**TINY).eval(), 8000, PruneSettings(method="l1", seed=seed))


def test_a_work_folder_without_phase_checkpoints_is_taken_over(tmp_path: Path) -> None:
    """A start that failed after the claim left only the record: nothing can be resumed, so nothing is refused."""
    claim_work_dir(tmp_path / "work", _identity(1))
    claim_work_dir(tmp_path / "work", _identity(2))
    assert json.loads((tmp_path / "work" / "run.json").read_text()) == _identity(2)
    (tmp_path / "work" / "finetune").mkdir()
    (tmp_path / "work" / "finetune" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(UserError, match="holds an earlier pruning"):
        claim_work_dir(tmp_path / "work", _identity(3))


@pytest.mark.parametrize("record", ['{"note": "a training folder\'s record"}', '{"model": "x"}', "[1]", "not json"])
def test_a_folder_whose_run_json_is_not_a_pruning_record_is_refused_and_kept(record: str, tmp_path: Path) -> None:
    """Review s24 finding 7: only an earlier prune's record (its identity keys) is taken over, never overwritten."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "run.json").write_text(record)
    (work / "results.csv").write_text("precious\n")
    with pytest.raises(UserError, match="run.json is not a pruning record"):
        claim_work_dir(work, _identity(0))
    assert (work / "run.json").read_text() == record
    assert sorted(p.name for p in work.iterdir()) == ["results.csv", "run.json"]


# Finding 11: the speed-up comes with its spread, and a noisy one is flagged.


def test_a_noisy_speedup_is_reported_with_its_spread_and_a_warning(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    noisy = {"before": {"min": 0.008, "q1": 0.009, "median": 0.030, "q3": 0.060, "max": 0.065},
             "after": {"min": 0.008, "q1": 0.008, "median": 0.020, "q3": 0.050, "max": 0.060}}  # fmt: skip
    monkeypatch.setattr(pipeline, "measure_latency_spread", lambda *args, **kwargs: noisy)
    report = tmp_path / "r.json"
    argv = [*_argv(tmp_path, _checkpoint(tmp_path), tiny_librimix), "--finetune-epochs", "0",
            "--latency-seconds", "0.25", "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "speed-up 1.50x (0.18..7.50x between the latency quartiles" in out
    assert "warning: the speed-up 1.50x spans 0.18..7.50x" in err
    assert json.loads(report.read_text())["latency_spread_s"] == noisy


def test_a_tight_speedup_is_not_flagged() -> None:
    from audiosep.pruning.latency import unreliable_speedup

    before = {"min": 0.0095, "q1": 0.0098, "median": 0.0100, "q3": 0.0102, "max": 0.011}
    after = {"min": 0.0075, "q1": 0.0078, "median": 0.0080, "q3": 0.0081, "max": 0.009}
    assert unreliable_speedup(before, after) is None


# Finding 12: the final figure on a split the selection never saw, or said plainly that there is none.


def test_the_final_si_snri_is_also_reported_on_the_test_split(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    assert main([*_argv(tmp_path, _checkpoint(tmp_path), tiny_librimix), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["si_snri_split"] == "dev"
    assert data["si_snri_test_before"] is not None and data["si_snri_test_after"] is not None
    assert data["si_snri_test_after"] != data["si_snri_after"]
    out = capsys.readouterr().out
    assert "| test SI-SNRi (dB) |" in out and "test: held out, the figure to quote" in out


def test_without_a_test_split_the_report_says_the_figure_is_from_the_selection_split(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_root = tmp_path / "data"
    shutil.copytree(tiny_librimix, data_root)
    for csv in data_root.glob("wav8k/min/metadata/mixture_test_*.csv"):
        csv.unlink()
    report = tmp_path / "r.json"
    assert main([*_argv(tmp_path, _checkpoint(tmp_path), data_root), "--report", str(report)]) == 0
    assert json.loads(report.read_text())["si_snri_test_after"] is None
    out = capsys.readouterr().out
    assert "test SI-SNRi" not in out
    assert "(the data has no test split): the SI-SNRi after fine-tuning is optimistic" in out


# Minor: the recipe is read as `audiosep fit` reads it.


@pytest.mark.parametrize(
    ("data_section", "problem"),
    [
        ("  init_args: &a {batch_size: 4}\nother: *a\n", "YAML aliases (*name) are not supported"),
        ("  init_args: {batch_size: four}\n", "bad data arguments"),
        ("  init_args: {batch_sise: 4}\n", "bad data arguments"),
    ],
)
def test_the_recipe_is_read_like_fit_reads_it(
    data_section: str, problem: str, tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  class_path: audiosep.data.librimix.LibriMixDataModule\n" + data_section)
    assert main([*_argv(tmp_path, _checkpoint(tmp_path), tiny_librimix), "--config", str(recipe)]) == 1
    _one_error(capsys, str(recipe), problem)
    assert not (tmp_path / "work").exists()


# Review s24 finding 5: the recipe's crop length is checked with the other data arguments, before any work.


@pytest.mark.parametrize("segment", [".nan", "-1.0", ".inf", "0.0", "-.inf"])
def test_a_recipe_segment_that_is_not_positive_finite_seconds_is_refused_up_front(
    segment: str, tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(packaged_recipe(RECIPE).read_text().replace("segment: 1.5", f"segment: {segment}"))
    assert main([*_argv(tmp_path, _checkpoint(tmp_path), tiny_librimix), "--config", str(recipe)]) == 1
    _one_error(capsys, str(recipe), "data segment must be finite seconds > 0")
    assert not (tmp_path / "work").exists() and not (tmp_path / "p.pt").exists()


def test_a_null_recipe_segment_trains_on_whole_utterances(tiny_librimix: Path, tmp_path: Path) -> None:
    """``segment: null`` is what LibriMixDataModule reads as whole utterances: allowed, not mistaken for a bad value."""
    from audiosep.commands.prune import _datamodule

    recipe = tmp_path / "r.yaml"
    recipe.write_text(packaged_recipe(RECIPE).read_text().replace("segment: 1.5", "segment: null"))
    assert _datamodule(str(recipe), str(tiny_librimix)).segment is None


# Review s24 finding 9: the inputs are checked once per prune (the groups, the data setup and metadata reads).


def test_the_inputs_are_checked_once_and_errors_name_the_files(
    tiny_librimix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    check = pipeline.check_inputs
    monkeypatch.setattr(pipeline, "check_inputs", lambda *args, **kwargs: calls.append(args) or check(*args, **kwargs))
    ckpt = _checkpoint(tmp_path)
    assert main([*_argv(tmp_path, ckpt, tiny_librimix), "--finetune-epochs", "0"]) == 0
    assert len(calls) == 1
    assert calls[0][4:] == (str(ckpt), RECIPE)  # model_name, data_name: the one-line errors name the files


def test_a_pruning_of_other_audiosep_code_is_not_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An editable install keeps its version through edits: the record holds a digest of audiosep's sources."""
    import audiosep.pruning.pipeline as pipeline

    claim_work_dir(tmp_path / "work", _identity(1))
    (tmp_path / "work" / "finetune").mkdir()
    (tmp_path / "work" / "finetune" / "last.ckpt").write_bytes(b"x")
    claim_work_dir(tmp_path / "work", _identity(1))  # the same code: resumed
    monkeypatch.setattr(pipeline, "source_digest", lambda: "0" * 64)
    with pytest.raises(UserError, match="holds an earlier pruning .*audiosep's code"):
        claim_work_dir(tmp_path / "work", _identity(1))
