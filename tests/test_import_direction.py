"""Imports point one way: ``audiosep.nn`` and ``audiosep.models`` never pull in training or data code."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import audiosep.models
import audiosep.nn

FORBIDDEN_PREFIXES = (
    "lightning",
    "pytorch_lightning",
    "lightning_fabric",
    "jsonargparse",
    "audiosep.data",
    "audiosep.tasks",
)


def library_modules() -> list[str]:
    """Every module under ``audiosep/nn`` and ``audiosep/models`` (found on disk, not hard-coded)."""
    names = []
    for package in (audiosep.nn, audiosep.models):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            names.append(info.name)
    return names


def _is_forbidden(module: str) -> bool:
    return any(module == prefix or module.startswith(f"{prefix}.") for prefix in FORBIDDEN_PREFIXES)


def test_discovery_finds_the_library_modules() -> None:
    modules = library_modules()
    assert "audiosep.nn.norms" in modules and "audiosep.models.conv_tasnet" in modules


def test_the_forbidden_check_can_fail() -> None:
    assert _is_forbidden("lightning.pytorch") and _is_forbidden("audiosep.data.librimix")
    assert not _is_forbidden("lightning_utilities") and not _is_forbidden("audiosep.database")


def test_nn_and_models_import_no_training_data_or_config_code() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {library_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert [module for module in loaded if _is_forbidden(module)] == []
