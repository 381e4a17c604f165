"""The CLI lists its commands and shows the recipe options; building its parser imports no torch."""

import subprocess
import sys

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


def test_building_the_parser_imports_neither_torch_nor_lightning() -> None:
    """`audiosep --help` stays fast: every command module imports its heavy dependencies in run()."""
    code = (
        "import sys\n"
        "from audiosep.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'torchaudio'))\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, heavy[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
