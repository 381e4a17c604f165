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


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["prune", "--target-macs", "abc"], "argument --target-macs: invalid float value: 'abc' (`audiosep prune --help`"),
        (["demo", "--max-steps", "x"], "argument --max-steps: invalid int value: 'x' (`audiosep demo --help`"),
        (["data", "nosuch"], "argument COMMAND: invalid choice: 'nosuch' (choose from"),
        (["infer", "x.wav", "--ckpt", "y", "--bogus"], "unrecognized arguments: --bogus (`audiosep infer --help`"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_commands_help(capsys, argv: list[str], says: str) -> None:
    """argparse printed its whole usage block first (reviewer); the training commands already gave one line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"audiosep: error: {says}")


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


def test_a_device_torch_cannot_use_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from audiosep.commands.inputs import check_device
    from audiosep.errors import UserError

    check_device("cpu")  # fine
    with pytest.raises(UserError, match="not a torch device"):
        check_device("tpu:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device is available here"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda:0")
    with pytest.raises(UserError, match="this machine has 1 CUDA device"):
        check_device("cuda:1")


def test_trainer_settings_lightning_refuses_are_one_error_line(tmp_path, capsys) -> None:
    argv = ["fit", "--config", "demo/convtasnet_tiny.yaml", f"--data.root={tmp_path}", "--trainer.devices", "0",
            f"--trainer.default_root_dir={tmp_path / 'runs'}"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("audiosep: error:")]  # Lightning logs before it
    assert len(errors) == 1 and errors[0].startswith("audiosep: error: trainer settings: ") and "devices" in errors[0]
    assert "MisconfigurationException" not in err


def test_what_the_system_refuses_is_one_line_naming_the_file(monkeypatch, capsys) -> None:
    """A read-only --out of demo, data demo, data librimix, data librispeech or norms study was a
    PermissionError traceback (study reviewer; as root here, so the error is raised by hand)."""
    from audiosep.cli import main
    from audiosep.commands import data_demo

    def refused(args) -> int:
        raise PermissionError(13, "Permission denied", "/read/only/Libri2Mix")

    monkeypatch.setattr(data_demo, "run", refused)
    assert main(["data", "demo", "--out", "unused"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["audiosep: error: /read/only/Libri2Mix: Permission denied"]


def test_a_closed_output_pipe_ends_quietly(monkeypatch, capsys) -> None:
    """`audiosep ... | head`: the OSError one-liner said "error: Broken pipe", exit 1 (diff reviewer)."""
    from audiosep.cli import main
    from audiosep.commands import data_demo

    def closed(args) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(data_demo, "run", closed)
    assert main(["data", "demo", "--out", "unused"]) == 141
    assert capsys.readouterr().err == ""
