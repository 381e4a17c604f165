"""What a pruning work folder's checkpoints belong to: the model, the recipe's contents and the data.

Why: the search and fine-tuning resume from ``last.ckpt`` in the work folder, which is only right
for the same run. A path as typed is not an identity (a relative ``--data-root`` names other data
from another folder; a recipe edited in place keeps its path), so the record holds what the phases
actually train on: the model's class and constructor arguments next to its weights, a digest of
the recipe file's bytes, the data folder as it resolves, and a digest of each metadata CSV used.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from audiosep.data.identity import as_json
from audiosep.models.base import weights_sha256


def model_identity(model: nn.Module) -> dict[str, Any]:
    """Class, constructor arguments and weights digest: equal weights in another architecture differ."""
    init_args = getattr(model, "init_args", None)
    return as_json({
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "init_args": init_args,
        "weights_sha256": weights_sha256(model),
    })  # fmt: skip
