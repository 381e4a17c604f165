"""The one place that saves and loads models: class path + init args + weights.

A model checkpoint is a ``torch.save``-d dict::

    {"format": "audiosep.model/1", "class_path": "audiosep.models.conv_tasnet.ConvTasNet",
     "init_args": {...}, "state_dict": {...}, "metadata": {"sample_rate": 8000, ...}}

It holds only tensors and plain Python values, so it loads with ``weights_only=True``. Lightning
``.ckpt`` files written by our tasks carry the same dict without its ``state_dict`` under
``checkpoint["audiosep_model"]`` (the weights are Lightning's own ``model.*`` entries), so
``audiosep infer --ckpt last.ckpt`` needs no recipe.

Why loading is more than ``torch.load``: ``weights_only=True`` stops the unpickler from running
code, but the record still names a class and its arguments. The file is therefore treated as
untrusted input: the class must be one of the closed list in :mod:`audiosep.models.registry`
(nothing is imported by name), every init arg must fit the constructor's annotation (an ``int``
argument is a size or a count, so it must be positive, and no larger than the number of stored
values: each channel and each layer holds some), and the model is first built on the meta
device, under a budget of registered modules, and compared with the weights the file really holds
(dense CPU tensors, counted by the bytes stored), so a small file cannot make us allocate a huge
model. Only then is it built on the CPU and loaded with ``strict=True``. Every failure is a
one-line :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import torch
from torch import Tensor, nn
from torch.nn.modules import module as nn_module

from audiosep.errors import brief_repr
from audiosep.models.base import RebuildableModule
from audiosep.models.registry import MODEL_CLASSES, model_class

FORMAT = "audiosep.model/1"
LIGHTNING_KEY = "audiosep_model"
LIGHTNING_PREFIX = "model."  # our tasks hold the model as ``self.model``
MAX_DEPTH = 8  # nesting of lists/dicts in init args and metadata
MAX_VALUES = 10_000  # values in the init args, or in the metadata, each repeat of a shared list counted
MAX_SAMPLE_RATE = 384_000
INT_SLACK = 1 << 12  # ints that size no weights (chunk sizes, kernel widths) beyond the stored values
EXTRA_ELEMENTS = 1 << 20  # non-persistent buffers (windows, filterbanks) beyond the stored weights
# Exceptions a constructor raises for arguments it cannot build (OverflowError: an ArithmeticError).
BUILD_ERRORS = (TypeError, ValueError, KeyError, IndexError, RuntimeError, ArithmeticError, AssertionError)
PLAIN_SCALARS = (type(None), bool, int, float, str)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be turned back into a model."""


class _BudgetExceeded(RuntimeError):
    """A constructor registered more modules, parameters and buffers than its weights justify."""


def model_record(
    model: nn.Module, metadata: dict[str, Any] | None = None, with_weights: bool = True
) -> dict[str, Any]:
    """Everything needed to rebuild ``model``: class path, init args, weights (unless not wanted), metadata."""
    if not isinstance(model, RebuildableModule):
        raise TypeError(
            f"{type(model).__name__} does not record its init args; derive it from "
            "audiosep.models.base.RebuildableModule"
        )
    record = {
        "format": FORMAT,
        "class_path": model.class_path(),
        "init_args": model.init_args,
        "metadata": dict(metadata or {}),
    }
    if with_weights:
        record["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return record


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file then rename: the file appears whole or not at all."""
    from audiosep.io import atomic_write

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` (and e.g. ``{"sample_rate": 8000}``) to ``path`` atomically."""
    atomic_torch_save(model_record(model, metadata), path)


# --- reading and checking the record -------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (``str(KeyError)`` would add quotes)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split()) or type(err).__name__
    return text if len(text) <= 300 else f"{text[:297]}..."


class _TooManyValues(Exception):
    """A walk of init args or metadata passed :data:`MAX_VALUES` values."""


def _is_plain(value: Any, visits: Iterator[int], depth: int = 0) -> bool:
    """None/bool/int/float/str, or lists (tuples) and str-keyed dicts of those, nested a few levels.

    Raises :class:`_TooManyValues` once ``visits`` (a count shared by the whole walk) passes
    :data:`MAX_VALUES`. Why a shared count: the unpickler shares repeated objects, so a small file
    can hold a list of 40 lists of 40 lists... whose walk takes 40**7 steps.
    """
    if next(visits) > MAX_VALUES:
        raise _TooManyValues
    if isinstance(value, PLAIN_SCALARS):
        return True
    if depth >= MAX_DEPTH:
        return False
    if isinstance(value, list | tuple):
        return all(_is_plain(item, visits, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, visits, depth + 1) for k, v in value.items())
    return False


def _check_plain_dict(value: Any, what: str) -> None:
    """``value`` must be a dict with str keys and plain values, :data:`MAX_VALUES` of them at most."""
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} is a {type(value).__name__}, not a dict")
    visits = itertools.count(1)
    for key, item in value.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{what} has a non-str key {brief_repr(key)}")
        try:
            plain = _is_plain(item, visits)
        except _TooManyValues:
            raise CheckpointError(f"{what} holds more than {MAX_VALUES} values (shared lists count each time)") from None
        if not plain:
            raise CheckpointError(f"{what}[{brief_repr(key)}] is not a plain value (None/bool/int/float/str/list/dict)")


