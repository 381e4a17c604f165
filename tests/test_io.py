"""The one atomic writer: whole or nothing, no temp left, usual permissions."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from audiosep.errors import UserError
from audiosep.io import atomic_paths, atomic_write_text, folder_lock, is_temp_for


def test_written_file_has_the_umask_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "out.txt", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failure_leaves_neither_output_nor_temp(tmp_path: Path) -> None:
    targets = [tmp_path / "x.wav", tmp_path / "y.wav"]
    with pytest.raises(RuntimeError), atomic_paths(targets) as temps:
        Path(temps[0]).write_text("partial")
        assert all(is_temp_for(Path(t), p) for t, p in zip(temps, targets, strict=True))
        assert not is_temp_for(Path(temps[0]), tmp_path / "x")  # ".x.wav.<random>.tmp" is x.wav's, not x's
        raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []


def test_read_json_gives_none_for_anything_but_a_readable_json_file(tmp_path: Path) -> None:
    from audiosep.io import read_json

    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    (tmp_path / "torn.json").write_text('{"a": [1')
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe{}")
    (tmp_path / "folder.json").mkdir()
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    assert [read_json(tmp_path / name) for name in ("torn.json", "binary.json", "folder.json", "missing.json")] == [
        None, None, None, None,
    ]


def test_folder_lock_keeps_a_second_holder_out_until_released(tmp_path: Path) -> None:
    """The kernel's lock: a second holder (here another open file, as another process would be) is refused
    while the first holds it, and gets it once released; a file in the folder's place is refused."""
    folder = tmp_path / "new" / "out"
    with folder_lock(folder, "--out-dir"):
        assert folder.is_dir()
        with pytest.raises(UserError, match=r"out: in use by a running audiosep command \(pid \d+\); .* --out-dir"):
            with folder_lock(folder, "--out-dir"):
                pass
    with folder_lock(folder, "--out-dir"):
        pass
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"afile: exists and is not a folder; pass another --out"):
        with folder_lock(tmp_path / "afile", "--out"):
            pass


def test_folder_lock_runs_unlocked_with_a_warning_where_the_file_system_has_no_flock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network and FUSE mounts answer flock with ENOSYS: the commands stopped there with a traceback."""
    import errno

    import audiosep.io as io

    def no_flock(handle: object, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(io.fcntl, "flock", no_flock)
    with pytest.warns(UserWarning, match=r"out: cannot be locked \(Function not implemented\)"):
        with folder_lock(tmp_path / "out", "--out-dir"):
            ran = True
    assert ran


@pytest.mark.parametrize("to", ["process", "other_thread"])
def test_a_signal_between_two_renames_waits_until_all_are_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, to: str
) -> None:
    """SIGTERM right after the first output was renamed (``infer --overwrite``) left the pair half new, half old
    (reviewer): the renames run with the stop signals held, and the signal is taken after them. ``other_thread``:
    a signal to the process goes to any thread that does not block it (torch's OpenMP threads), and Python runs
    its handler in the main thread at once: the mask alone left the pair half new (CI, flaky)."""
    import threading

    import audiosep.io as io

    if to == "other_thread" and not hasattr(signal, "pthread_kill"):
        pytest.skip("POSIX threads")

    class Stopped(Exception):
        pass

    def stop(signum: int, frame: object) -> None:
        raise Stopped

    targets = [tmp_path / "a_s1.wav", tmp_path / "a_s2.wav"]
    for target in targets:
        target.write_text("old")
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)  # started before the block: no mask
    other.start()
    replace, renamed = os.replace, []

    def replace_then_signal(source: str, target: Path) -> None:
        replace(source, target)
        renamed.append(target)
        if len(renamed) == 1 and to == "process":
            os.kill(os.getpid(), signal.SIGTERM)
        elif len(renamed) == 1:
            signal.pthread_kill(other.ident, signal.SIGTERM)  # as the kernel may pick that thread
            time.sleep(0.05)  # the main thread's next bytecodes would run the handler

    monkeypatch.setattr(io.os, "replace", replace_then_signal)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped), io.atomic_paths(targets) as temps:
            for temp in temps:
                Path(temp).write_text("new")
    finally:
        signal.signal(signal.SIGTERM, previous)
        release.set()
    assert [target.read_text() for target in targets] == ["new", "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_s1.wav", "a_s2.wav"]  # no temp file left


@pytest.mark.parametrize("length", [200, 241, 242, 255])
def test_an_output_with_a_name_near_the_file_system_limit_is_written_and_its_leftovers_removed(
    tmp_path: Path, length: int
) -> None:
    """Temp names were the output's name plus 14 bytes: outputs of 242-255 bytes failed with "File name too
    long" although their own names were legal (reviewer); such temps now hold a hash of the name."""
    import tempfile

    from audiosep.io import TEMP_SUFFIX, remove_temp_files, temp_prefix

    target = tmp_path / ("é" * ((length - 4) // 2) + "a" * ((length - 4) % 2) + ".wav")
    assert len(os.fsencode(target.name)) == length
    with atomic_paths([target]) as (temp,):
        assert len(os.fsencode(Path(temp).name)) <= 255 and is_temp_for(Path(temp), target)
        Path(temp).write_text("x")
    assert target.read_text() == "x"
    fd, left = tempfile.mkstemp(dir=tmp_path, prefix=temp_prefix(target), suffix=TEMP_SUFFIX)  # a killed run's
    os.close(fd)
    other = tmp_path / f"{temp_prefix(tmp_path / 'other.wav')}abcdefgh{TEMP_SUFFIX}"
    other.write_text("someone else's")
    assert remove_temp_files(tmp_path, {target.name}) == 1
    assert not Path(left).exists() and other.exists() and target.exists()


def test_a_full_disk_is_an_oserror_naming_the_target_and_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    """torch.save on a full disk raised a RuntimeError with a C++ trace and torch.jit.save aborted the process,
    leaving its temp file; atomic_write_text's OSError named no file ("No space left on device") (reviewer)."""
    import errno

    import torch

    from audiosep.checkpoint import atomic_torch_save
    from audiosep.io import atomic_write_text

    def full(self, data):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("audiosep.io.open", full_open, raising=False)  # atomic_write_bytes's writes
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full(self, None))  # atomic_write_text's
    for save, target in ((lambda p: atomic_torch_save({"w": torch.zeros(3)}, p), tmp_path / "m.ckpt"),
                         (lambda p: atomic_write_text(p, "x"), tmp_path / "run.json")):  # fmt: skip
        with pytest.raises(OSError) as raised:
            save(target)
        assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    assert list(tmp_path.iterdir()) == []
