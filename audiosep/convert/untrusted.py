"""Reading files we did not write (converter inputs): YAML as plain data, weights as checked tensors.

Shared by :mod:`audiosep.convert.nemo` and :mod:`audiosep.convert.speechbrain`. Every problem is a
one-line :class:`~audiosep.errors.UserError`; :func:`prefixed_errors` puts the file's name in front.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import torch
import yaml
from torch import Tensor, nn

from audiosep.checkpoint import (
    BUILD_ERRORS,
    FORMAT,
    CheckpointError,
    load_stored_zip,
    model_from_record,
    tensor_problem,
)
from audiosep.errors import UserError, brief_repr, one_line
from audiosep.models.base import RebuildableModule

MAX_YAML_BYTES = 1 << 20  # a NeMo model_config.yaml or a SpeechBrain hyperparams.yaml is a few KB
MAX_YAML_INT_CHARS = 100  # no config int is longer; PyYAML parses base-60 ints ("1:0:0...") in quadratic time


class UntrustedYamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader for file input: no aliases, and ints of at most ``MAX_YAML_INT_CHARS`` characters.

    Why: PyYAML keeps an alias as a reference, so a few nested aliases ("billion laughs") or merge
    keys stand for a value of exponential size that any repr, comparison or merge then expands.
    """

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Refuse ``*alias`` where PyYAML would reuse the anchored node."""
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not supported", mark)
        return super().compose_node(parent, index)

    def construct_short_int(self, node: yaml.ScalarNode) -> int:
        """An int scalar of bounded length (huge ints cannot even be printed in an error message)."""
        if len(node.value) > MAX_YAML_INT_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of more than {MAX_YAML_INT_CHARS} characters", node.start_mark
            )
        return self.construct_yaml_int(node)


UntrustedYamlLoader.add_constructor("tag:yaml.org,2002:int", UntrustedYamlLoader.construct_short_int)


_RESOLVER = yaml.resolver.Resolver()  # SafeLoader's implicit tags (int, bool, null, ...)


def loaded_key(event: yaml.ScalarEvent) -> Any:
    """A scalar mapping key as SafeLoader constructs it (``true``, ``True`` -> True; ``1`` -> 1, ``'1'`` -> '1'),
    or its text where that fails (a custom tag such as SpeechBrain's ``!ref x``, a str equal to ``'x'``; an
    unhashable value) or would be slow (keys longer than any config's: base-60 ints parse in quadratic time)."""
    if len(event.value) > MAX_YAML_INT_CHARS:
        return event.value
    tag = event.tag if event.tag not in (None, "!") else _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
    try:
        key = yaml.constructor.SafeConstructor().construct_object(node)
        hash(key)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        return event.value
    return key


class MappingKeys:
    """Follows YAML parse events and refuses a key given twice in one mapping.

    Why: PyYAML keeps the last value without a word: a recipe with two ``trainer:`` blocks silently lost
    the first block's ``max_epochs`` and ``precision`` (reviewer). YAML itself requires unique keys.
    Keys are compared as the loaded dict will hold them (``true`` and ``True`` are one key, ``1`` and
    ``'1'`` two), not as text.
    """

    def __init__(self) -> None:
        self.frames: list[dict[Any, Any] | None] = []  # per open collection: a mapping's keys so far, or None

    def see(self, event: Any) -> None:
        """Take the next parse event; raise ``yaml.composer.ComposerError`` at a repeated key."""
        if isinstance(event, yaml.CollectionEndEvent):
            self.frames.pop()
            return
        if not isinstance(event, yaml.NodeEvent):
            return
        frame = self.frames[-1] if self.frames else None
        if frame is not None:
            if frame["expect_key"] and isinstance(event, yaml.ScalarEvent):
                key = loaded_key(event)
                if key in frame["keys"]:
                    raise yaml.composer.ComposerError(None, None, f"key {brief_repr(event.value, 60)} given twice "
                                                      f"(first on line {frame['keys'][key]})", event.start_mark)  # fmt: skip
                frame["keys"][key] = event.start_mark.line + 1
            frame["expect_key"] = not frame["expect_key"]
        if isinstance(event, yaml.MappingStartEvent):
            self.frames.append({"keys": {}, "expect_key": True})
        elif isinstance(event, yaml.SequenceStartEvent):
            self.frames.append(None)


@contextmanager
def prefixed_errors(prefix: str, error: type[Exception] = UserError) -> Iterator[None]:
    """Re-raise a UserError from the block as ``error``, with ``prefix`` (the file it concerns) in front."""
    try:
        yield
    except UserError as err:
        raise error(f"{prefix}: {err}" if prefix else str(err)) from None


def parse_untrusted_yaml(data: bytes, loader: type[UntrustedYamlLoader] = UntrustedYamlLoader) -> Any:
    """UTF-8 YAML ``data`` (at most ``MAX_YAML_BYTES``) as plain data; any problem is a one-line UserError."""
    if len(data) > MAX_YAML_BYTES:
        raise UserError(f"more than {MAX_YAML_BYTES} bytes of YAML; a config is a few KB")
    try:
        text = data.decode("utf-8")
        keys = MappingKeys()
        for event in yaml.parse(text, Loader=loader):  # PyYAML keeps a repeated key's last value without a word
            keys.see(event)
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text") from None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError, OverflowError) as err:  # bad dates, deep nesting, huge base-60 floats
        raise UserError(f"not valid YAML ({one_line(err)})") from None


def _entry_problem(key: Any, tensor: Any) -> str | None:
    """Why a loaded state-dict entry cannot be a weight (None when it can).

    :func:`audiosep.checkpoint.tensor_problem`'s rules (dense real finite CPU tensors holding their values:
    models are sized from the stored shapes).
    """
    if not isinstance(key, str) or not isinstance(tensor, Tensor):
        return f"is a {type(key).__name__} -> {type(tensor).__name__} entry, not a name -> tensor one"
    return tensor_problem(tensor)


def _torch_load(file: IO[bytes]) -> Any:
    """:func:`audiosep.checkpoint.load_stored_zip` of an open file, its problem as a :class:`UserError`."""
    try:
        with warnings.catch_warnings():  # about pickle protocols or sparse tensors: refused or moot
            warnings.simplefilter("ignore")
            return load_stored_zip(file)
    except CheckpointError as err:
        raise UserError(f"not a readable PyTorch checkpoint ({err})") from None


def load_weights(source: str | os.PathLike | IO[bytes]) -> dict[str, Tensor]:
    """A state dict read with ``weights_only=True`` (a zip of stored entries) whose entries pass :func:`_entry_problem`."""
    if isinstance(source, str | os.PathLike):
        try:
            with open(source, "rb") as file:
                state = _torch_load(file)
        except OSError as err:
            raise UserError(f"cannot read ({one_line(err)})") from None
    else:
        state = _torch_load(source)
    if not isinstance(state, Mapping):
        raise UserError(f"holds a {type(state).__name__}, not a state dict")
    for key, tensor in state.items():
        problem = _entry_problem(key, tensor)
        if problem is not None:
            raise UserError(f"entry {brief_repr(key)} {problem}")
    return dict(state)


def build_on_meta(cls: type[nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    """``cls(**kwargs)`` on the meta device: the shapes to check file weights against, allocating nothing."""
    try:
        with torch.device("meta"):
            return cls(**kwargs)
    except BUILD_ERRORS as err:
        raise UserError(f"cannot build {cls.__name__}: {one_line(err)}") from None


def rebuild_checked(meta: RebuildableModule, state: dict[str, Tensor]) -> nn.Module:
    """``meta``'s model on the CPU holding ``state`` (eval mode), through audiosep.checkpoint's checks.

    Those are the checks an audiosep model file gets: init args against the constructor, sizes
    against the stored values, a meta build compared with the weights, then a strict load.
    """
    record = {
        "format": FORMAT, "class_path": meta.class_path(), "init_args": meta.init_args,
        "state_dict": state, "metadata": {},
    }  # fmt: skip
    try:
        return model_from_record(record)
    except CheckpointError as err:
        raise UserError(f"the weights do not fit the configured model: {err}") from None