def tensor_problem(tensor: Tensor) -> str | None:
    """Why ``tensor`` is not a dense, real CPU tensor holding its own values; None if it is one.

    Why: the size checks count the values a file really stores, so no weight may claim more (a
    meta tensor stores none, an expanded view with stride 0 stores one for a whole row; torch.load
    refuses a tensor that runs past its storage), and a complex weight would lose its imaginary
    part when loaded into a real model.
    """
    if tensor.device.type != "cpu":
        return f"is on the {tensor.device.type} device, not the CPU"
    if tensor.layout is not torch.strided or tensor.is_nested or tensor.is_quantized:
        kind = "nested" if tensor.is_nested else "quantized" if tensor.is_quantized else str(tensor.layout)
        return f"is a {kind} tensor, not a dense one"
    if tensor.is_complex():
        return f"has the complex dtype {tensor.dtype}"
    held = tensor.untyped_storage().nbytes() // tensor.element_size()
    if tensor.numel() > held:
        return f"claims {tensor.numel()} values but its storage holds {held} (an expanded or overlapping view)"
    return None


def _check_state_dict(value: Any) -> None:
    """``value`` must be a dict of str -> dense, real CPU Tensor that holds its values."""
    if not isinstance(value, dict):
        raise CheckpointError(f"state_dict is a {type(value).__name__}, not a dict")
    for key, tensor in value.items():
        if not isinstance(key, str) or not isinstance(tensor, Tensor):
            raise CheckpointError(f"state_dict entry {brief_repr(key)} is not a str -> Tensor pair")
        problem = tensor_problem(tensor)
        if problem:
            raise CheckpointError(f"state_dict entry {brief_repr(key)} {problem}")


def _check_metadata(metadata: Any) -> None:
    """Plain values, and a ``sample_rate`` (when set) that is a sane positive int."""
    _check_plain_dict(metadata, "metadata")
    rate = metadata.get("sample_rate")
    if rate is not None and not (is_size(rate) and rate <= MAX_SAMPLE_RATE):
        raise CheckpointError(f"metadata sample_rate {brief_repr(rate)} is not an int in 1..{MAX_SAMPLE_RATE}")


def check_record(record: Any) -> None:
    """Raise :class:`CheckpointError` unless ``record`` has the structure :func:`model_record` writes."""
    if not isinstance(record, dict):
        raise CheckpointError(f"the model record is a {type(record).__name__}, not a dict")
    if record.get("format") != FORMAT:
        raise CheckpointError(f"format {brief_repr(record.get('format'))} is not {FORMAT!r}")
    if not isinstance(record.get("class_path"), str):
        raise CheckpointError(f"class_path {brief_repr(record.get('class_path'))} is not a str")
    _check_plain_dict(record.get("init_args"), "init_args")
    _check_state_dict(record.get("state_dict"))
    _check_metadata(record.get("metadata", {}))


def _lightning_weights(checkpoint: dict[Any, Any]) -> dict[str, Tensor]:
    """The model's weights in a Lightning checkpoint: ``state_dict`` entries under ``model.``."""
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError("a Lightning checkpoint without a state_dict")
    return {
        key.removeprefix(LIGHTNING_PREFIX): value
        for key, value in state_dict.items()
        if isinstance(key, str) and key.startswith(LIGHTNING_PREFIX)
    }


