"""Fixtures for the ASR tests (helpers live in ``asr_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from asr_helpers import TINY_BLOCKS, randomize_batchnorm, write_tiny_asr

from audiosep.asr_metadata import asr_metadata
from audiosep.checkpoint import save_model
from audiosep.data.tokenizer import CharTokenizer
from audiosep.models.quartznet import QuartzNet
from audiosep.nn.features import LogMelFeatures


@pytest.fixture(scope="session")
def tiny_asr(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Manifests (``train``, ``val``, ``test``) of a tiny 16 kHz tone corpus."""
    return write_tiny_asr(tmp_path_factory.mktemp("tiny_asr"))


@pytest.fixture(scope="session")
def asr_ckpt(tmp_path_factory):
    """An untrained but fixed tiny model whose outputs vary with the input (not a constant transcript)."""
    torch.manual_seed(0)
    model = QuartzNet(64, 29, TINY_BLOCKS)
    randomize_batchnorm(model)
    with torch.no_grad():
        model.head.weight.mul_(20)  # sharpen the posteriors so that transcripts are non-empty
    path = tmp_path_factory.mktemp("asr_ckpt") / "model.pt"
    save_model(model, path, asr_metadata(LogMelFeatures(), CharTokenizer().vocabulary))
    return path
