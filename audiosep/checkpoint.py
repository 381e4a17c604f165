"""The one place that saves and loads models: class path + init args + weights.

A model checkpoint is a ``torch.save``-d dict::

    {"format": "audiosep.model/1", "class_path": "audiosep.models.conv_tasnet.ConvTasNet",
     "init_args": {...}, "state_dict": {...}, "metadata": {"sample_rate": 8000, ...}}

It holds only tensors and plain Python values, so it loads with ``weights_only=True``. Lightning
``.ckpt`` files written by our tasks carry the same dict under ``checkpoint["audiosep_model"]``,
so ``audiosep infer --ckpt last.ckpt`` needs no recipe.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audiosep.models.base import RebuildableModule

FORMAT = "audiosep.model/1"
LIGHTNING_KEY = "audiosep_model"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be turned back into a model."""


def model_record(model: nn.Module, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild ``model``: class path, init args, weights and metadata."""
    if not isinstance(model, RebuildableModule):
        raise TypeError(
            f"{type(model).__name__} does not record its init args; derive it from "
            "audiosep.models.base.RebuildableModule"
        )
    return {
        "format": FORMAT,
        "class_path": model.class_path(),
        "init_args": model.init_args,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file then rename: the file appears whole or not at all."""
    from audiosep.io import atomic_write

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` (and e.g. ``{"sample_rate": 8000}``) to ``path`` atomically."""
    atomic_torch_save(model_record(model, metadata), path)


def _import_class(class_path: str) -> type:
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name.startswith("audiosep."):
        raise CheckpointError(f"refusing to import {class_path!r}: only audiosep models are loaded")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"model class {class_path!r} not found: {err}") from err


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read the model record from an audiosep model file or an audiosep Lightning ``.ckpt``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({err.__class__.__name__})") from err
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        return raw
    if isinstance(raw, dict) and isinstance(raw.get(LIGHTNING_KEY), dict):
        return raw[LIGHTNING_KEY]
    raise CheckpointError(f"{path}: no audiosep model inside (expected format {FORMAT!r})")


def model_from_record(record: dict[str, Any]) -> nn.Module:
    """Rebuild and load the model described by a :func:`model_record` dict."""
    cls = _import_class(record["class_path"])
    model = cls(**record["init_args"])
    model.load_state_dict(record["state_dict"])
    return model.eval()


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``(model, metadata)`` from ``path``; the model is in eval mode on CPU.

    Raises:
        CheckpointError: missing file, unreadable file, or no audiosep model inside.
    """
    record = read_record(path)
    try:
        model = model_from_record(record)
    except (TypeError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the model: {err}") from err
    return model, dict(record.get("metadata", {}))
