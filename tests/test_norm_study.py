"""`audiosep norms study` end to end on a tiny set and model: table, CSV, JSON, plot, resume, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import audiosep.norm_study as norm_study
from audiosep.cli import main
from audiosep.data.prep.demo_set import build_demo_set
from audiosep.io import folder_lock

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
    leftover = out / "runs" / "batch_norm-seed0"  # a kill between a run's record and its folder's removal
    leftover.mkdir()
    (leftover / "last.ckpt").write_bytes(b"x")
    capsys.readouterr()
    assert main(_argv(demo_set, out)) == 0
    assert not leftover.exists()
    assert capsys.readouterr().out.count("finished earlier, kept") == 5
    assert json.loads((out / "results.json").read_text())["runs"] == report["runs"]


def test_a_run_from_other_settings_is_refused_not_reported_under_these(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Deleting study.json must not let a run trained at another --lr be kept as if it were this study's: the
    folder is then no study's (its run records say so too, were study.json replaced by one of these settings)."""
    out = tmp_path / "study"
    assert main(_argv(demo_set, out, "BN", "--baseline-seeds", "1")) == 0
    (out / "study.json").unlink()
    (out / "results.json").unlink()
    capsys.readouterr()
    assert main(_argv(demo_set, out, "BN", "--baseline-seeds", "1", "--lr", "0.5")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "exists and is not a norm study's folder" in error[0]
    assert not (out / "results.json").exists() and not (out / "study.json").exists()
    other = tmp_path / "other"  # an --lr 0.5 study handed this study's run record: the record refuses
    assert main(_argv(demo_set, other, "gLN", "--baseline-seeds", "1", "--lr", "0.5")) == 0  # writes study.json
    shutil.copy(out / "runs" / "batch_norm-seed0.json", other / "runs")
    capsys.readouterr()
    assert main(_argv(demo_set, other, "BN", "--baseline-seeds", "1", "--lr", "0.5")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "batch_norm-seed0.json: this run was trained with other settings" in error[0]


def test_out_that_is_a_file_is_one_error_line(demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "afile"
    out.write_text("x")
    assert main(_argv(demo_set, out, "BN")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "exists and is not a folder" in error[0]


def test_a_folder_of_the_users_own_files_is_refused_not_written_into(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The study's results.csv and table.md replaced a user's files of those names, exit 0 (reviewer)."""
    out = tmp_path / "my_project"
    out.mkdir()
    (out / "results.csv").write_text("mine")
    assert main(_argv(demo_set, out, "BN")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "exists and is not a norm study's folder (it holds 'results.csv'" in error[0]
    assert sorted(path.name for path in out.iterdir()) == [".audiosep.lock", "results.csv"]
    assert (out / "results.csv").read_text() == "mine"


def test_a_study_running_in_out_keeps_a_second_one_out(demo_set: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    out = tmp_path / "study"
    with folder_lock(out, "--out"):
        assert main(_argv(demo_set, out, "BN")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "study: in use by a running audiosep command (pid" in error[0]
    assert [path.name for path in out.iterdir()] == [".audiosep.lock"]


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
        (["--rtf-seconds", "0.0001"], "--rtf-seconds must be from 0.1 to 60.0 s"),  # an empty input timed (reviewer)
        (["--segment", "100"], "--segment must be from 0.1 to 60.0 s, got 100.0"),
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


# --- norms named by alias (one norm, one row) -------------------------------------------------


@pytest.mark.parametrize("norms", ["gLN,global_ln", "BN,batch_norm", "LN,channel_ln", "layer_norm,LN",
                                   "cLN,cumulative_ln"])  # fmt: skip
def test_a_norm_listed_by_alias_and_by_name_is_refused(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture, norms: str
) -> None:
    """``gLN,global_ln`` is one norm twice: its seed-0 run would be counted in the row twice."""
    assert main(_argv(demo_set, tmp_path / "out", norms)) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "lists a norm twice" in error[0] and norms.replace(",", ", ") in error[0]
    assert not (tmp_path / "out").exists()


def _record(norm: str, seed: int, final: float | None, steps: int = 4, step_time: float | None = 0.01) -> dict[str, Any]:
    """A run record as :func:`norm_study.train_run` writes it (the fields the summary reads)."""
    return {"norm": norm, "seed": seed, "steps": steps, "final_si_snri_db": final, "step_time_s": step_time,
            "rtf_plain": 0.02, "rtf_folded": 0.01, "folded_speedup": 2.0, "causal_in_training": False,
            "causal_at_inference": False, "diverged": final is None, "curve": []}  # fmt: skip


def test_summary_rows_are_keyed_by_canonical_norm() -> None:
    runs = [_record("gLN", 0, -18.0), _record("global_ln", 1, -15.0), _record("BN", 0, -20.0)]
    rows = norm_study.summary_rows(runs, {"global_ln": "gLN", "batch_norm": "BN"})
    assert [(row["norm"], row["canonical_norm"], row["seeds"]) for row in rows] == [
        ("gLN", "global_ln", 2), ("BN", "batch_norm", 1)]  # fmt: skip
    assert rows[0]["final_per_seed_db"] == [-18.0, -15.0] and rows[0]["final_si_snri_db"] == -16.5


# --- a resumed study: same data, same threads -------------------------------------------------


def test_training_bars_stay_out_of_a_redirected_stdout(demo_set: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Lightning's bars go to stdout: they went between the study's lines in a redirected log (reviewer)."""
    argv = [arg for arg in _argv(demo_set, tmp_path / "study", "none", "--baseline-seeds", "1") if arg != "--no-progress"]
    assert main(argv) == 0
    assert "it/s" not in capsys.readouterr().out


def test_a_study_resumed_on_other_data_is_refused(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The data folder regenerated in place (another seed) must not be compared with runs on the old one."""
    data = tmp_path / "data"
    shutil.copytree(demo_set, data)
    out = tmp_path / "study"
    assert main(_argv(data, out, "BN", "--baseline-seeds", "1")) == 0
    shutil.rmtree(data)
    build_demo_set(data, seed=1, num_workers=0, **TINY_SET)
    capsys.readouterr()
    assert main(_argv(data, out, "BN,gLN", "--baseline-seeds", "1")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "study.json: this study was trained on other data" in error[0]
    (out / "study.json").unlink()  # no study's folder now (and the run record holds the data fingerprint too)
    assert main(_argv(data, out, "BN", "--baseline-seeds", "1")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "exists and is not a norm study's folder" in error[0]
    assert [row["norm"] for row in json.loads((out / "results.json").read_text())["rows"]] == ["BN"]


def test_a_study_resumed_with_other_threads_is_refused(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Step time and RTF are study outputs: runs timed on 1 and 2 threads are not one table."""
    before = torch.get_num_threads()
    out = tmp_path / "study"
    try:
        assert main(_argv(demo_set, out, "none", "--baseline-seeds", "1", "--threads", "1")) == 0
        capsys.readouterr()
        assert main(_argv(demo_set, out, "none", "--baseline-seeds", "1", "--threads", "2")) == 1
    finally:
        torch.set_num_threads(before)
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "ran with 1 threads, not 2; give --threads 1" in error[0]
    assert json.loads((out / "study.json").read_text())["conditions"]["threads"] == 1


def test_a_study_resumed_by_other_audiosep_code_is_refused(
    demo_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """An editable install keeps its version through edits: a study resumed after one trained the new norms
    with other code than the kept runs, in one table (reviewer: a changed gradient clip)."""
    import audiosep.norm_study as norm_study

    out = tmp_path / "study"
    assert main(_argv(demo_set, out, "none", "--baseline-seeds", "1")) == 0
    real = norm_study.source_digest
    monkeypatch.setattr(norm_study, "source_digest", lambda: "edited" + real()[6:])
    capsys.readouterr()
    assert main(_argv(demo_set, out, "none,BN", "--baseline-seeds", "1")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "this study's runs were trained by other audiosep code" in error[0]


def test_the_same_data_typed_relative_or_absolute_is_one_study(
    demo_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "study"
    assert main(_argv(demo_set, out, "none", "--baseline-seeds", "1")) == 0
    monkeypatch.chdir(demo_set.parent)
    monkeypatch.setattr(norm_study, "train_run", lambda *args: pytest.fail("a finished run was trained again"))
    capsys.readouterr()
    assert main(_argv(Path(demo_set.name), out, "none", "--baseline-seeds", "1")) == 0
    assert "finished earlier, kept" in capsys.readouterr().out


# --- a train split too small for one batch ----------------------------------------------------


@pytest.mark.parametrize("budget", [["--steps", "2"], ["--minutes", "0.01"]])
def test_a_train_split_smaller_than_one_batch_is_refused_before_any_work(
    demo_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture, budget: list[str]
) -> None:
    """8 train mixtures, batches of 9 (the last incomplete batch is dropped): 0 steps must not look trained."""
    argv = _argv(demo_set, tmp_path / "out", "BN", "--baseline-seeds", "1")
    del argv[argv.index("--steps") : argv.index("--steps") + 2]
    argv[argv.index("--batch-size") + 1] = "9"
    assert main([*argv, *budget]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "train-100: 8 mixtures, fewer than --batch-size 9" in error[0]
    assert not (tmp_path / "out").exists()


def test_a_run_short_of_the_budget_is_named_under_the_table() -> None:
    runs = [_record("BN", 0, -29.08, steps=0, step_time=None), _record("gLN", 0, None, steps=1)]
    report = {"model": "m", "steps": 2, "runs": runs, "rows": norm_study.summary_rows(runs)}
    table = norm_study.format_table(report)
    assert "Not comparable: BN seed 0 trained 0 of 2 steps" in table
    assert "gLN seed 0" not in table.split("|")[-1]  # a diverged run stops early by design
    assert "None" not in table and report["rows"][0]["steps_per_seed"] == [0]


# --- results.csv ------------------------------------------------------------------------------


def test_results_csv_cells_are_safe_for_spreadsheets() -> None:
    """Per-seed values are one ``;`` list (``nan`` = diverged), missing values empty, formula text guarded."""
    runs = [_record("gLN", 0, -18.0611), _record("gLN", 1, None), _record("gLN", 2, -14.9622),
            _record("none", 0, None, step_time=None)]  # fmt: skip
    text = norm_study.results_csv({"rows": norm_study.summary_rows(runs)})
    rows = list(csv.DictReader(text.splitlines()))
    assert rows[0]["final_per_seed_db"] == "'-18.0611;nan;-14.9622"
    assert rows[1]["final_per_seed_db"] == "nan" and rows[1]["final_si_snri_db"] == rows[1]["step_time_ms"] == ""
    assert "None" not in text
    for row in rows:
        for value in row.values():
            try:
                float(value)
            except ValueError:
                assert not value.startswith(("=", "+", "-", "@")), value


def test_the_cpu_is_named_by_the_benchmarks_function() -> None:
    """Review s24 finding 9: one ``cpu_name`` (the benchmark's), not a copy in the norm study."""
    from audiosep.bench import measure

    assert norm_study.cpu_name is measure.cpu_name
    assert not hasattr(norm_study, "_cpu_name")


def test_results_json_is_strict_json_when_a_run_diverged(tmp_path: Path) -> None:
    """A diverged run's NaN validation points went into results.json as NaN, which strict parsers refuse
    (study reviewer); NaN and infinity are written as null."""
    import json

    diverged = _record("gLN", 0, None) | {"curve": [{"step": 1, "val_si_snri": float("nan")}],
                                          "best_curve_si_snri_db": float("inf")}  # fmt: skip
    runs = [_record("BN", 0, -12.5), diverged]
    report = {"model": "m", "steps": 4, "runs": runs, "rows": norm_study.summary_rows(runs), "settings": {}}
    norm_study.write_outputs(report, tmp_path)

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    stored = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert stored["runs"][1]["curve"][0]["val_si_snri"] is None and stored["runs"][1]["best_curve_si_snri_db"] is None


def test_an_interrupted_run_goes_on_from_its_last_checkpoint(
    demo_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A long job resumes from its last checkpoint: a run killed at step 28 of 30 trains 5 steps when the study is
    run again (from step 25), and reports the whole run."""
    out = tmp_path / "study"
    argv = _argv(demo_set, out, "BN", "--baseline-seeds", "1")
    argv[argv.index("--steps") + 1] = "30"
    monitor_end = norm_study._StepMonitor.on_train_batch_end
    trained: list[int] = []

    def kill_at_28(self, trainer, *args) -> None:
        monitor_end(self, trainer, *args)
        trained.append(trainer.global_step)
        if trainer.global_step == 28:
            raise RuntimeError("killed")

    monkeypatch.setattr(norm_study._StepMonitor, "on_train_batch_end", kill_at_28)
    with pytest.raises(RuntimeError, match="killed"):
        main(argv)
    checkpoint = out / "runs" / "batch_norm-seed0" / "last.ckpt"
    assert checkpoint.is_file() and not (out / "runs" / "batch_norm-seed0.json").exists()
    first_state = torch.load(checkpoint, weights_only=True)

    def counted(self, trainer, *args) -> None:
        monitor_end(self, trainer, *args)
        trained.append(trainer.global_step)

    monkeypatch.setattr(norm_study._StepMonitor, "on_train_batch_end", counted)
    trained.clear()
    capsys.readouterr()
    assert main(argv) == 0
    assert f"resuming from {checkpoint}" in capsys.readouterr().out
    assert trained == [26, 27, 28, 29, 30]
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["steps"] == 30 and [p["step"] for p in run["curve"]] == [15, 30]
    assert not run["diverged"] and isinstance(run["final_si_snri_db"], float)
    assert not checkpoint.parent.exists()  # the record holds the run now
    saved_state = first_state["callbacks"]["_StepMonitor"]
    assert len(saved_state["step_times"]) == 25  # the resumed run's median covers both parts, its wall time too
    assert run["train_wall_s"] >= round(saved_state["wall_s"], 1)


def _interrupted_study(demo_set: Path, out: Path, monkeypatch: pytest.MonkeyPatch, steps: int = 30,
                       kill_at: int = 28) -> tuple[list[str], Path]:  # fmt: skip
    """A one-run study of ``steps`` steps killed at step ``kill_at``: its argv and the run's last.ckpt."""
    argv = _argv(demo_set, out, "BN", "--baseline-seeds", "1")
    argv[argv.index("--steps") + 1] = str(steps)
    monitor_end = norm_study._StepMonitor.on_train_batch_end

    def kill(self, trainer, *args) -> None:
        monitor_end(self, trainer, *args)
        if trainer.global_step == kill_at:
            raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(norm_study._StepMonitor, "on_train_batch_end", kill)
        with pytest.raises(RuntimeError, match="killed"):
            main(argv)
    return argv, out / "runs" / "batch_norm-seed0" / "last.ckpt"


def _without_state(checkpoint: dict) -> None:
    del checkpoint["callbacks"]["_StepMonitor"]


def _diverged_before_it_began(checkpoint: dict) -> None:
    checkpoint["callbacks"]["_StepMonitor"]["diverged_at"] = -5


def _times_as_text(checkpoint: dict) -> None:
    checkpoint["callbacks"]["_StepMonitor"]["step_times"] = ["x"]


@pytest.mark.parametrize("tamper", [_without_state, _diverged_before_it_began, _times_as_text])
def test_a_run_checkpoint_without_a_valid_progress_record_is_one_error_line_naming_it(
    tamper, demo_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    argv, checkpoint = _interrupted_study(demo_set, tmp_path / "study", monkeypatch)
    saved = torch.load(checkpoint, weights_only=True)
    tamper(saved)
    torch.save(saved, checkpoint)
    capsys.readouterr()
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("audiosep")]
    assert len(err) == 1 and err[0].startswith(f"audiosep: error: {checkpoint}: ") and "to train the run from its start" in err[0]


def test_a_resumed_run_keeps_the_validation_of_its_checkpoint_step(
    demo_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint of step 25 was saved before that step's validation, which the resume then skipped."""
    argv, _ = _interrupted_study(demo_set, tmp_path / "study", monkeypatch, steps=50, kill_at=30)  # evals at 25, 50
    assert main(argv) == 0
    run = json.loads((tmp_path / "study" / "results.json").read_text())["runs"][0]
    assert [p["step"] for p in run["curve"]] == [25, 50]


def test_a_diverged_run_killed_while_scored_is_not_trained_further(
    demo_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "study"
    argv = _argv(demo_set, out, "BN", "--baseline-seeds", "1")
    argv[argv.index("--steps") + 1] = "20"
    monitor_end = norm_study._StepMonitor.on_train_batch_end

    def diverge_at_6(self, trainer, module, outputs, *args) -> None:
        monitor_end(self, trainer, module, {"loss": torch.tensor(float("nan"))} if trainer.global_step == 6 else outputs, *args)

    def killed_while_scored(*args) -> float:
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(norm_study._StepMonitor, "on_train_batch_end", diverge_at_6)
        patch.setattr(norm_study, "mean_si_snri", killed_while_scored)
        patch.setattr(norm_study, "real_time_factors", killed_while_scored)
        with pytest.raises(RuntimeError, match="killed"):
            main(argv)
    assert main(argv) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["diverged"] and run["diverged_at_step"] == 6 and run["steps"] == 6