def _unwrap(raw: Any) -> dict[str, Any]:
    """The model record inside a loaded file: a model file, or an audiosep Lightning ``.ckpt``."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"holds a {type(raw).__name__}, not a dict")
    if raw.get("format") == FORMAT:
        return raw
    inner = raw.get(LIGHTNING_KEY)
    if inner is None:
        raise CheckpointError(f"no audiosep model inside (expected format {FORMAT!r})")
    if not isinstance(inner, dict):
        raise CheckpointError(f"{LIGHTNING_KEY} is a {type(inner).__name__}, not a dict")
    if "state_dict" in inner:  # written before the record stopped repeating Lightning's weights
        return inner
    return inner | {"state_dict": _lightning_weights(raw)}


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the model record of an audiosep model file or an audiosep Lightning ``.ckpt``.

    Raises:
        CheckpointError: missing or unreadable file, no audiosep model inside, a malformed record.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({err.__class__.__name__})") from err
    try:
        record = _unwrap(raw)
        check_record(record)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return record


# --- rebuilding the model --------------------------------------------------------------------------


def is_size(value: Any) -> bool:
    """A positive int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _fits_container(value: Any, container: Any, args: tuple[Any, ...]) -> bool | None:
    """``value`` against a list/tuple/Sequence or dict/Mapping hint; ``None`` for other hints."""
    if container in (list, tuple, Sequence):
        items = args[0] if args else Any
        return isinstance(value, list | tuple) and all(_fits(item, items) for item in value)
    if container in (dict, Mapping):
        items = args[1] if len(args) == 2 else Any
        return isinstance(value, dict) and all(_fits(item, items) for item in value.values())
    return None


def _fits(value: Any, hint: Any) -> bool:
    """Whether a plain value fits a constructor annotation (``int``: a positive size or count)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is object:
        return True
    if origin is Union or origin is types.UnionType:
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return any(type(value) is type(arg) and value == arg for arg in args)
    scalar_checks = {
        type(None): lambda v: v is None,
        bool: lambda v: isinstance(v, bool),
        int: is_size,
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if hint in scalar_checks:
        return scalar_checks[hint](value)
    fits = _fits_container(value, origin or hint, args)
    return True if fits is None else fits  # an annotation we do not model: the constructor checks it


def _largest_int(value: Any) -> int:
    """The largest int (bools aside) anywhere in a plain value; 0 if none."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    return max((_largest_int(item) for item in items), default=0)


def _stored_values(state_dict: dict[str, Tensor]) -> int:
    """How many values the file really stores for ``state_dict``: each storage's bytes once, in its dtype.

    Why not ``numel()``: tensors that share one storage store its values once.
    """
    storages = {t.untyped_storage().data_ptr(): t for t in state_dict.values()}
    return sum(t.untyped_storage().nbytes() // t.element_size() for t in storages.values())


def _check_counts(init_args: dict[str, Any], stored: int) -> None:
    """No size or count, nor the product of the ``num_*`` counts, exceeds the ``stored`` values.

    Why: a constructor may expand a count into a list before it builds anything (a per-layer
    width list of ``num_layers`` entries), which even the meta device cannot cut short; and counts
    multiply into such lists (``num_repeats`` x ``num_layers`` blocks, ``num_blocks`` x
    ``num_intra_layers`` layers). Each layer, each channel holds weights, so in a real model even
    the product of all its counts (sources, blocks, layers, heads) is far below its stored values.
    """
    cap = stored + INT_SLACK
    for name, value in init_args.items():
        if _largest_int(value) > cap:
            raise CheckpointError(f"init arg {name}={brief_repr(value)} is larger than the stored weights allow ({cap})")
    counts = {name: value for name, value in init_args.items() if name.startswith("num_") and is_size(value)}
    if math.prod(counts.values()) > cap:
        named = " x ".join(f"{name}={value}" for name, value in counts.items())
        raise CheckpointError(f"init args {named} multiply to more than the stored weights allow ({cap})")


def _check_init_args(cls: type[nn.Module], init_args: dict[str, Any]) -> None:
    """Every init arg names a constructor parameter and fits its annotation."""
    parameters = dict(inspect.signature(cls.__init__).parameters)
    parameters.pop("self", None)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(init_args) - set(parameters))
        if unknown:
            raise CheckpointError(
                f"{cls.__name__} takes no init args {brief_repr(unknown)}; valid: {', '.join(parameters)}"
            )
    hints = typing.get_type_hints(cls.__init__)
    for name, value in init_args.items():
        if name in hints and not _fits(value, hints[name]):
            annotation = parameters[name].annotation if name in parameters else hints[name]
            note = " (sizes and counts are positive ints)" if "int" in str(annotation) else ""
            raise CheckpointError(f"{cls.__name__} init arg {name}={brief_repr(value)} does not fit {annotation}{note}")


