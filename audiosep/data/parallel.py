"""One parallel map with a progress bar, for corpus preparation and dataset caches."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

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
        pool = multiprocessing.get_context(method).Pool(workers, initializer=default_worker_signals)
        try:
            for result in pool.imap_unordered(func, items, chunksize=4):
                yield result
                bar.update()
        except BaseException:  # an error, Ctrl-C or an abandoned generator: stop the workers
            pool.terminate()
            raise
        else:
            pool.close()  # normal end: workers exit on their own
        finally:
            pool.join()
    finally:
        bar.close()


def default_worker_signals() -> None:
    """Pool workers: SIGTERM ends them even if the parent (e.g. Lightning) installed a handler
    before forking; Ctrl-C is left to the parent, which then terminates the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
