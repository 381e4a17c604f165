"""The one atomic writer: every file we produce appears whole or not at all.

Each output is written to a temporary file in the destination folder (same file system, so the
final ``os.replace`` is atomic) whose name starts with ``.<name>.`` and ends with ``.tmp``; a
killed run leaves at most such a temp file, never a half-written output under the real name.
:func:`folder_lock` keeps a second run out of a folder that a running one writes into.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from audiosep.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; folder_lock then locks nothing
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".tmp"
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends (taken then): for steps that must not stop halfway.

    Two holds: this thread's signal mask (POSIX; also what a process forked inside the block starts
    with), and, in the main thread, handlers that only note the signal. Why both: a signal sent to the
    process goes to any thread that does not block it (torch's OpenMP threads), and Python then runs
    its handler in the main thread at once, mask or not: a pair of renames was left half old, half new.
    """
    masks = hasattr(signal, "pthread_sigmask")
    noted: list[int] = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum)) for sig in STOP_SIGNALS}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if masks else None
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal held by the mask is taken here
        for sig in dict.fromkeys(noted):  # one that reached another thread meanwhile, now
            signal.raise_signal(sig)


NAME_MAX = 255  # bytes in a file name: ext4, XFS, btrfs, APFS, NTFS (in UTF-16 units there)
TEMP_RANDOM = 8  # characters ``tempfile.mkstemp`` puts between prefix and suffix (letters, digits, "_")


def temp_prefix(path: Path) -> str:
    """Prefix of the temporary files written for ``path`` (for resume clean-ups that remove them).

    ``.<name>.``; for a name within 14 bytes of :data:`NAME_MAX` (its temp name would be too long to
    create: the output failed although its own name was legal), ``.<start of name>~<hash of name>.``.
    """
    prefix = f".{path.name}."
    if len(os.fsencode(prefix)) + TEMP_RANDOM + len(TEMP_SUFFIX) <= NAME_MAX:
        return prefix
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    room = NAME_MAX - TEMP_RANDOM - len(TEMP_SUFFIX) - len(digest) - 3  # the dots and the tilde
    start = os.fsencode(path.name)[:room].decode(errors="ignore")  # a cut multi-byte character is dropped
    return f".{start}~{digest}."


def _temp_name_prefix(name: str) -> str | None:
    """The :func:`temp_prefix` a temp file's ``name`` was made with (mkstemp's random part holds no dot), or None."""
    return name[: -len(TEMP_SUFFIX)].rpartition(".")[0] + "." if name.endswith(TEMP_SUFFIX) else None


def is_temp_for(candidate: Path, path: Path) -> bool:
    """Whether ``candidate`` is a temporary file left by an interrupted write of ``path`` (its exact prefix: a
    temp of ``a.wav`` is not one of ``a``)."""
    return candidate.parent == path.parent and _temp_name_prefix(candidate.name) == temp_prefix(path)


