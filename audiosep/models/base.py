"""A plain ``nn.Module`` that remembers its constructor arguments.

Why: a checkpoint must rebuild the model without the recipe (class path + init args + weights),
and a pruned model must come back with its pruned channel counts. Subclasses stay ordinary
``nn.Module``s; the only addition is the read-only :attr:`init_args` recorded at construction.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
from typing import Any

import torch
from torch import nn


def weights_sha256(model: nn.Module) -> str:
    """Hex SHA-256 of ``model``'s state dict (names and raw tensor bytes): which weights a result came from."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _resolved(device: torch.device) -> torch.device:
    """``device`` with its index spelt out (``cuda`` is the current CUDA device, ``cpu:0`` is ``cpu``)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if device.type == "cpu" else device


def eval_copy(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """``model`` in eval mode (on ``device``): the model itself when it already is, else a copy.

    Why: ``nn.Module.eval`` and ``.to`` work in place; a separator or stream built from a model that
    is still being trained must not switch its norms to running statistics or move it off its device.
    """
    target = None if device is None else _resolved(torch.device(device))
    tensors = itertools.chain(model.parameters(), model.buffers())
    if not any(m.training for m in model.modules()) and (target is None or all(_resolved(t.device) == target for t in tensors)):
        return model
    copied = copy.deepcopy(model).eval()
    return copied if device is None else copied.to(device)


class RebuildableModule(nn.Module):
    """``nn.Module`` whose ``init_args`` are the (defaults-filled) arguments it was built with."""

    def __new__(cls, *args: Any, **kwargs: Any) -> RebuildableModule:
        obj = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self", None)
        # Flatten **kwargs so that the arguments can be passed back to the constructor.
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
        object.__setattr__(obj, "_init_args", arguments)
        return obj

    @property
    def init_args(self) -> dict[str, Any]:
        """Constructor arguments, as needed by :func:`audiosep.checkpoint.load_model`."""
        return dict(self._init_args)

    def class_path(self) -> str:
        """Importable ``module.ClassName`` of this model."""
        return f"{type(self).__module__}.{type(self).__qualname__}"


def model_window(model: nn.Module) -> int:
    """The shortest input ``model`` can separate: its encoder's kernel (1 when it has none)."""
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Conv1d):
        return int(encoder.kernel_size[0])
    kernel = getattr(model, "enc_kernel_size", None)
    return int(kernel) if isinstance(kernel, int) else 1
