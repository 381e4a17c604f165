"""Norm names are a Literal: LightningCLI rejects a typo at parse time and lists the valid names."""

from __future__ import annotations

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
