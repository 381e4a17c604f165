"""The CLI lists its commands and shows the recipe options."""

import pytest

from audiosep.cli import main


def test_help_lists_commands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "demo", "infer", "data"):
        assert command in out


def test_fit_help_shows_recipe_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--trainer" in out and "--model" in out and "--data" in out


def test_group_without_subcommand_prints_its_help(capsys) -> None:
    assert main(["data"]) == 2
    assert "demo" in capsys.readouterr().out
