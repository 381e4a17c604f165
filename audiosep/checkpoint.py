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

Before ``torch.load`` even runs, the file must be a zip whose entries are stored uncompressed, as
``torch.save`` writes them (:func:`zip_problem`): ``torch.load`` inflates a compressed entry in
memory before anything can be checked (a 1 MB deflated file held 1 GB of zeros), so only stored
entries let the file's own size bound what loading it allocates; and its pickle, walked without being run,
must not stand for more values than its size allows (:func:`pickle_problem`: 1.3 KB of shared tuples made
the unpickler hash 40**7 values). Float init args must be finite
and in a sensible range (:data:`FLOAT_RANGES`), and weights must be finite: a NaN anywhere only
makes NaN output, or a crash deep inside inference.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import pickletools
import types
import typing
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal, Union, get_args, get_origin

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
# Init args that set the compute or the outputs of every call without storing weights in proportion:
# capped absolutely, else a small file makes a forward pass quadratic in a chunk of a million frames, repeat
# one shared layer 250k times, or write 3000 files per input.
WEIGHTLESS_LIMITS = {
    "chunk_size": 4096,  # frames per attention chunk (SepFormer 250, RE-SepFormer 150)
    "num_intra_layers": 64,  # Tiny-Sepformer's shared layers repeat one layer this many times
    "num_inter_layers": 64,
    "num_sources": 16,  # outputs per input
}
EXTRA_ELEMENTS = 1 << 20  # non-persistent buffers (windows, filterbanks) beyond the stored weights
# Exceptions a constructor raises for arguments it cannot build (OverflowError: an ArithmeticError).
BUILD_ERRORS = (TypeError, ValueError, KeyError, IndexError, RuntimeError, ArithmeticError, AssertionError)
PLAIN_SCALARS = (type(None), bool, int, float, str)
ZIP_MAGIC = b"PK\x03\x04"  # torch.load reads a file as a zip only when it starts with this (else: legacy format)
ZIP_METHODS = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
MAX_EPS = 0.1  # a norm's variance floor is small (1e-8 to 1e-3 in practice)
MAX_SECONDS = 1.0  # an analysis window or hop of the ASR front end (20 ms, 10 ms in practice)
# Float init args (of any model or front end, by name) and the range each must lie in; every other
# float need only be finite. Why: constructors check some of these (nn.Dropout refuses 5.0 but not
# NaN, BatchNorm refuses eps < 0 only when it runs), others not at all (a negative log guard gives
# NaN features); a value a file states must fail at load time, in one line, not later or silently.
FLOAT_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "norm_eps": (lambda v: 0 < v <= MAX_EPS, f"in (0, {MAX_EPS:g}]"),
    "eps": (lambda v: 0 < v <= MAX_EPS, f"in (0, {MAX_EPS:g}]"),
    "preemphasis": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "dither": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "log_guard": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "window_size": (lambda v: 0 < v <= MAX_SECONDS, f"in (0, {MAX_SECONDS:g}] seconds"),
    "window_stride": (lambda v: 0 < v <= MAX_SECONDS, f"in (0, {MAX_SECONDS:g}] seconds"),
    "f_min": (lambda v: 0 <= v, ">= 0 Hz"),
    "f_max": (lambda v: 0 < v, "> 0 Hz"),
}


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
    from audiosep.io import atomic_write_bytes

    atomic_write_bytes(path, lambda buffer: torch.save(obj, buffer))  # a full disk: an OSError, not a C++ trace


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
    """Why ``tensor`` is not a dense, real, finite CPU tensor holding its own values; None if it is one.

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
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        return "holds NaN or infinite values"  # a NaN weight only makes NaN output
    return None


def _check_state_dict(value: Any) -> None:
    """``value`` must be a dict of str -> dense, real, finite CPU Tensor that holds its values."""
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


def zip_problem(file: BinaryIO) -> str | None:
    """Why ``file`` is not a zip of uncompressed entries as ``torch.save`` writes, or holds a pickle that stands
    for far more than its size (:func:`pickle_problem`); None if it is a sound one.

    Why: ``torch.load`` inflates a compressed entry in memory before anything can be checked, and
    reads a file that does not start as a zip in the legacy format, whose pickle states storage
    sizes that are allocated before any data is read. Stored entries hold their own bytes, so the
    file's size bounds what loading it allocates. Reads the zip directory and the pickles (``data.pkl``), once
    their entries passed; rewinds ``file``.
    """
    try:
        file.seek(0)
        if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return "not a zip file, as torch.save writes"
        size = file.seek(0, os.SEEK_END)
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
            problem = _entries_problem(entries, size)
            pickles = [] if problem else [archive.read(e) for e in entries if e.filename.endswith("data.pkl")]
    except Exception as err:  # noqa: BLE001 (zipfile raises several types for damaged archives)
        return f"a damaged zip file: {_one_line(err)}"
    finally:
        file.seek(0)
    return problem or next(filter(None, map(pickle_problem, pickles)), None)


def _entries_problem(entries: list[zipfile.ZipInfo], size: int) -> str | None:
    """Why a zip's entries are not ``torch.save``'s (stored, each within the ``size``-byte file); None if they are."""
    for entry in entries:
        name = brief_repr(entry.filename)
        if entry.compress_type != zipfile.ZIP_STORED:
            method = ZIP_METHODS.get(entry.compress_type, f"method {entry.compress_type}")
            return f"zip entry {name} is compressed with {method}; torch.save writes entries uncompressed"
        if entry.file_size != entry.compress_size or entry.header_offset + entry.file_size > size:
            return f"zip entry {name} declares {entry.file_size} bytes, more than the {size}-byte file holds"
    declared = sum(entry.file_size for entry in entries)
    if declared > size:
        return f"zip entries declare {declared} bytes in all, more than the {size}-byte file holds"
    return None


PICKLE_VALUES_BASE = 1_000_000  # values a pickle may stand for, plus PICKLE_VALUES_PER_BYTE per byte of it
PICKLE_VALUES_PER_BYTE = 64  # a checkpoint's pickle stands for about one value per opcode, a few bytes each


def pickle_problem(data: bytes) -> str | None:
    """Why unpickling ``data`` would cost far more than its size; None if it would not.

    Why: ``weights_only=True`` still builds tuples of references to earlier tuples, so 1.3 KB can stand for
    40**7 values, which the unpickler then hashes as a dict key (hours, before any check of ours). The pass
    walks the opcodes (not run) and counts what each value stands for with shared references counted each
    time; a legitimate checkpoint stays near its opcode count. Linear in ``data``.
    """
    limit = PICKLE_VALUES_BASE + PICKLE_VALUES_PER_BYTE * len(data)
    stack: list[int | None] = []  # the values each stack entry stands for; None: a mark
    memo: dict[int, int] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if opcode.name == "MEMOIZE" else arg] = _top(stack)
                continue
            if opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
                continue
            values = 1 + sum(_pop_operands(stack, opcode.stack_before))
            if values > limit:
                return f"its {len(data)}-byte pickle stands for more than {limit} values (a crafted file)"
            stack += [None if item is pickletools.markobject else values for item in opcode.stack_after]
    except (ValueError, KeyError, IndexError) as err:  # genops's own errors, or an operand that is not there
        return f"a damaged pickle: {_one_line(err)}"
    return None


def _top(stack: list[int | None]) -> int:
    if not stack or stack[-1] is None:
        raise ValueError("no value to memoize")
    return stack[-1]


def _pop_operands(stack: list[int | None], operands: list[Any]) -> list[int]:
    """Pop an opcode's operands (``stack_before``: a mark and the slice above it included); their value counts."""
    popped: list[int] = []
    for operand in reversed(operands):
        if operand is pickletools.stackslice:
            while stack and stack[-1] is not None:
                popped.append(stack.pop())  # type: ignore[arg-type]
            continue
        value = stack.pop() if stack else -1
        if value == -1 or (value is None) != (operand is pickletools.markobject):
            raise ValueError("an opcode without its operands")
        if value is not None:
            popped.append(value)
    return popped


