"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""

from __future__ import annotations

import reprlib
from typing import Any


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config): the message says what and where."""


class ConfigError(UserError, ValueError):
    """A setting or data file that does not fit: a ``ValueError`` to library callers, one line at the command line."""


def user_message(err: UserError) -> str:
    """The message of ``err``; of one a DataLoader worker raised, the worker's own message line.

    Why: torch re-raises a worker's exception with the worker's whole traceback as its message.
    """
    text = str(err)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    kind, sep, message = last.partition(": ")
    return message if sep and kind.endswith("Error") else last


def shown(text: object) -> str:
    """``text`` on one printable line (control characters in file names are escaped)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(err: BaseException | str, limit: int = 200) -> str:
    """An exception (or text) on one line, cut to ``limit`` characters."""
    text = err if isinstance(err, str) else (str(err) or type(err).__name__)
    text = " ".join(text.split())
    if not isinstance(err, str) and not text.startswith(type(err).__name__):
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class _BoundedRepr(reprlib.Repr):
    """``reprlib.Repr`` with small limits that never calls the ``repr`` of a type it does not know.

    Why: a file can hold a list that repeats a list that repeats a list... (the unpickler and YAML
    share them), nested thousands deep, or an ``OrderedDict`` or tensor whose own ``repr`` prints it all.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = self.maxdeque = 5
        self.maxstring = self.maxlong = 100

    def repr_instance(self, x: Any, level: int) -> str:
        """Plain scalars (bool, float, None) as ``repr`` does; any other type by its name only."""
        return repr(x) if isinstance(x, bool | float | type(None)) else f"<{type(x).__name__}>"


_BOUNDED_REPR = _BoundedRepr()


def brief_repr(value: Any, limit: int = 120) -> str:
    """A bounded ``repr(value)`` on one line, cut to ``limit`` characters (file contents can be anything)."""
    return one_line(_BOUNDED_REPR.repr(value), limit)


def csv_row_error(path: object, reader: Any, err: Exception) -> UserError:
    """One line for a CSV row that ``csv`` cannot read (``err``, e.g. a cell beyond its 128 KiB field limit):
    the file and the row's line (``reader.line_num`` counts the lines read before it)."""
    return UserError(f"{path}:{reader.line_num + 1}: not a CSV row ({err})")
