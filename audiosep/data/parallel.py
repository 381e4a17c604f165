"""One parallel map with a progress bar, for corpus preparation and dataset caches.

Why ``concurrent.futures.ProcessPoolExecutor`` and not ``multiprocessing.Pool``: a Pool worker killed
where it waits for a task (SIGTERM to the process group from ``scancel``/systemd, the out-of-memory
killer) dies holding the task queue's lock; the Pool respawns it, its ``imap`` waits for ever for the
lost task, and ``Pool.terminate`` waits for ever for that lock. The executor notices a dead worker
and fails every pending task instead.
"""

from __future__ import annotations

import multiprocessing
import signal
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

CHUNK = 4  # items per task: fewer round trips for small items (a file header, a row)
CHUNKS_PER_WORKER = 2  # tasks queued per worker: it never waits for the next, and items are read lazily


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
    """Yield ``func(item)`` for every item, in the order they finish, from ``workers`` forked processes,
    ``chunk`` items a task (1 where an item is a long job).

    A worker's exception is raised here; a worker that died (killed by a signal) raises a one-line
    :class:`UserError`. Ctrl-C, SIGTERM, an error or an abandoned generator kill the workers at once.
    """
    chunks = iter(partial(_take, iter(items), chunk), [])
    with worker_executor(workers) as executor:
        running: set[Future[list[R]]] = set()
        try:
            while True:
                for chunk in islice(chunks, workers * CHUNKS_PER_WORKER - len(running)):
                    running.add(executor.submit(_apply, func, chunk))
                if not running:
                    return
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from future.result()
        except BrokenProcessPool:
            raise UserError(f"a worker process died (killed by a signal; out of memory?) with "
                            f"{workers} workers: rerun, with fewer workers if memory is short") from None


@contextmanager
def worker_executor(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A started ``ProcessPoolExecutor`` of ``workers`` forked processes whose workers leave Ctrl-C to this
    process and die on SIGTERM; its workers are killed on any error, Ctrl-C or abandoned generator, and
    left to finish their tasks at a normal end.

    Why the signals are held while it starts: a worker runs with this process's handlers from its fork
    until :func:`default_worker_signals` (the command's raise ``Interrupted``/``Terminated``), and a signal
    taken then, or by this process before the executor is returned, left the build waiting for ever; held,
    it is taken once the executor exists and its workers can be killed.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    executor = None
    try:
        with stop_signals_deferred():  # a signal that came meanwhile is raised on leaving, executor assigned
            executor = ProcessPoolExecutor(workers, multiprocessing.get_context(method),
                                           initializer=default_worker_signals)
            executor.submit(int).result()  # forks every worker now (fork) or one at least (spawn)
        yield executor
    except BaseException:
        if executor is not None:
            _kill_workers(executor)
            executor.shutdown(wait=True, cancel_futures=True)
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


def _kill_workers(executor: ProcessPoolExecutor) -> None:
    """Kill every worker now (what Python 3.14's ``ProcessPoolExecutor.kill_workers`` does; 3.11 lacks it):
    ``shutdown`` alone waits for the running tasks, which may take minutes."""
    kill = getattr(executor, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.kill()


def _take(items: Iterator[T], count: int) -> list[T]:
    """The next ``count`` items (fewer at the end, none once exhausted)."""
    return list(islice(items, count))


def _apply(func: Callable[[T], R], chunk: list[T]) -> list[R]:
    """``func`` of every item of one task (runs in a worker)."""
    return [func(item) for item in chunk]