def remove_temp_files(folder: Path, names: set[str]) -> int:
    """Delete the temp files that interrupted atomic writes of ``folder/<name>`` left (any of ``names``).

    Only names :mod:`audiosep.io` really gives a temp file of one of our outputs are removed
    (``.<name>.<random>.tmp``, see :func:`is_temp_for`); anything else in the folder is left alone. Returns how
    many went.
    """
    removed = 0
    if not folder.is_dir():
        return removed
    prefixes = {temp_prefix(folder / name) for name in names}
    for candidate in folder.glob(f".*{TEMP_SUFFIX}"):
        if _temp_name_prefix(candidate.name) in prefixes and candidate.is_file():
            candidate.unlink()
            removed += 1
    return removed


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[str]]:
    """Yield one temporary path per target; on success rename them all, on error remove them all.

    Temp names end in ``.tmp``, so a writer that picks its format from the suffix must be told
    the format (soundfile: ``format="WAV"``; ``torch.save`` does not care).
    """
    targets = [Path(p) for p in paths]
    temps: list[str] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=TEMP_SUFFIX)
            os.close(fd)
            temps.append(tmp)
        yield temps
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; outputs get the usual permissions
        with stop_signals_deferred():  # all renamed: a SIGTERM between two renames left a pair half old, half new
            for tmp, target in zip(temps, targets, strict=True):
                os.chmod(tmp, mode)
                os.replace(tmp, target)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _umask() -> int:
    """The process umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(temp_path)``, then rename the temp file to ``path``; returns ``Path(path)``.

    An ``OSError`` of the write names ``path``, not the temp file nor nothing (a full disk was reported as
    "No space left on device" alone).
    """
    with atomic_paths([path]) as (tmp,):
        try:
            write(tmp)
        except OSError as err:
            if err.filename in (None, tmp):
                err.filename = str(path)  # the same error (type, errno, message), naming the target
            raise
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, save: Callable[[io.BytesIO], object], fsync: bool = False) -> Path:
    """``save(buffer)`` into memory, then write the bytes to ``path`` atomically (``fsync``: on disk before the
    rename, for files a crash must not leave empty).

    Why: ``torch.save`` and ``torch.jit.save`` on a full disk raise a ``RuntimeError`` with a C++ trace, or
    abort the process (``jit.save``: a C++ exception in a destructor), leaving their temp file; written
    from Python, a full disk is an ``OSError`` naming ``path``.
    """
    buffer = io.BytesIO()
    save(buffer)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())

    return atomic_write(path, write)


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``; None where it is missing, unreadable, not UTF-8 or not JSON.

    For the records that name a run (resume checks): a damaged one is no proof of anything.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes read in 1 MiB blocks (identifies a checkpoint, recipe or
    manifest regardless of its name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_digest(package_dir: Path | None = None) -> str:
    """SHA-256 of a package's Python sources (audiosep's by default; relative names and contents, sorted): an
    edit between an interrupted run and its rerun changes the figures as much as a new version, and an
    editable install keeps its version number through every edit."""
    package_dir = Path(__file__).parent if package_dir is None else package_dir
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


LOCK_FILE = ".audiosep.lock"


def _make_folder(folder: Path, option: str) -> None:
    """Create ``folder`` (and its parents); a file in its place, or a path that cannot be made, is a UserError."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; pass another {option}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a dangling link, a file further up
        raise UserError(f"{folder}: cannot make this folder ({err.strerror or err}); pass another {option}") from err


def _try_flock(target: Any, folder: Path) -> bool:
    """Take ``target``'s exclusive ``flock`` without waiting: True; False, with a warning, on a file system without
    flock (some network and FUSE mounts). Raises ``BlockingIOError`` while another process holds it."""
    try:
        fcntl.flock(target, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as err:
        warnings.warn(f"{folder}: cannot be locked ({err.strerror or err}); do not run two commands on it at once",
                      stacklevel=4)  # fmt: skip
        return False
    return True


def folders_to_make(path: Path) -> list[Path]:
    """The folders on ``path`` that do not exist yet, deepest first, up to its first ``..``.

    Why stop there: past ``new/..`` a name means another folder once ``new`` exists (``new/../x`` is the
    user's ``x``), and it would be removed as one made by this run.
    """
    missing = []
    for depth in range(1, len(path.parts) + 1):
        prefix = Path(*path.parts[:depth])
        if ".." in prefix.parts:
            break
        if not os.path.lexists(prefix):
            missing.append(prefix)
    return missing[::-1]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first, as :func:`folders_to_make` lists them) that is still empty:
    what a command made for its output and then wrote nothing in."""
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


@contextmanager
def directory_lock(folder: Path, option: str) -> Iterator[None]:
    """:func:`folder_lock` that leaves no file behind: the lock is on the folder itself (Linux, macOS).

    For folders that hold the user's own files (``audiosep infer``'s output folder may be the input folder).

    Raises:
        UserError: ``folder`` cannot be made (a dangling link, a file on its path), or another process holds the lock.
    """
    _make_folder(folder, option)
    if fcntl is None:
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            locked = _try_flock(descriptor, folder)
        except BlockingIOError:
            raise UserError(f"{folder}: in use by another running audiosep command; wait for it or pass another "
                            f"{option}") from None  # fmt: skip
        try:
            yield
        finally:
            if locked:  # explicitly: a forked worker may still hold a copy of the descriptor
                fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@contextmanager
def folder_lock(folder: Path, option: str) -> Iterator[None]:
    """Create ``folder`` if needed and hold an exclusive lock on it while the block runs.

    Why: two runs on one output folder (a job resubmitted while the first still runs) would both
    append the same results. The lock is the kernel's (``flock``): a killed run never leaves a stale
    one. Where ``fcntl`` is missing (Windows) nothing is locked.

    Raises:
        UserError: ``folder`` is a file, or another process holds the lock (``option`` names the flag).
    """
    _make_folder(folder, option)
    if fcntl is None:
        yield
        return
    with (folder / LOCK_FILE).open("a+") as handle:
        try:
            locked = _try_flock(handle, folder)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"{folder}: in use by a running audiosep command ({holder}); wait for it or "
                            f"pass another {option}") from None  # fmt: skip
        if locked:
            handle.truncate(0)
            handle.write(f"pid {os.getpid()}")
            handle.flush()
        try:
            yield
        finally:
            if locked:  # explicitly: a forked worker may still hold a copy of the file
                fcntl.flock(handle, fcntl.LOCK_UN)


# --subtype of separated files: "auto" follows the input's precision (output_subtype)
OUTPUT_SUBTYPES = ("auto", "PCM_16", "PCM_24", "FLOAT")
WIDE_INTEGER_SUBTYPES = frozenset({"PCM_24", "PCM_32", "ALAC_20", "ALAC_24", "ALAC_32", "DWVW_24"})  # > 16 bits


def check_output_subtype(requested: str) -> None:
    """Raise ``ValueError`` unless ``requested`` is one of :data:`OUTPUT_SUBTYPES`."""
    if requested not in OUTPUT_SUBTYPES:
        raise ValueError(f"unknown output subtype {requested!r}; choose one of {', '.join(OUTPUT_SUBTYPES)}")


def output_subtype(input_subtype: str, requested: str = "auto") -> str:
    """The WAV subtype of the sources separated from a file of ``input_subtype`` (soundfile's name).

    ``requested`` unless it is ``"auto"``; then float inputs give ``FLOAT`` and integer ones of more than
    16 bits (PCM, ALAC, DWVW) ``PCM_24``: a quiet 24-bit or float recording written in 16 bits would lose its
    low bits (a signal at -60 dBFS RMS is only 41 dB above 16-bit rounding). Anything else (16 or 8 bits,
    lossy or ADPCM codecs, whose names count kbit/s, not bits) gives ``PCM_16``.

    Raises:
        ValueError: ``requested`` is not one of :data:`OUTPUT_SUBTYPES`.
    """
    check_output_subtype(requested)
    if requested != "auto":
        return requested
    if input_subtype in ("FLOAT", "DOUBLE"):
        return "FLOAT"
    return "PCM_24" if input_subtype in WIDE_INTEGER_SUBTYPES else "PCM_16"


def input_output_subtype(path: str | os.PathLike, requested: str = "auto") -> str:
    """:func:`output_subtype` for the file at ``path``, from its header (``PCM_16`` where that is unreadable:
    the file is refused when it is read)."""
    import soundfile as sf

    try:
        subtype = sf.info(soundfile_name(path)).subtype
    except (RuntimeError, TypeError, ValueError, OSError):  # LibsndfileError is a RuntimeError
        subtype = "PCM_16"
    return output_subtype(subtype, requested)


def soundfile_name(path: str | os.PathLike) -> str | bytes:
    """``path`` as soundfile should get it: bytes on POSIX, where a name need not be UTF-8 (a Latin-1 name on
    Linux, which soundfile's own UTF-8 encoding refuses); text elsewhere (Windows opens text by wide characters)."""
    return os.fsencode(path) if os.name == "posix" else os.fspath(path)
