from __future__ import annotations

import os
import sys
import threading

import pytest

from medsight.core.parallel import run_cases
from medsight.data.phantoms.base import case_rng


def _draw(index: int) -> float:
    return float(case_rng(11, index).random())


def _made_by(index: int) -> tuple[float, int]:
    """The case's value and the process that made it."""
    return _draw(index), os.getpid()


def test_cases_do_not_depend_on_workers_or_order():
    seen = []
    serial = list(run_cases(_draw, 6, workers=1, progress=lambda *a: seen.append(a), stage="s"))
    parallel = list(run_cases(_draw, 6, workers=2, progress=None, stage="p"))
    assert serial == parallel == [_draw(i) for i in range(6)]
    assert seen[-1] == ("s", 6, 6)
    assert case_rng(1, 2).random() != case_rng(1, 2, stream=1).random()


def test_workers_fork_and_one_worker_stays_in_process():
    forked = list(run_cases(_made_by, 4, workers=2, progress=None, stage="f"))
    assert [v for v, _ in forked] == [_draw(i) for i in range(4)]
    assert all(pid != os.getpid() for _, pid in forked)  # made in worker processes
    alone = list(run_cases(_made_by, 4, workers=1, progress=None, stage="a"))
    assert {pid for _, pid in alone} == {os.getpid()}


def test_with_threads_running_cases_are_made_in_process():
    """Forking a process with other threads can deadlock: then every case is made here."""
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        made = list(run_cases(_made_by, 3, workers=2, progress=None, stage="t"))
    finally:
        stop.set()
        worker.join()
    assert [v for v, _ in made] == [_draw(i) for i in range(3)]
    assert {pid for _, pid in made} == {os.getpid()}


def test_workers_forked_after_pytorch_ran_do_not_hang():
    """A process that has run PyTorch holds an OpenMP pool a forked child cannot use: workers
    whose cases call PyTorch (the 3D phantoms resample with it) hung after any training."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from medsight.core.parallel import run_cases\n"
        "torch.nn.Conv2d(3, 32, 3)(torch.randn(8, 3, 96, 96)).sum().backward()  # the parent's OpenMP pool\n"
        "def case(i):\n"
        "    return float(torch.nn.functional.conv2d(torch.ones(4, 3, 64, 64), torch.ones(8, 3, 3, 3)).sum())\n"
        "print(list(run_cases(case, 4, workers=2, progress=None, stage='t')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([4 * 8 * 62 * 62 * 27.0] * 4)


def _fails_on_two(index: int) -> int:
    if index == 2:
        raise ValueError(f"case {index} is broken")
    return index


def test_a_case_that_fails_in_a_worker_raises_its_error_here():
    made = run_cases(_fails_on_two, 6, workers=2, progress=None, stage="e")
    assert next(made) == 0 and next(made) == 1
    with pytest.raises(ValueError, match="case 2 is broken"):
        next(made)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in fh)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_workers_die_with_a_parent_killed_with_kill_9():
    """A killed parent cannot shut its pool down: its workers must not wait for work forever."""
    import signal
    import subprocess
    import time

    code = (
        "import os, time\n"
        "from medsight.core.parallel import run_cases\n"
        "def case(i):\n"
        "    os.write(1, f'{os.getpid()}\\n'.encode())\n"  # one write: print may write the number and its newline apart
        "    time.sleep(60)\n"
        "list(run_cases(case, 8, workers=2, progress=None, stage='t'))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        workers = {int(parent.stdout.readline()) for _ in range(2)}
        assert parent.pid not in workers and all(_alive(w) for w in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers)
    finally:
        parent.kill()
