"""One parallel map with a progress bar, for corpus preparation and dataset caches.

Why ``concurrent.futures.ProcessPoolExecutor`` and not ``multiprocessing.Pool``: a Pool worker killed
where it waits for a task (SIGTERM to the process group from ``scancel``/systemd, the out-of-memory
killer) dies holding the task queue's lock; the Pool respawns it, its ``imap`` waits for ever for the
lost task, and ``Pool.terminate`` waits for ever for that lock. The executor fails every pending task
when a worker dies; for a worker killed halfway through sending its result, which the executor's
reader would wait on for ever, the map checks its workers itself (:data:`WATCH_S`).
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from functools import partial
from itertools import islice
from typing import TypeVar

from tqdm import tqdm

from audiosep.errors import UserError
from audiosep.io import STOP_SIGNALS, stop_signals_deferred

T = TypeVar("T")
R = TypeVar("R")

# Items per task: a task costs the executor about 0.1 ms of its threads' time, more than a small item
# (a file header: 20 000 of them took 3.3 s on 2 workers at 4 a task, 1.7 s at 16, a Pool's time).
CHUNK = 16
CHUNKS_PER_WORKER = 2  # tasks queued per worker: it never waits for the next, and items are read lazily
WATCH_S = 1.0  # while no task finishes, the workers are checked this often for one that died
WINDOWS_MAX_WORKERS = 61  # what ProcessPoolExecutor accepts on Windows


def imap_with_progress(
    func: Callable[[T], R], items: Iterable[T], total: int, workers: int, desc: str, unit: str = "file"
) -> Iterator[R]:
    """Yield ``func(item)`` for every item, unordered, from ``workers`` processes, with a progress bar.

    One worker runs in this process (no pool), which keeps tracebacks and monkeypatching simple.
    """
    bar = tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True)
    try:
        results = map(func, items) if workers <= 1 else imap_unordered(func, items, workers)
        for result in results:
            yield result
            bar.update()
    finally:
        bar.close()


def imap_unordered(func: Callable[[T], R], items: Iterable[T], workers: int, chunk: int = CHUNK) -> Iterator[R]:
    """Yield ``func(item)`` for every item, in the order they finish, from ``workers`` processes (forked
    where the platform can), ``chunk`` items a task (1 where an item is a long job).

    A worker's exception is raised here; a worker that died (killed by a signal) raises a one-line
    :class:`UserError`. Ctrl-C, SIGTERM, an error or an abandoned generator kill the workers at once.
    """
    tasks = iter(partial(_take, iter(items), chunk), [])
    with worker_executor(workers) as executor:
        running: set[Future[list[R]]] = set()
        while True:
            for task in islice(tasks, workers * CHUNKS_PER_WORKER - len(running)):
                running.add(executor.submit(_apply, func, task))
            if not running:
                return
            done, running = wait(running, timeout=WATCH_S, return_when=FIRST_COMPLETED)
            if not done and _a_worker_died(executor):
                raise BrokenProcessPool("a worker process ended while the map ran")
            for future in done:
                yield from future.result()


@contextmanager
def worker_executor(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A started ``ProcessPoolExecutor`` of ``workers`` processes (forked where the platform can) whose
    workers leave Ctrl-C to this process and die on SIGTERM; its workers are killed on any error, Ctrl-C or
    abandoned generator, and left to finish their tasks at a normal end. A dead worker is a
    :class:`UserError`.

    Why the signals are held while it starts: a worker runs with this process's handlers from its fork
    until :func:`default_worker_signals` (the command's raise ``Interrupted``/``Terminated``), and a signal
    taken then, or by this process before the executor is returned, left the build waiting for ever; held,
    it is taken once the executor exists and its workers can be killed.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    workers = min(workers, WINDOWS_MAX_WORKERS) if sys.platform == "win32" else workers
    executor = None
    try:
        with stop_signals_deferred():  # a signal that came meanwhile is raised on leaving, executor assigned
            executor = ProcessPoolExecutor(workers, multiprocessing.get_context(method),
                                           initializer=default_worker_signals)
            executor.submit(int).result()  # forks every worker now (fork) or one at least (spawn)
        yield executor
    except BaseException as err:
        if executor is not None:
            _kill_workers(executor)
            executor.shutdown(wait=True, cancel_futures=True)
        if isinstance(err, BrokenProcessPool):
            raise UserError(_broken_message(err, workers)) from err
        raise
    else:
        executor.shutdown(wait=True)


def default_worker_signals() -> None:
    """Workers: SIGTERM ends them even if the parent (e.g. Lightning) installed a handler
    before forking; Ctrl-C is left to the parent, which then kills the workers."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # POSIX
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held by worker_executor while it forked us


def _broken_message(err: BrokenProcessPool, workers: int) -> str:
    """One line for a broken executor: a worker died, or its result could not be read back (the cause,
    a traceback from the executor, ends with what went wrong)."""
    cause = str(err.__cause__ or "").replace("'''", "").strip().splitlines()  # a traceback quoted in '''
    detail = f" ({cause[-1].strip()})" if cause else ""
    return (f"a worker process died (killed by a signal; out of memory?) or its result could not be read "
            f"back{detail}, with {workers} workers: rerun, with fewer workers if memory is short")


def _a_worker_died(executor: ProcessPoolExecutor) -> bool:
    """Whether a worker process has exited while the executor is running (they only exit at shutdown)."""
    return any(process.exitcode is not None for process in list(_processes(executor)))


def _kill_workers(executor: ProcessPoolExecutor) -> None:
    """Kill every worker now, then close this process's end of the result pipe.

    Why the pipe: a worker killed halfway through sending a result leaves the executor's reader thread
    waiting for the rest, and ``shutdown`` waits on that thread; with every writing end closed it reads
    the end of the pipe instead. Why not ``shutdown`` alone: it waits for the running tasks (minutes).
    Python 3.14's ``ProcessPoolExecutor.kill_workers`` does the first half; 3.11 lacks it.
    """
    for process in list(_processes(executor)):
        process.kill()
    result_queue = getattr(executor, "_result_queue", None)
    writer = getattr(result_queue, "_writer", None)
    if writer is not None:
        writer.close()


def _processes(executor: ProcessPoolExecutor) -> Iterable[multiprocessing.process.BaseProcess]:
    """The executor's worker processes (a private attribute of CPython's executor; none if it changes)."""
    return (getattr(executor, "_processes", None) or {}).values()


def _take(items: Iterator[T], count: int) -> list[T]:
    """The next ``count`` items (fewer at the end, none once exhausted)."""
    return list(islice(items, count))


def _apply(func: Callable[[T], R], task: list[T]) -> list[R]:
    """``func`` of every item of one task (runs in a worker)."""
    return [func(item) for item in task]
