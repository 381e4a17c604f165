"""`audiosep norms study` end to end on a tiny set and model: table, CSV, JSON, plot, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import audiosep.norm_study as norm_study
from audiosep.cli import main
from audiosep.data.prep.demo_set import build_demo_set

TINY_SET = {"num_train": 8, "num_dev": 2, "num_test": 2, "num_speakers": 8, "progress": False}
TINY_MODEL = ["enc_num_filters=16", "bottleneck_channels=8", "hidden_channels=16", "skip_channels=8",
              "num_layers=2", "num_repeats=1"]  # fmt: skip
NORMS = "gLN,BN,unified_norm,elementwise_ln"


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_set(tmp_path_factory.mktemp("norm_study") / "data", seed=0, num_workers=0, **TINY_SET)


def _argv(data: Path, out: Path, norms: str = NORMS, *extra: str) -> list[str]:
    argv = ["norms", "study", "--data", str(data), "--out", str(out), "--norms", norms, "--steps", "4",
            "--evals", "2", "--val-mixtures", "1", "--rtf-seconds", "0.1", "--batch-size", "2",
            "--segment", "0.5", "--no-progress", *extra]  # fmt: skip
    for override in TINY_MODEL:
        argv += ["--override", override]
    return argv


def test_study_writes_table_csv_json_and_plot_and_resumes(
    demo_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "study"
    assert main(_argv(demo_set, out)) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["schema"] == "audiosep.norm_study/1" and report["steps"] == 4
    rows = {row["norm"]: row for row in report["rows"]}
    assert list(rows) == NORMS.split(",")
    assert rows["gLN"]["seeds"] == 2 and rows["BN"]["seeds"] == 1  # the baseline shows the seed noise
    assert rows["gLN"]["causal_at_inference"] is False
    assert rows["BN"]["causal_in_training"] is False and rows["BN"]["causal_at_inference"] is True
    assert rows["elementwise_ln"]["causal_in_training"] is True
    for run in report["runs"]:
        assert run["steps"] == 4 and len(run["curve"]) == 2 and not run["diverged"]
        assert run["rtf_plain"] > 0 and run["rtf_folded"] > 0 and run["step_time_s"] > 0
        assert isinstance(run["final_si_snri_db"], float)
    table = (out / "table.md").read_text()
    assert all(f"| {norm} |" in table for norm in rows)
    assert (out / "results.csv").read_text().splitlines()[0].startswith("norm,seeds,final_si_snri_db")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # Same seed and data order for every norm: the two gLN seeds differ, a rerun of seed 0 does not.
    gln = [run for run in report["runs"] if run["norm"] == "gLN"]
    assert gln[0]["curve"] != gln[1]["curve"]

    def no_training(*args: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(norm_study, "train_run", no_training)
    capsys.readouterr()
    assert main(_argv(demo_set, out)) == 0
    assert capsys.readouterr().out.count("finished earlier, kept") == 5
    assert json.loads((out / "results.json").read_text())["runs"] == report["runs"]


def test_a_run_from_other_settings_is_refused_not_reported_under_these(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Deleting study.json must not let a run trained at another --lr be kept as if it were this study's."""
    out = tmp_path / "study"
    assert main(_argv(demo_set, out, "BN", "--baseline-seeds", "1")) == 0
    (out / "study.json").unlink()
    (out / "results.json").unlink()
    capsys.readouterr()
    assert main(_argv(demo_set, out, "BN", "--baseline-seeds", "1", "--lr", "0.5")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "batch_norm-seed0.json: this run was trained with other settings" in error[0]
    assert not (out / "results.json").exists()


def test_out_that_is_a_file_is_one_error_line(demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "afile"
    out.write_text("x")
    assert main(_argv(demo_set, out, "BN")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "exists and is not a folder" in error[0]


def test_a_study_sized_for_other_minutes_is_refused(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --steps the step budget comes from --minutes: reusing another one's would be silent."""
    monkeypatch.setattr(norm_study.StudySettings, "fingerprint", lambda self: {"same": "settings"})
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"settings": {"same": "settings"}, "steps": 3, "minutes": 0.02}))
    argv = _argv(demo_set, out, "BN")
    del argv[argv.index("--steps") : argv.index("--steps") + 2]
    argv += ["--minutes", "5"]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "sized for --minutes 0.02, not 5.0" in error[0]


@pytest.mark.parametrize("content", [b"{not json", b"[]", b"\xff\xfe"])
def test_a_damaged_study_file_is_one_error_line(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes
) -> None:
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_bytes(content)
    assert main(_argv(demo_set, out, "BN", "--baseline-seeds", "1")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "study.json:" in error[0] and "use another --out" in error[0]


def test_a_run_repeats_exactly_with_the_same_seed(demo_set: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(_argv(demo_set, first, "BN", "--baseline-seeds", "1")) == 0
    assert main(_argv(demo_set, second, "BN", "--baseline-seeds", "1")) == 0
    runs = [json.loads((folder / "results.json").read_text())["runs"][0] for folder in (first, second)]
    assert runs[0]["curve"] == runs[1]["curve"] and runs[0]["final_si_snri_db"] == runs[1]["final_si_snri_db"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--norms", "gLN,group_norm"], "group_norm"),
        (["--override", "norm=BN"], "--norms"),
        (["--data", "MISSING"], "no LibriMix folder"),
        (["--segment", "nan"], "--segment must be positive and finite, got nan"),
        (["--lr", "nan"], "--lr must be positive and finite"),
        (["--rtf-seconds", "inf"], "--rtf-seconds must be positive and finite, got inf"),
        (["--warmup-fraction", "nan"], "--warmup-fraction must be in [0, 1]"),
        (["--threads", "-1"], "--threads must be >= 1, got -1"),
    ],
)
def test_bad_input_is_one_error_line_and_nothing_written(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture, change: list[str], message: str
) -> None:
    argv = _argv(demo_set, tmp_path / "out")
    index = argv.index(change[0]) if change[0] in argv and change[0] != "--override" else len(argv)
    argv[index : index + 2] = [change[0], str(tmp_path / change[1]) if change[1] == "MISSING" else change[1]]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_norm_the_model_refuses_fails_before_any_training(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["norms", "study", "--data", str(demo_set), "--out", str(tmp_path / "out"), "--model",
            "tiny_sepformer_demo", "--norms", "gLN,cLN", "--steps", "2"]  # fmt: skip
    assert main(argv) == 1
    assert "cumulative_ln" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_of_another_study_is_refused(demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "study"
    assert main(_argv(demo_set, out, "none", "--baseline-seeds", "1")) == 0
    assert main(_argv(demo_set, out, "none", "--baseline-seeds", "1", "--lr", "0.01")) == 1
    assert "other settings" in capsys.readouterr().err