def load_stored_zip(file: BinaryIO) -> Any:
    """``torch.load(weights_only=True)`` of an open file once :func:`zip_problem` passes (the same file).

    Raises:
        CheckpointError: why not, as a short phrase (the zip problem, or the type torch raised) for
            the caller to put in its own message.
    """
    problem = zip_problem(file)
    if problem is not None:
        raise CheckpointError(problem)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(err.__class__.__name__) from err


def _load_checked(path: Path) -> Any:
    """:func:`load_stored_zip` of ``path``, its problem named with the file."""
    try:
        with path.open("rb") as file:
            return load_stored_zip(file)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from err


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the model record of an audiosep model file or an audiosep Lightning ``.ckpt``.

    Raises:
        CheckpointError: missing or unreadable file, a compressed or non-zip file, no audiosep
            model inside, a malformed record.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    raw = _load_checked(path)
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
    """Whether a plain value fits a constructor annotation (``int``: a positive size or count; ``float``: finite)."""
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
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),  # finite: _has_non_finite
        str: lambda v: isinstance(v, str),
    }
    if hint in scalar_checks:
        return scalar_checks[hint](value)
    fits = _fits_container(value, origin or hint, args)
    return True if fits is None else fits  # an annotation we do not model: the constructor checks it


def _magnitude(value: Any) -> float:
    """The size a scalar can stand for: ``abs`` of an int, a float or a numeric str (``"nan"``: inf); 0 otherwise.

    Why floats and strings: constructors coerce sizes with ``int()`` (QuartzNet's block lists),
    which takes ``1e12`` and ``"1000000000000"`` as readily as ``10**12``.
    """
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return abs(value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return 0
    if isinstance(value, float):
        return abs(value) if math.isfinite(value) else math.inf
    return 0


def _largest_number(value: Any) -> float:
    """The largest :func:`_magnitude` anywhere in a plain value; 0 if none."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else None
    if items is None:
        return _magnitude(value)
    return max((_largest_number(item) for item in items), default=0)


def _has_non_finite(value: Any) -> bool:
    """Whether a NaN or infinite float is anywhere in a plain value."""
    if isinstance(value, float):
        return not math.isfinite(value)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    return any(_has_non_finite(item) for item in items)


def _stored_values(state_dict: dict[str, Tensor]) -> int:
    """How many weight values the file stores for ``state_dict``: per storage, its values or those of its tensors.

    Why not ``numel()`` alone: tensors that share one storage store its values once; nor the storage
    alone: a weight that views a few values of a huge storage would raise every cap by all of it.
    """
    used: dict[int, int] = {}
    held: dict[int, int] = {}
    for tensor in state_dict.values():
        key = tensor.untyped_storage().data_ptr()
        used[key] = used.get(key, 0) + tensor.numel()
        held[key] = tensor.untyped_storage().nbytes() // tensor.element_size()
    return sum(min(used[key], held[key]) for key in used)


def _check_counts(init_args: dict[str, Any], stored: int) -> None:
    """No size or count (int, float or numeric str), nor the product of the ``num_*`` counts, exceeds the ``stored`` values.

    Why: a constructor may expand a count into a list before it builds anything (a per-layer
    width list of ``num_layers`` entries), which even the meta device cannot cut short; and counts
    multiply into such lists (``num_repeats`` x ``num_layers`` blocks, ``num_blocks`` x
    ``num_intra_layers`` layers). Each layer, each channel holds weights, so in a real model even
    the product of all its counts (sources, blocks, layers, heads) is far below its stored values.
    """
    cap = stored + INT_SLACK
    for name, value in init_args.items():
        limit = WEIGHTLESS_LIMITS.get(name)
        if limit is not None and _largest_number(value) > limit:
            raise CheckpointError(f"init arg {name}={brief_repr(value)} is above {limit}, this loader's limit")
        if _largest_number(value) > cap:
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
    for name, value in init_args.items():
        if _has_non_finite(value):
            raise CheckpointError(f"{cls.__name__} init arg {name}={brief_repr(value)} holds NaN or infinity")
    hints = typing.get_type_hints(cls.__init__)
    for name, value in init_args.items():
        if name in hints and not _fits(value, hints[name]):
            annotation = parameters[name].annotation if name in parameters else hints[name]
            note = " (sizes and counts are positive ints)" if "int" in str(annotation) else ""
            raise CheckpointError(f"{cls.__name__} init arg {name}={brief_repr(value)} does not fit {annotation}{note}")
    _check_float_ranges(cls, init_args)


def _check_float_ranges(cls: type[nn.Module], init_args: dict[str, Any]) -> None:
    """Each number named in :data:`FLOAT_RANGES` lies in its range, and a mel band fits below Nyquist."""
    for name, value in init_args.items():
        if name in FLOAT_RANGES and isinstance(value, int | float) and not isinstance(value, bool):
            within, allowed = FLOAT_RANGES[name]
            if not within(value):
                raise CheckpointError(f"{cls.__name__} init arg {name}={brief_repr(value)} is not {allowed}")
    rate, f_min, f_max = (init_args.get(key) for key in ("sample_rate", "f_min", "f_max"))
    if is_size(rate) and isinstance(f_min, int | float) and isinstance(f_max, int | float | type(None)):
        top = rate / 2 if f_max is None else f_max
        if not f_min < top <= rate / 2:
            raise CheckpointError(
                f"{cls.__name__} init args f_min={brief_repr(f_min)}, f_max={brief_repr(f_max)} "
                f"are not a band 0 <= f_min < f_max <= sample_rate / 2 = {rate / 2:g} Hz"
            )


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
    _check_loaded(model)
    return model.eval()


def _check_loaded(model: nn.Module) -> None:
    """Every loaded weight is finite and every running variance or power non-negative.

    Why after loading: a float64 1e300 is finite in the file and infinite once cast to the model's
    float32; a negative running variance is finite and makes every output NaN.
    """
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"weight {name} is not finite in {tensor.dtype} (out of its range once loaded)")
        if name.rpartition(".")[2] in ("running_var", "running_power", "window_power") and bool((tensor < 0).any()):
            raise CheckpointError(f"buffer {name} holds negative values (a variance or power is >= 0)")


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
