"""Inputs of the commands that take audio files: files, folders (recursive, ``--glob``) and ``@lists``.

One :class:`Input` per file found (the same file named twice counts once); problems found while
expanding (no such file, an empty folder, an unreadable list) are failures in the :class:`Report`,
which also prints each outcome on one line and the summary at the end.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from audiosep.errors import UserError, one_line, shown

log = logging.getLogger("audiosep.inputs")

# Suffixes soundfile may read beyond its format names (``soundfile.available_formats()``).
SUFFIX_ALIASES = frozenset({"aif", "aifc", "oga", "opus", "snd", "sph", "mat"})


def one_line_text(text: str) -> str:
    """``text`` with its line breaks, tabs and other control characters escaped, and ``\\`` doubled so that the
    escapes read back: one output line, every other character (non-breaking and zero-width spaces of Persian
    or Hindi text) as it is."""
    text = text.replace("\\", "\\\\")
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


@dataclass
class Input:
    path: Path
    label: str  # as the user would recognise it


class Report:
    """Counts outcomes and prints them (results on stdout, errors, warnings, summary on stderr)."""

    def __init__(self) -> None:
        self.written = self.skipped = self.failed = 0

    def error(self, label: str, reason: str) -> None:
        self.failed += 1
        reason = " ".join(str(reason).split("\n")).strip()
        print(f"audiosep: error: {shown(label)}: {shown(reason)}", file=sys.stderr)

    def warning(self, message: str) -> None:
        print(f"audiosep: warning: {shown(message)}", file=sys.stderr)

    def skip(self, label: str, outputs: list[Path]) -> None:
        self.skipped += 1
        print(
            f"{shown(label)}: skipped, outputs exist ({', '.join(shown(p) for p in outputs)}); --overwrite redoes it"
        )

    def skip_output(self, label: str, source: str) -> None:
        """``label`` is an output of this run's input ``source``: not separated again."""
        self.skipped += 1
        print(f"{shown(label)}: skipped, an output of {shown(source)} (not separated again)")

    def skip_same(self, label: str, first: str) -> None:
        """``label`` is another name (a link) of the input ``first``: separated once, under ``first``'s name."""
        self.skipped += 1
        print(f"{shown(label)}: skipped, the same file as {shown(first)} (a link; separated once, as {shown(first)})")

    def wrote(self, label: str, outputs: list[Path]) -> None:
        self.written += 1
        print(f"{shown(label)} -> {', '.join(shown(p) for p in outputs)}")

    def summary(self, done: str = "written") -> None:
        """``audiosep: N written, N skipped, N failed`` on stderr (``done`` names the first count)."""
        print(f"audiosep: {self.written} {done}, {self.skipped} skipped, {self.failed} failed", file=sys.stderr)


def audio_suffixes() -> frozenset[str]:
    import soundfile as sf

    return frozenset(name.lower() for name in sf.available_formats() if name != "RAW") | SUFFIX_ALIASES