@contextmanager
def _registration_budget(limit: int) -> Iterator[None]:
    """Abort any module construction that registers more than ``limit`` modules, parameters and buffers.

    The hooks are process-wide while active, so keep the block to one constructor call.
    """
    count = 0

    def hook(*_: Any) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise _BudgetExceeded(f"the constructor builds more than {limit} modules/tensors")

    handles = [
        nn_module.register_module_module_registration_hook(hook),
        nn_module.register_module_parameter_registration_hook(hook),
        nn_module.register_module_buffer_registration_hook(hook),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _build(cls: type[nn.Module], init_args: dict[str, Any], device: str, limit: int) -> nn.Module:
    """``cls(**init_args)`` on ``device`` within a registration budget; bad args -> CheckpointError."""
    try:
        with torch.device(device), _registration_budget(limit):
            return cls(**init_args)
    except BUILD_ERRORS as err:
        raise CheckpointError(f"cannot build {cls.__name__}: {_one_line(err)}") from err


def _compare_weights(model: nn.Module, state_dict: dict[str, Tensor], stored: int) -> None:
    """The (meta) model's weight names and shapes equal the file's, and it holds little more than ``stored``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"state_dict does not fit {type(model).__name__}: missing {brief_repr(missing[:5])}, "
            f"unexpected {brief_repr(unexpected[:5])}"
        )
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if state_dict[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(f"state_dict shapes do not fit {type(model).__name__}: {'; '.join(wrong[:3])}")
    built = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if built > stored + EXTRA_ELEMENTS:
        raise CheckpointError(f"{type(model).__name__} would hold {built} values but the file has {stored}")


def model_from_record(record: dict[str, Any]) -> nn.Module:
    """Rebuild and load (eval mode, CPU) the model described by a :func:`model_record` dict.

    Raises:
        CheckpointError: a malformed record, a class outside the registry, bad init args, or
            weights that do not fit the model the init args describe.
    """
    check_record(record)
    try:
        cls = model_class(record["class_path"])
    except KeyError:
        raise CheckpointError(
            f"{brief_repr(record['class_path'])} is not an audiosep model class; "
            f"known: {', '.join(sorted(MODEL_CLASSES))}"
        ) from None
    init_args, state_dict = record["init_args"], record["state_dict"]
    _check_init_args(cls, init_args)
    stored = _stored_values(state_dict)
    _check_counts(init_args, stored)
    limit = 4 * len(state_dict) + 256
    _compare_weights(_build(cls, init_args, "meta", limit), state_dict, stored)
    model = _build(cls, init_args, "cpu", limit)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"cannot load the weights into {cls.__name__}: {_one_line(err)}") from err
    return model.eval()


def build_untrusted(cls: type[nn.Module], kwargs: Any, limits: Mapping[str, int]) -> nn.Module:
    """``cls(**kwargs)`` with args read from a file: checked names and types, ``limits`` capping its sizes.

    For the parts of a checkpoint that have no weights to compare with (e.g. an ASR front end):
    every arg named in ``limits`` must be given, as an int at most its limit, and those must bound
    what the constructor allocates.
    """
    _check_plain_dict(kwargs, f"{cls.__name__} args")
    _check_init_args(cls, kwargs)
    for name, limit in limits.items():
        value = kwargs.get(name)
        if not (is_size(value) and value <= limit):
            raise CheckpointError(f"{cls.__name__} arg {name}={brief_repr(value)} is not an int in 1..{limit}")
    return _build(cls, kwargs, "cpu", limit=256)


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``(model, metadata)`` from ``path``; the model is in eval mode on CPU.

    Raises:
        CheckpointError: missing or unreadable file, no audiosep model inside, or a record that
            does not describe a registered model and its weights (the message is one line).
    """
    record = read_record(path)
    try:
        model = model_from_record(record)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return model, dict(record.get("metadata", {}))
