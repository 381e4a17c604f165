"""Norm names are a Literal: LightningCLI rejects a typo at parse time and lists the valid names."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiosep.cli import main


def test_a_misspelt_norm_in_a_recipe_fails_at_parse_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "demo/convtasnet_tiny.yaml", "--model.model.init_args.norm", "glN", "--print_config"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "glN" in err and "'gLN'" in err and "'batch_norm'" in err


def test_an_alias_passes_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "demo/convtasnet_tiny.yaml", "--model.model.init_args.norm", "BN", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "norm: BN" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "denied"),
    [
        (["--trainer.callbacks+=lightning.pytorch.callbacks.LambdaCallback",
          "--trainer.callbacks.on_fit_start=audiosep.io.atomic_write_text"], "lightning.pytorch.callbacks.LambdaCallback"),
        (["--model.model.class_path", "os.system"], "os.system"),
        (["--data.class_path", "antigravity.Data"], "antigravity.Data"),
    ],
)  # fmt: skip
def test_a_recipe_cannot_name_code_outside_the_closed_list(
    capsys: pytest.CaptureFixture[str], extra: list[str], denied: str
) -> None:
    """LightningCLI alone imports any module and calls any function a YAML or --key value names."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "demo/convtasnet_tiny.yaml", *extra, "--print_config"])
    assert exit_info.value.code != 0
    assert f"Importing '{denied}' is not allowed" in capsys.readouterr().err


def test_a_class_added_to_the_allowlist_by_the_user_is_accepted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIOSEP_IMPORT_ALLOWLIST", "training_probes,lightning.pytorch.callbacks.LambdaCallback")
    callback = "lightning.pytorch.callbacks.LambdaCallback"  # a re-export: its defining path is allowed with it
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "demo/convtasnet_tiny.yaml", f"--trainer.callbacks+={callback}", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert callback in capsys.readouterr().out


def test_a_recipe_with_yaml_aliases_is_refused_before_they_expand(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Nested aliases ("billion laughs"): 8 levels in 400 bytes took 200 s and 4 GB before this check."""
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 4)]  # small: fails fast without the check
    recipe = tmp_path_factory.mktemp("recipe") / "laughs.yaml"
    recipe.write_text("\n".join(lines) + "\ntrainer:\n  max_epochs: 1\n")
    assert main(["fit", "--config", "demo/convtasnet_tiny.yaml", "--config", str(recipe), "--print_config"]) == 1
    assert f"{recipe}: not valid YAML (YAML aliases (*name) are not supported, line 2, column" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a value on the command line: the parser's own one line
        main(["fit", "--config", "demo/convtasnet_tiny.yaml", "--trainer.max_epochs", "[&a 1, *a]", "--print_config"])
    assert exit_info.value.code != 0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("model:\n  foo: [1, 2\n", "not valid YAML (expected ',' or ']', but got '<stream end>', line 3, column 1)"),
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", "not valid YAML (nested more than 64 levels deep, line 1, column 67)"),
        (b"\xff\xfe", "not UTF-8 text (invalid start byte at byte 0)"),
        ("seed_everything: " + "9" * 5000 + "\n", "not valid YAML (an integer of more than 100 characters, line 1, column 18)"),
        ("seed_everything: " + "1:" * 60 + "1\n", "not valid YAML (an integer of more than 100 characters, line 1, column 18)"),
    ],
)
def test_a_recipe_that_is_not_yaml_is_one_line_naming_the_file_line_and_column(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str | bytes, says: str
) -> None:
    """jsonargparse named the file "<unicode string>", a list nested 2000 deep ended in a RecursionError, and a
    5000-digit int in int()'s ValueError (a traceback)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["fit", "--config", str(recipe), "--print_config"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"audiosep: error: {recipe}: {says}"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--model.model.init_args.norm", "glN"], "'gLN'"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["--trainer.max_epochs", "{1: 2"], "trainer.max_epochs"),
    ],
)
def test_a_parse_error_is_one_line_with_exit_code_2(capsys: pytest.CaptureFixture[str], extra: list[str], says: str) -> None:
    """As every other audiosep command: not the usage text, a parser excerpt and the value given."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "demo/convtasnet_tiny.yaml", *extra, "--print_config"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audiosep: error: ") and says in lines[0], lines
    assert lines[0].endswith("(`audiosep fit --help` lists the options)")


def test_a_recipe_key_given_twice_is_refused_not_the_last_one_kept(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two ``trainer:`` blocks: the first's max_epochs and precision were lost without a word (reviewer)."""
    recipe = tmp_path_factory.mktemp("recipe") / "dup.yaml"
    recipe.write_text("trainer:\n  max_epochs: 3\n  precision: 16-mixed\nseed_everything: 0\ntrainer:\n  accelerator: cpu\n")
    assert main(["fit", "--config", "demo/convtasnet_tiny.yaml", "--config", str(recipe), "--print_config"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"audiosep: error: {recipe}: not valid YAML (key 'trainer' given twice (first on line 1), line 5, column 1)"
    nested = tmp_path_factory.mktemp("recipe") / "nested.yaml"  # the same key in two mappings, a list of mappings: fine
    nested.write_text("trainer:\n  max_epochs: 2\n  callbacks:\n  - {class_path: a}\n  - {class_path: b}\ndata:\n  max_epochs: 1\n")
    from audiosep.training_cli import yaml_without_aliases

    assert yaml_without_aliases(nested.read_text())["data"] == {"max_epochs": 1}