def file_id(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def walk(root: Path, pattern: str | None, exclude: Path | None) -> list[Path]:
    """Audio files below ``root`` (sorted; hidden files and folders and ``exclude`` left out), and whatever else
    bears their names (broken links, pipes): each is then refused with its reason, never skipped silently."""
    suffixes = audio_suffixes() if pattern is None else frozenset()
    found: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        folder_path = Path(folder)
        subfolders[:] = sorted(
            d for d in subfolders
            if not d.startswith(".") and (exclude is None or (folder_path / d).resolve() != exclude)
        )  # fmt: skip
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = folder_path / name
            if pattern is None:
                matches = path.suffix[1:].lower() in suffixes
            else:
                matches = PurePosixPath(path.relative_to(root).as_posix()).match(pattern)
            if matches:  # a broken link, a loop or a pipe too: the user asked for it, so it is reported, not dropped
                found.append(path)
    return found


def read_list(list_path: Path) -> list[Path]:
    """Paths in a ``@list.txt``, relative to its folder (blank lines and ``#`` comments skipped)."""
    if not list_path.exists():
        raise UserError("no such list file")
    if list_path.is_dir():
        raise UserError("is a directory, not a list file")
    try:
        text = list_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"the list is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise UserError(f"cannot read the list ({err.strerror or err})") from err
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(list_path.parent / line)
    return entries


def collect_inputs(
    arguments: list[str], pattern: str | None, report: Report, exclude: Path | None = None
) -> list[Input]:
    """Expand files, folders and ``@lists`` into inputs (``exclude``: a folder not to search, the
    output folder); problems found here are reported as failures."""
    exclude = exclude.resolve() if exclude is not None else None
    inputs: list[Input] = []
    seen: dict[tuple[int, int], Input] = {}

    def add(path: Path, label: str) -> None:
        identity = file_id(path)
        if identity is None:
            return
        first = seen.get(identity)
        if first is None:
            seen[identity] = Input(path, label)
            inputs.append(seen[identity])
        elif os.path.abspath(first.path) == os.path.abspath(path):  # the same file named twice is taken once
            log.info("%s: given more than once; taken once", label)
        else:  # another name of it (a symbolic or hard link): one outcome per name, and this one says so
            report.skip_same(label, first.label)

    def add_file(path: Path, label: str) -> None:  # never opened unless a regular file: a pipe blocks the reader
        if not path.exists():
            report.error(label, "no such file" if not path.is_symlink() else "broken symbolic link")
        elif not path.is_file():
            report.error(label, "not a regular file")
        else:
            add(path, label)

    def expand(path: Path, label: str) -> None:
        if not path.is_dir():
            add_file(path, label)
            return
        found = walk(path, pattern, exclude)
        if not found:
            what = f"matching --glob {pattern!r}" if pattern else "with an audio suffix"
            report.error(label, f"folder holds no files {what}")
        for file in found:
            add_file(file, str(file))

    for argument in arguments:
        if argument.startswith("@") and len(argument) > 1:
            try:
                entries = read_list(Path(argument[1:]))
            except UserError as err:
                report.error(argument, str(err))
                continue
            if not entries:
                report.error(argument, "the list names no files")
            for entry in entries:
                expand(entry, str(entry))
        else:
            expand(Path(argument), argument)
    return inputs


def progress_bar(total: int, enabled: bool):
    """A files bar on stderr, shown only on a terminal (so logs and captured output stay clean)."""
    from tqdm import tqdm

    return tqdm(total=total, desc="files", unit="file", file=sys.stderr, leave=False,
                disable=None if enabled else True)  # fmt: skip


def check_device(device: str) -> str:
    """The ``--device``'s type; one-line error for a device torch cannot use here (a bad name, or CUDA
    without that GPU)."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"--device {device!r}: not a torch device ({one_line(err)})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed.type


def check_output_folder(path: str | os.PathLike, flag: str) -> None:
    """One-line error for an output folder that exists as a file, found before the work, not after it."""
    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path}: is a file, not a folder")


def check_output_file(path: str | os.PathLike, flag: str, reads: Iterable[str | os.PathLike] = (),
                      what: str = "an input", overwrite: bool = True) -> None:  # fmt: skip
    """One-line error for an output file that is a folder, a device, pipe, socket or symbolic link (the
    atomic writer would put a regular file in its place: as root, ``--out /dev/null`` replaced the
    system's /dev/null), a name ending in a separator, one of the files the command reads (``what``
    names them): writing it would destroy the input, or, unless ``overwrite``, an existing file."""
    if Path(path).is_dir():
        raise UserError(f"{flag} {path}: is a folder; give {flag} a file name")
    if str(path).endswith(("/", os.sep)):
        raise UserError(f"{flag} {path}: ends with a path separator; give {flag} a file name")
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # a folder on the way that is a file: reported below
        mode = None
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot be used ({err.strerror or err})") from None
    if mode is not None and stat.S_ISLNK(mode):
        raise UserError(f"{flag} {path}: is a symbolic link; give the file it points to, or another name")
    if mode is not None and not stat.S_ISREG(mode):
        raise UserError(f"{flag} {path}: is a device, pipe or socket, not a file; give {flag} a file name")
    try:
        if Path(path).resolve() in {Path(read).resolve() for read in reads}:
            raise UserError(f"{flag} {path}: would replace {what}; pass another {flag}")
    except (RuntimeError, OSError) as err:  # a symbolic link loop among the folders
        raise UserError(f"{flag} {path}: cannot be resolved ({one_line(err)})") from None
    if mode is not None and not overwrite:
        raise UserError(f"{flag} {path}: exists; pass --overwrite to replace it")
    existing = next(parent for parent in Path(path).absolute().parents if parent.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write in {existing}")


def check_glob(pattern: str | None) -> None:
    """Raise :class:`UserError` for a ``--glob`` pattern that ``PurePosixPath.match`` refuses."""
    if pattern is not None:
        try:
            PurePosixPath("x").match(pattern)
        except ValueError as err:
            raise UserError(f"--glob {pattern!r}: {err}") from err
