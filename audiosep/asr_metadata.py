"""Checkpoint metadata of an ASR model: what training writes and transcription reads back.

Its own small module (no Lightning, no inference code), so that :mod:`audiosep.tasks.asr`,
:mod:`audiosep.convert.nemo` and :mod:`audiosep.transcriber` share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audiosep.nn.features import LogMelFeatures


def asr_metadata(features: LogMelFeatures, vocabulary: Sequence[str]) -> dict[str, Any]:
    """Checkpoint metadata of an ASR model: sample rate, front end settings, vocabulary."""
    return {
        "task": "asr",
        "sample_rate": features.sample_rate,
        "features": features.config(),
        "vocabulary": list(vocabulary),
    }
