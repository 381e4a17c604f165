"""Checks on the file names and paths read from metadata, so a crafted file cannot reach other folders.

A LibriMix ``mixture_ID`` names the ``<id>.wav`` files read and written in every split folder, and
the metadata's input paths are read from under a corpus root: an id with a folder part or an input
path leading out of its root would read or overwrite files elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from audiosep.errors import UserError


def check_file_name(name: str, where: str) -> str:
    """``name`` if it is one plain file name (no folder part, ``..`` or control character); else raise
    at ``where`` (the file and line it came from)."""
    if not name or "/" in name or "\\" in name or ".." in name or not name.isprintable():
        raise UserError(f"{where} {name!r} is not a plain file name (no folder, '..' or control characters)")
    return name


def check_mixture_ids(ids: Iterable[tuple[int, str]], metadata: Path) -> None:
    """Raise at the first ``(line, mixture_ID)`` of ``metadata`` that is not a plain file name or repeats
    an earlier one (the same files would be written or scored twice)."""
    first_line: dict[str, int] = {}
    for line, mixture_id in ids:
        where = f"{metadata}:{line}: mixture_ID"
        if mixture_id in first_line:
            raise UserError(f"{where} {mixture_id!r} repeats line {first_line[mixture_id]}")
        first_line[check_file_name(mixture_id, where)] = line


def path_inside(root: Path, relative: str, where: str) -> Path:
    """``root / relative`` if ``relative`` is a relative path that stays below ``root``; else raise at ``where``.

    The check is on the text, not on resolved symlinks: a corpus whose folders link to other disks
    is the user's own layout, and resolving 150k paths would take seconds.
    """
    normal = os.path.normpath(relative) if relative else ""
    if not normal or "\0" in relative or os.path.isabs(normal) or normal.split(os.sep)[0] in ("..", "."):
        raise UserError(f"{where} {relative!r} is not a path inside {root}")
    return root / normal
