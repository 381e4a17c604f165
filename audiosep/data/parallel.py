"""One parallel map with a progress bar, for corpus preparation and dataset caches."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm import tqdm

from audiosep.io import STOP_SIGNALS, stop_signals_deferred

T = TypeVar("T")
R = TypeVar("R")


def imap_with_progress(
    func: Callable[[T], R], items: Iterable[T], total: int, workers: int, desc: str, unit: str = "file"
) -> Iterator[R]:
    """Yield ``func(item)`` for every item, unordered, from ``workers`` processes, with a progress bar.

    One worker runs in this process (no pool), which keeps tracebacks and monkeypatching simple.
    The pool forks where the platform allows it, so workers start without re-importing torch.
    """
    bar = tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True)
    try:
        if workers <= 1:
            for item in items:
                yield func(item)
                bar.update()
            return
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with worker_pool(multiprocessing.get_context(method), workers) as pool:
            for result in pool.imap_unordered(func, items, chunksize=4):
                yield result
                bar.update()
    finally:
        bar.close()


@contextmanager
def worker_pool(context: Any, workers: int) -> Iterator[Any]:
    """A ``context.Pool`` whose workers leave Ctrl-C to this process and die on SIGTERM; terminated on any
    error, Ctrl-C or abandoned generator, closed and joined at a normal end.

    Why the signals are held while it starts: a worker runs with this process's handlers from its fork
    until :func:`default_worker_signals` (the command's raise ``Interrupted``/``Terminated``), and a signal
    taken then, or by this process before the pool is returned, left the build waiting for ever; held,
    it is taken once the pool exists and can be terminated.
    """
    pool = None
    try:
        with stop_signals_deferred():  # a signal that came meanwhile is raised on leaving, pool assigned
            pool = context.Pool(workers, initializer=default_worker_signals)
        yield pool
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    else:
        pool.close()  # normal end: workers exit on their own
    finally:
        if pool is not None:
            pool.join()


def default_worker_signals() -> None:
    """Pool workers: SIGTERM ends them even if the parent (e.g. Lightning) installed a handler
    before forking; Ctrl-C is left to the parent, which then terminates the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # POSIX
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held by worker_pool while it forked us
