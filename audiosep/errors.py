"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config): the message says what and where."""


def one_line(err: BaseException | str, limit: int = 200) -> str:
    """An exception (or text) on one line, cut to ``limit`` characters."""
    text = err if isinstance(err, str) else (str(err) or type(err).__name__)
    text = " ".join(text.split())
    if not isinstance(err, str) and not text.startswith(type(err).__name__):
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
