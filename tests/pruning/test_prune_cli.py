"""`audiosep prune` end to end on the tiny LibriMix tree: search, surgery, fine-tune, resume, infer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import audiosep.checkpoint_io as checkpoint_io
from audiosep.checkpoint import load_model, save_model
from audiosep.cli import main
from audiosep.io import folder_lock
from audiosep.models import ConvTasNet, build

RECIPE = "demo/convtasnet_tiny.yaml"


def _checkpoint(tmp_path: Path, model: torch.nn.Module | None = None) -> Path:
    torch.manual_seed(0)
    model = model or ConvTasNet(
        enc_num_filters=16, enc_kernel_size=8, bottleneck_channels=8, hidden_channels=16,
        skip_channels=8, num_layers=2, num_repeats=2,
    )  # fmt: skip
    path = tmp_path / "model.pt"
    save_model(model.eval(), path, {"sample_rate": 8000})
    return path


def _prune(tmp_path: Path, root: Path, ckpt: Path, *extra: str) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out, report = tmp_path / "pruned.pt", tmp_path / "report.json"
    argv = ["prune", "--ckpt", str(ckpt), "--config", RECIPE, "--data-root", str(root), "--out", str(out),
            "--target-macs", "0.6", "--search-steps", "3", "--finetune-epochs", "0.5",
            "--latency-seconds", "0.25", "--report", str(report), "--accelerator", "cpu",
            "--work-dir", str(tmp_path / "work"), "--multiple", "1", *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads(report.read_text())


@pytest.mark.parametrize("method", ["sepprune", "l1", "random"])
def test_prune_writes_a_smaller_model_that_infer_loads(
    method: str, tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _prune(tmp_path, tiny_librimix, _checkpoint(tmp_path), "--method", method)
    assert abs(report["macs_after"] / report["macs_before"] - 0.6) <= 0.02
    assert report["extra"]["macs_after_counted"] == pytest.approx(report["macs_after"], rel=1e-6)
    assert report["params_after"] < report["params_before"]
    assert all(v is not None for v in (report["si_snri_before"], report["si_snri_after"], report["latency_after_s"]))
    printed = capsys.readouterr().out
    assert "| params (M) |" in printed and "it/s" not in printed  # Lightning's bars in a redirected report (reviewer)
    model, metadata = load_model(tmp_path / "pruned.pt")
    assert model.init_args["hidden_channels"] == report["widths"]
    assert metadata["pruning"]["method"] == method
    wav = tmp_path / "mix.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(2000)).astype(np.float32), 8000)
    assert main(["infer", "--ckpt", str(tmp_path / "pruned.pt"), "--out-dir", str(tmp_path / "sep"), str(wav)]) == 0
    assert len(list((tmp_path / "sep").glob("*.wav"))) == 2


def test_a_target_missed_by_rounding_is_warned_about(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """16 hidden channels per block rounded to multiples of 8 cannot keep 60 % of the MACs."""
    report = _prune(tmp_path, tiny_librimix, _checkpoint(tmp_path), "--method", "l1", "--multiple", "8",
                    "--finetune-epochs", "0")  # fmt: skip
    assert all(width % 8 == 0 for width in report["widths"])
    assert "warning: " in capsys.readouterr().err


def test_a_second_run_resumes_the_finished_phases(tiny_librimix: Path, tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    first = _prune(tmp_path, tiny_librimix, ckpt)
    assert (tmp_path / "work" / "search" / "last.ckpt").is_file()
    assert (tmp_path / "work" / "finetune" / "last.ckpt").is_file()
    second = _prune(tmp_path, tiny_librimix, ckpt)
    assert second["widths"] == first["widths"]  # the same learned scores, read back from the search checkpoint


def test_a_work_folder_of_other_weights_or_settings_is_refused_not_resumed(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resuming another run's fine-tuning would hand back that run's model under this one's name."""
    ckpt = _checkpoint(tmp_path)
    _prune(tmp_path, tiny_librimix, ckpt, "--method", "random")
    pruned = (tmp_path / "pruned.pt").read_bytes()
    other = tmp_path / "other.pt"
    model, metadata = load_model(ckpt)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_model(model, other, metadata)
    moved = tmp_path / "moved_data"
    moved.symlink_to(tiny_librimix, target_is_directory=True)  # the same files, another --data-root
    base = ["prune", "--ckpt", str(ckpt), "--config", RECIPE, "--data-root", str(tiny_librimix), "--out",
            str(tmp_path / "pruned.pt"), "--target-macs", "0.6", "--finetune-epochs", "0.5", "--latency-seconds", "0",
            "--accelerator", "cpu", "--work-dir", str(tmp_path / "work"), "--multiple", "1"]  # fmt: skip
    for extra in (["--ckpt", str(other), "--method", "random"], ["--method", "l1"],
                  ["--method", "random", "--data-root", str(moved)]):  # fmt: skip
        capsys.readouterr()
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds an earlier pruning of other weights or settings" in err[0]
    assert (tmp_path / "pruned.pt").read_bytes() == pruned
    (tmp_path / "afile").write_text("x")
    assert main([*base, "--method", "random", "--work-dir", str(tmp_path / "afile")]) == 1
    assert "afile: exists and is not a folder" in capsys.readouterr().err
    with folder_lock(tmp_path / "work", "--work-dir"):  # a pruning still running there
        assert main([*base, "--method", "random"]) == 1
    assert "work: in use by a running audiosep command (pid" in capsys.readouterr().err
    assert (tmp_path / "pruned.pt").read_bytes() == pruned


