"""The worker map of corpus preparation: results, errors, and no hang when workers die or a stop comes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recipe_args import REPO, subprocess_env

from audiosep.data.parallel import imap_unordered, imap_with_progress
from audiosep.errors import UserError

HANG_LIMIT_S = 60  # a script that hangs is killed and the test fails


def _square_or_fail(value: int) -> int:
    if value == 13:
        raise ValueError("item 13 is bad")
    return value * value


def _slow_unless_first(value: int) -> int:
    time.sleep(0 if value == 0 else 30)
    return value


@pytest.mark.parametrize("count, chunk", [(0, 4), (1, 4), (23, 4), (23, 1)])
def test_results_equal_a_serial_map_for_any_count_and_chunk(count: int, chunk: int) -> None:
    values = range(-count // 2, count - count // 2)
    assert sorted(imap_unordered(abs, values, 2, chunk=chunk)) == sorted(map(abs, values))
    assert sorted(imap_with_progress(abs, values, count, 2, "test")) == sorted(map(abs, values))


def test_a_worker_error_is_raised_here_and_no_worker_is_left() -> None:
    with pytest.raises(ValueError, match="item 13 is bad"):
        list(imap_unordered(_square_or_fail, range(40), 2))
    assert multiprocessing.active_children() == []


def test_an_abandoned_map_kills_its_workers_instead_of_waiting_for_their_tasks() -> None:
    results = imap_unordered(_slow_unless_first, range(10), 2, chunk=1)
    assert next(results) == 0
    start = time.monotonic()
    results.close()  # the caller stopped reading (an error of its own, a break)
    assert time.monotonic() - start < 20, "waited for the 30 s tasks"
    assert multiprocessing.active_children() == []


KILLED_WHILE_WORKING = """
import os, signal, sys, time
import audiosep.errors as errors
from audiosep.data.parallel import imap_with_progress

def slow_pid(value):
    time.sleep(0.05)
    return os.getpid()

if __name__ == "__main__":
    results = imap_with_progress(slow_pid, range(400), 400, 2, "test")
    os.kill(next(results), signal.SIGKILL)  # what the out-of-memory killer does to one worker
    try:
        list(results)
    except errors.UserError as err:
        print(err)
        sys.exit(3)
"""

KILLED_WHILE_IDLE_THEN_INTERRUPTED = """
import multiprocessing, os, signal, sys, time
from audiosep.data.parallel import imap_with_progress

def items():
    yield from range(2)
    time.sleep(1.0)  # the workers are idle (nothing submitted yet), one of them waiting on the task queue
    for worker in multiprocessing.active_children():
        os.kill(worker.pid, signal.SIGKILL)  # what a SIGTERM to the process group does to them
    time.sleep(0.2)
    raise KeyboardInterrupt  # and to the parent, whose handler raises

if __name__ == "__main__":
    try:
        list(imap_with_progress(abs, items(), 3, 2, "test"))
    except KeyboardInterrupt:
        sys.exit(4)
"""


KILLED_WHILE_SENDING = """
import os, signal, sys
import multiprocessing.connection as connection
import audiosep.errors as errors
from audiosep.data.parallel import imap_unordered

def big_result(value):
    if value == 1:  # this worker dies halfway through sending its result, as the out-of-memory killer may do
        send = connection.Connection._send
        def half_then_die(self, buf, write=os.write):
            if len(buf) > 100_000:
                send(self, bytes(buf[: len(buf) // 2]))
                os.kill(os.getpid(), signal.SIGKILL)
            return send(self, buf)
        connection.Connection._send = half_then_die
    return b"x" * 1_000_000  # more than a pipe holds: the reader waits for the rest

if __name__ == "__main__":
    try:
        list(imap_unordered(big_result, range(4), 2, chunk=1))
    except errors.UserError as err:
        print(err)
        sys.exit(3)
"""


def _run_script(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "script.py").write_text(script, encoding="utf-8")
    try:
        return subprocess.run([sys.executable, str(tmp_path / "script.py")], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=HANG_LIMIT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise AssertionError("the map hung") from None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX signals")
def test_a_worker_killed_while_working_ends_the_map_with_one_line(tmp_path: Path) -> None:
    """A multiprocessing.Pool respawned the worker and waited for ever for its lost task."""
    run = _run_script(tmp_path, KILLED_WHILE_WORKING)
    assert run.returncode == 3, run.stderr[-2000:]
    assert "a worker process died" in run.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX signals")
def test_workers_killed_while_idle_then_a_stop_ends_the_map(tmp_path: Path) -> None:
    """A Pool worker killed while waiting for a task held the queue's lock, and ``Pool.terminate`` waited
    for ever to take it: the flaky hang of SIGTERM to the process group (Slurm's scancel, systemd)."""
    run = _run_script(tmp_path, KILLED_WHILE_IDLE_THEN_INTERRUPTED)
    assert run.returncode == 4, run.stderr[-2000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX signals")
def test_a_worker_killed_while_sending_its_result_ends_the_map_with_one_line(tmp_path: Path) -> None:
    """The executor's reader waited for ever for the rest of the message, and ``shutdown`` on the reader
    (review of the executor change)."""
    run = _run_script(tmp_path, KILLED_WHILE_SENDING)
    assert run.returncode == 3, run.stderr[-2000:]
    assert "a worker process died" in run.stdout


class _Unreadable(Exception):
    """An exception pickle cannot rebuild (its ``__init__`` takes two arguments, ``args`` holds one)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


def _raise_unreadable(value: int) -> int:
    raise _Unreadable("utt0.flac", "truncated")


def test_a_result_that_cannot_be_read_back_says_so_with_its_cause() -> None:
    with pytest.raises(UserError, match=r"could not be read back \(.*TypeError.*\)"):
        list(imap_unordered(_raise_unreadable, range(3), 2))
    assert multiprocessing.active_children() == []
