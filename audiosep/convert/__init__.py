"""Importers for peer checkpoints (torchaudio, SpeechBrain, NeMo).

Names resolve lazily: ``from audiosep.convert import from_torchaudio_convtasnet`` imports only
``audiosep.convert.torchaudio``, so one importer's heavy or missing dependency never breaks another.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY_NAMES: dict[str, str] = {
    "from_torchaudio_convtasnet": "audiosep.convert.torchaudio",
    "sepformer_from_speechbrain": "audiosep.convert.speechbrain",
    "resepformer_from_speechbrain": "audiosep.convert.speechbrain",
    "convert_nemo": "audiosep.convert.nemo",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first access (PEP 562)."""
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))
