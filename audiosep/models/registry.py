"""The closed lists of model classes and presets: what a name, a recipe or a checkpoint may build.

Why closed: a checkpoint or a command line names a model by a string; only the entries listed
here can be turned into code, so a crafted file can never make us import or call anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from audiosep.models.base import RebuildableModule
from audiosep.models.conv_tasnet import ConvTasNet, conv_tasnet_base, conv_tasnet_demo
from audiosep.models.quartznet import QuartzNet, quartznet_5x5, quartznet_15x5
from audiosep.models.resepformer import RESepFormer, resepformer_base
from audiosep.models.sepformer import SepFormer, sepformer_base
from audiosep.models.tiny_sepformer import TinySepformer, tiny_sepformer_base

MODEL_CLASSES: dict[str, type[RebuildableModule]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls
    for cls in (ConvTasNet, SepFormer, RESepFormer, TinySepformer, QuartzNet)
}

PRESETS: dict[str, Callable[..., nn.Module]] = {
    "conv_tasnet_base": conv_tasnet_base,
    "conv_tasnet_demo": conv_tasnet_demo,
    "sepformer_base": sepformer_base,
    "resepformer_base": resepformer_base,
    "tiny_sepformer_base": tiny_sepformer_base,
    "quartznet_5x5": quartznet_5x5,
    "quartznet_15x5": quartznet_15x5,
}

SEPARATOR_CLASSES: tuple[type[RebuildableModule], ...] = (ConvTasNet, SepFormer, RESepFormer, TinySepformer)


def list_models() -> list[str]:
    """Names accepted by :func:`build` (the presets), sorted."""
    return sorted(PRESETS)


def build(name: str, **overrides: Any) -> nn.Module:
    """Build the preset ``name`` with constructor ``overrides`` (e.g. ``norm="BN"``).

    Raises:
        ValueError: unknown name (the message lists the valid ones).

    Example:
        >>> build("conv_tasnet_demo", num_repeats=1).num_sources
        2
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    return PRESETS[name](**overrides)


def model_class(class_path: str) -> type[RebuildableModule]:
    """The model class recorded as ``class_path`` in a checkpoint, from the closed list only.

    Raises:
        KeyError: ``class_path`` is not one of :data:`MODEL_CLASSES` (message lists them).
    """
    try:
        return MODEL_CLASSES[class_path]
    except (KeyError, TypeError):
        raise KeyError(
            f"{class_path!r} is not an audiosep model class; known: {', '.join(sorted(MODEL_CLASSES))}"
        ) from None