def test_transformer_separator_prunes_its_ffn(tiny_librimix: Path, tmp_path: Path) -> None:
    model = build("sepformer_base", encoder_channels=16, model_channels=16, num_blocks=1, num_intra_layers=1,
                  num_inter_layers=1, num_heads=2, ffn_dim=64, chunk_size=10)  # fmt: skip
    report = _prune(tmp_path, tiny_librimix, _checkpoint(tmp_path, model), "--method", "l1", "--target-macs", "0.8",
                    "--finetune-epochs", "0")  # fmt: skip
    pruned, _ = load_model(tmp_path / "pruned.pt")
    assert pruned.init_args["ffn_dim"] == report["widths"] and max(report["widths"]) < 64


def test_profile_prints_the_costliest_groups_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "profile.json"
    argv = ["prune", "--ckpt", str(_checkpoint(tmp_path)), "--profile", "--latency-seconds", "0.25", "--report", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "prunable group" in out and "masker.blocks.3" in out
    profile = json.loads(report.read_text())
    assert len(profile["groups"]) == 4 and all(0 < g["macs_share"] < 1 for g in profile["groups"])
    # the layers' own MACs add up to the model's total
    assert sum(layer["macs"] for layer in profile["layers"]) == pytest.approx(profile["macs"], rel=1e-6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target-macs", "1.5"], "--target-macs"),
        (["--target-macs", "nan"], "--target-macs must be in (0, 1], got nan"),
        (["--threshold", "nan"], "--threshold must be in (0, 1), got nan"),
        (["--finetune-epochs", "nan"], "--finetune-epochs must be finite and >= 0"),
        (["--latency-seconds", "inf"], "--latency-seconds must be finite and >= 0 (0: no latency check), got inf"),
        (["--latency-seconds", "-1"], "--latency-seconds must be finite and >= 0"),
        (["--profile", "--latency-seconds", "0"], "give --latency-seconds > 0"),
        (["--multiple", "0"], "--multiple must be >= 1"),
        (["--config", "demo/nope.yaml"], "recipe not found"),
        (["--method", "sepprune"], "needs --config"),
    ],
)
def test_bad_requests_are_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prune", "--ckpt", str(_checkpoint(tmp_path)), "--out", str(tmp_path / "p.pt"), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_recipe_naming_other_data_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "evil.yaml"
    recipe.write_text("data:\n  class_path: os.system\n  init_args: {command: touch pwned}\n")
    argv = ["prune", "--ckpt", str(_checkpoint(tmp_path)), "--out", str(tmp_path / "p.pt"), "--config", str(recipe)]
    assert main(argv) == 1
    assert "must use one of" in capsys.readouterr().err
    assert not Path("pwned").exists()


def test_latency_seconds_zero_skips_the_latency_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "p.pt", tmp_path / "r.json"
    argv = ["prune", "--ckpt", str(_checkpoint(tmp_path)), "--out", str(out), "--method", "l1", "--finetune-epochs", "0",
            "--latency-seconds", "0", "--report", str(report)]  # fmt: skip
    assert main(argv) == 0 and out.is_file()
    assert "Traceback" not in capsys.readouterr().err
    latency = json.loads(report.read_text())
    assert latency["latency_before_s"] is None and latency["latency_after_s"] is None  # skipped, not measured


