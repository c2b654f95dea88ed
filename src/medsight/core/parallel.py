"""Work split by case over forked worker processes, results in order (:func:`run_cases`)."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from medsight.core.progress import Progress

__all__ = ["default_workers", "run_cases"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies

T = TypeVar("T")


def run_cases(
    make_case: Callable[[Any], T],
    cases: int | Sequence[Any],
    *,
    workers: int,
    progress: Progress | None,
    stage: str,
) -> Iterator[T]:
    """Yield ``make_case(case)`` for every case in order, computed in ``workers`` processes; ``cases``
    is a sequence of them, or a count ``n`` for the cases ``0 .. n-1``.

    The result does not depend on ``workers`` where each case draws from its own random stream
    (e.g. :func:`medsight.data.phantoms.base.case_rng`). ``make_case`` must be picklable (a
    module-level function or a :func:`functools.partial` of one), as must each case, what it
    returns and the errors it raises. ``make_case`` (with what a partial binds) is sent to a worker
    with every case: bind what all cases share and is small, and give each case its own data.
    """
    items: Sequence[Any] = range(cases) if isinstance(cases, int) else cases
    count = len(items)
    # Fork (not spawn): spawn re-imports the caller's __main__, which reruns unguarded
    # scripts in every worker. Forking a process with other threads can deadlock, so then
    # the cases are made one by one instead.
    can_fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    if workers <= 1 or count <= 1 or not can_fork:
        if workers > 1 and count > 1:
            log.info("%s in one process (threads are running, forking is unsafe)", stage)
        for index, case in enumerate(items, start=1):
            yield make_case(case)
            if progress is not None:
                progress(stage, index, count)
        return
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=min(workers, count), mp_context=context, initializer=_forked_worker,
                               initargs=(os.getpid(),))  # fmt: skip
    try:
        for index, result in enumerate(pool.map(make_case, items), start=1):
            yield result
            if progress is not None:
                progress(stage, index, count)
    finally:  # a case that failed (or a caller that stopped early) leaves the other cases unmade
        pool.shutdown(wait=True, cancel_futures=True)


def _forked_worker(parent: int) -> None:
    """Set up a forked worker: it dies with ``parent`` (:func:`_die_with`), and runs PyTorch and ITK
    on one thread. A process that has run PyTorch holds an OpenMP thread pool, which a forked child
    cannot use (its first parallel region hangs forever); on one thread PyTorch runs no parallel
    region, and the workers share the cores."""
    _die_with(parent)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    itk = sys.modules.get("SimpleITK")  # ITK's filters likewise run on the worker's one thread
    if itk is not None:
        itk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _die_with(parent: int) -> None:
    """On Linux, have the kernel kill this worker when ``parent`` (which forked it) dies, however it
    dies: killed with ``kill -9`` it cannot shut its pool down, and its workers would otherwise wait
    for work forever. Elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def default_workers() -> int:
    """Processes for work split by case (3D phantoms, preprocessing volumes): the CPU cores
    available, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
