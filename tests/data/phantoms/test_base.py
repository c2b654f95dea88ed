from __future__ import annotations

import threading

import numpy as np

from medsight.data.phantoms.base import case_rng, run_cases


def _draw(index: int) -> float:
    return float(case_rng(11, index).random())


def test_cases_do_not_depend_on_workers_or_order():
    seen = []
    serial = list(run_cases(_draw, 6, workers=1, progress=lambda *a: seen.append(a), stage="s"))
    parallel = list(run_cases(_draw, 6, workers=2, progress=None, stage="p"))
    assert serial == parallel == [_draw(i) for i in range(6)]
    assert seen[-1] == ("s", 6, 6)
    assert case_rng(1, 2).random() != case_rng(1, 2, stream=1).random()


def test_with_threads_running_cases_are_made_in_process():
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert list(run_cases(_draw, 3, workers=2, progress=None, stage="t")) == [_draw(i) for i in range(3)]
    finally:
        stop.set()
        worker.join()
    assert np.isfinite(_draw(0))
