"""A 2-step fit/validate/test of the tiny demo recipe through the CLI, and checkpoint -> model."""

from pathlib import Path

import pytest
import torch
from recipe_args import RECIPE, TINY_MODEL

from audiosep.checkpoint import load_model
from audiosep.cli import main


def run_fit(root: Path, out: Path, *extra: str) -> None:
    argv = ["fit", "--config", RECIPE, f"--data.root={root}", "--data.segment=0.25", "--data.batch_size=2",
            f"--trainer.default_root_dir={out}", "--trainer.max_steps=2", "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false", *TINY_MODEL, *extra]
    assert main(argv) == 0


def test_fit_writes_a_checkpoint_that_rebuilds_the_model(tiny_librimix: Path, tmp_path: Path) -> None:
    run_fit(tiny_librimix, tmp_path)
    checkpoints = sorted(tmp_path.rglob("last.ckpt"))
    assert checkpoints, "fit wrote no last.ckpt"
    model, metadata = load_model(checkpoints[0])
    assert metadata["sample_rate"] == 8000
    assert model.init_args["enc_num_filters"] == 16
    raw = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    weights = {k.removeprefix("model."): v for k, v in raw["state_dict"].items() if k.startswith("model.")}
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, weights[name])


def test_test_command_writes_per_utterance_csv(tiny_librimix: Path, tmp_path: Path) -> None:
    run_fit(tiny_librimix, tmp_path)
    ckpt = sorted(tmp_path.rglob("last.ckpt"))[0]
    csv_path = tmp_path / "scores.csv"
    argv = ["test", "--config", RECIPE, f"--data.root={tiny_librimix}", f"--ckpt_path={ckpt}",
            f"--model.test_csv={csv_path}", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", *TINY_MODEL]
    assert main(argv) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "id,si_snr,si_snri,sdr,sdri"
    assert len(lines) == 1 + 3  # the tiny test split has 3 mixtures
    assert all(len(line.split(",")) == 5 for line in lines[1:])


@pytest.mark.parametrize(
    ("changed", "says"),
    [
        (["--data.batch_size=1"], "data.arguments.batch_size 2 -> 1"),
        (["--model.model.init_args.norm=cLN"], "model.init_args.norm 'gLN' -> 'cLN'"),  # the weights' shapes match
        ([], "data.metadata_sha256.dev"),  # a copy of the data with one dev mixture less (run with it below)
    ],
)
def test_a_resume_with_other_data_or_model_settings_is_refused_naming_what_changed(
    tiny_librimix: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture,
    changed: list[str], says: str
) -> None:
    """`fit --ckpt_path last` resumed across another data folder, batch size, norm or seed without a word: the
    only check was that the weights' names and shapes matched (reviewer)."""
    import shutil

    run_fit(tiny_librimix, tmp_path)
    root = tiny_librimix if changed else Path(shutil.copytree(tiny_librimix, tmp_path_factory.mktemp("other") / "data"))
    if not changed:
        metadata = root / "wav8k" / "min" / "metadata" / "mixture_dev_mix_clean.csv"
        metadata.write_text("".join(metadata.read_text().splitlines(keepends=True)[:-1]))
    argv = ["fit", "--config", RECIPE, f"--data.root={root}", "--data.segment=0.25", "--data.batch_size=2",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=4", "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false", *TINY_MODEL, *changed, "--ckpt_path=last"]  # fmt: skip
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("audiosep: error: --ckpt_path last (") and "it was trained with other settings" in error
    assert says in error
    validated = ["validate", *argv[1:-1], f"--ckpt_path={sorted(tmp_path.rglob('last.ckpt'))[0]}"]  # scored anywhere
    assert main(validated) == (1 if "model." in says else 0)


def test_a_resume_from_a_copy_of_the_same_data_elsewhere_goes_on(tiny_librimix: Path, tmp_path: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same data reached through a link, or copied to a job's scratch disk, was refused (diff review)."""
    import shutil

    run_fit(tiny_librimix, tmp_path)
    copy = Path(shutil.copytree(tiny_librimix, tmp_path_factory.mktemp("scratch") / "data"))
    run_fit(copy, tmp_path, "--trainer.max_steps=4", "--ckpt_path=last")


def test_typo_in_config_key_fails_at_parse_time(tiny_librimix: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", RECIPE, f"--data.root={tiny_librimix}", "--model.model.init_args.nrom=gLN"])
    assert exit_info.value.code != 0


def test_packaged_recipe_name_resolves_and_unknown_recipe_is_a_one_line_error(capsys) -> None:
    assert main(["fit", "--config", "demo/no_such_recipe.yaml"]) == 1
    assert "recipe not found" in capsys.readouterr().err


def test_test_scores_csv_guards_ids_a_spreadsheet_would_run_as_formulas(tmp_path: Path) -> None:
    """A mixture id from the metadata such as ``=HYPERLINK(...)`` is written as text, the scores as numbers."""
    import csv

    from audiosep.tasks.separation import SeparationTask

    path = tmp_path / "test_scores.csv"
    task = SeparationTask(torch.nn.Identity(), sample_rate=8000, test_csv=str(path))
    ids = ["=HYPERLINK(\"http://x\")", "-1+2", "@SUM(A1)", "+3", "plain_id"]
    task._test_rows = [{"id": i, "si_snr": -1.5, "si_snri": 2.0, "sdr": -0.25, "sdri": 1.0} for i in ids]
    task.on_test_epoch_end()
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [row["id"] for row in rows] == ["'" + i for i in ids[:4]] + ["plain_id"]
    assert all(float(row["si_snr"]) == -1.5 and float(row["sdr"]) == -0.25 for row in rows)