def test_a_gpu_accelerator_without_a_gpu_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["prune", "--ckpt", str(_checkpoint(tmp_path)), "--out", str(tmp_path / "p.pt"), "--accelerator", "gpu"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--accelerator gpu: no CUDA device is available here" in err[0]
    assert not (tmp_path / "p.pt").exists()


def test_out_must_be_a_new_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path)
    before = ckpt.read_bytes()
    base = ["prune", "--ckpt", str(ckpt), "--method", "l1", "--finetune-epochs", "0", "--latency-seconds", "0"]
    assert main([*base, "--out", str(ckpt)]) == 1
    assert "would replace a file this command reads" in capsys.readouterr().err
    assert ckpt.read_bytes() == before  # the input model is intact
    assert main([*base, "--out", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
    for flags, problem in (
        (["--profile", "--latency-seconds", "0.1", "--report", str(ckpt)], "would replace a file this command reads"),
        (["--out", str(tmp_path / "p.pt"), "--report", str(tmp_path / "p.pt")], "would replace a file this command"),
        (["--out", str(tmp_path / "p.pt"), "--report", str(tmp_path)], "is a folder"),
    ):
        assert main([*base, *flags]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("audiosep: error: --report ") and problem in err[0]
    assert ckpt.read_bytes() == before and not (tmp_path / "p.pt").exists()


class Killed(RuntimeError):
    """Stands for a kill of the process mid-search."""


def test_a_search_killed_midway_resumes_from_its_last_save(
    tiny_librimix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """last.ckpt came only when the search ended (Lightning saves it beside a top-k save, and there was none):
    a search killed at step 366 of 600 started again from step 0."""
    from audiosep.pruning.task import ChannelGateTask

    ckpt = _checkpoint(tmp_path)
    unbroken = _prune(tmp_path / "a", tiny_librimix, ckpt, "--search-steps", "30", "--finetune-epochs", "0")
    step = ChannelGateTask.training_step

    def killed_at_27(self, batch, batch_idx):  # noqa: ANN001, ANN202
        if self.trainer.global_step == 27:
            raise Killed
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ChannelGateTask, "training_step", killed_at_27)
    with pytest.raises(Killed):
        _prune(tmp_path / "b", tiny_librimix, ckpt, "--search-steps", "30", "--finetune-epochs", "0")
    last = tmp_path / "b" / "work" / "search" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["global_step"]  # every 25 steps, and after each validation
    assert checkpoint_io.LAST_EVERY_STEPS == 25 and 25 <= saved <= 27
    monkeypatch.setattr(ChannelGateTask, "training_step", step)
    resumed = _prune(tmp_path / "b", tiny_librimix, ckpt, "--search-steps", "30", "--finetune-epochs", "0")
    assert resumed["widths"] == unbroken["widths"] and resumed["search_steps"] == unbroken["search_steps"] == 30
    search = tmp_path / "a" / "work" / "search"  # its own last.ckpt only: no Lightning default checkpoint beside it
    assert sorted(p.relative_to(search).as_posix() for p in search.rglob("*.ckpt")) == ["last.ckpt"]


def test_a_target_below_what_pruning_can_reach_says_so(
    tiny_librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 1 % every block is one channel wide: the warning blamed --multiple 1."""
    report = _prune(tmp_path, tiny_librimix, _checkpoint(tmp_path), "--method", "l1", "--target-macs", "0.01",
                    "--finetune-epochs", "0")  # fmt: skip
    assert set(report["widths"]) == {1}
    err = capsys.readouterr().err
    assert "every pruned group is at its narrowest" in err and "smaller --multiple" not in err


def test_profile_of_a_model_without_a_pruning_rule_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--profile ran a QuartzNet with a mixture and printed "forward() missing 1 required positional argument"."""
    from audiosep.asr_metadata import asr_metadata
    from audiosep.models import QuartzNet
    from audiosep.nn.features import LogMelFeatures

    model = QuartzNet(16, 5, [[16, 11, 1, 2, 1, False], [16, 11, 2], [24, 1, 1, 1, 1, False, False]])
    save_model(model, tmp_path / "asr.ckpt", asr_metadata(LogMelFeatures(16000, n_mels=16), list("abc ")))
    assert main(["prune", "--ckpt", str(tmp_path / "asr.ckpt"), "--profile", "--latency-seconds", "0.1"]) == 1
    assert "no pruning rule for QuartzNet" in capsys.readouterr().err


def test_a_moved_work_folder_resumes_from_its_own_best_checkpoint(tiny_librimix: Path, tmp_path: Path) -> None:
    """The fine-tuning's resumed ModelCheckpoint recorded the old folder's absolute best path: a moved work folder
    failed on it, and a copied one took whatever another run had written there since (reviewer)."""
    ckpt = _checkpoint(tmp_path)
    first = _prune(tmp_path / "a", tiny_librimix, ckpt, "--method", "l1")
    weights = load_model(tmp_path / "a" / "pruned.pt")[0].state_dict()
    (tmp_path / "a").rename(tmp_path / "b")
    (tmp_path / "b" / "pruned.pt").unlink()
    second = _prune(tmp_path / "b", tiny_librimix, ckpt, "--method", "l1")
    assert second["widths"] == first["widths"]
    assert list((tmp_path / "b" / "work" / "finetune").glob("epoch=*.ckpt"))  # a best checkpoint was taken
    moved = load_model(tmp_path / "b" / "pruned.pt")[0].state_dict()
    assert moved.keys() == weights.keys() and all(torch.equal(moved[k], v) for k, v in weights.items())
