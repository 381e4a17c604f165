"""Fixtures for the ASR tests (helpers live in ``asr_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from asr_helpers import write_tiny_asr


@pytest.fixture(scope="session")
def tiny_asr(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Manifests (``train``, ``val``, ``test``) of a tiny 16 kHz tone corpus."""
    return write_tiny_asr(tmp_path_factory.mktemp("tiny_asr"))
