"""2,000 mutated inputs per reader (seeded): each reads, or is refused with a MedsightError, within
a few seconds. ``scripts/fuzz.sh`` runs the long, coverage-guided search (100,000 per reader);
inputs it found are replayed from ``tests/fuzz/regressions/<target>/``."""

from __future__ import annotations

import logging
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz.targets import TARGETS, CrashError, mutate, run_one

SMOKE_INPUTS = 2000
HANG_SECONDS = 10  # a generous bound for CI's busy machines; the long run holds inputs to 2 s
REGRESSIONS = Path(__file__).parent / "regressions"


class _HangError(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _HangError


def _feed(target_name: str, inputs: list[bytes]) -> Counter:
    target = TARGETS[target_name]
    outcomes: Counter = Counter()
    failures: list[str] = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    logging.disable(logging.WARNING)  # readers warn about every skipped file; thousands here
    try:
        for i, data in enumerate(inputs):
            signal.alarm(HANG_SECONDS)
            try:
                outcomes[run_one(target, data)] += 1
            except CrashError as exc:
                failures.append(f"input {i}: {exc}")
            except _HangError:
                failures.append(f"input {i}: still reading after {HANG_SECONDS} s")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
        logging.disable(logging.NOTSET)
    assert not failures, f"{len(failures)} of {len(inputs)} inputs broke {target_name}: " + "; ".join(failures[:5])
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS))
def test_mutated_inputs_read_or_are_refused(name):
    seeds = TARGETS[name].seeds()
    rng = np.random.default_rng(sum(map(ord, name)))
    inputs = [mutate(seeds[i % len(seeds)], rng) for i in range(SMOKE_INPUTS)]
    outcomes = _feed(name, inputs)
    # the mutations did break files, and the reader said so (a series skips the broken file instead)
    assert outcomes["refused"] > 0 or name == "dicom-series"
    assert outcomes["ok"] > 0 or name == "nifti-gz"  # and some still read (gzip's CRC catches nearly all)


@pytest.mark.parametrize("name", sorted(p.name for p in REGRESSIONS.iterdir() if p.is_dir()) or ["(none)"])
def test_inputs_found_by_the_long_fuzzing_stay_fixed(name):
    if name == "(none)":
        pytest.skip("no regression inputs kept yet")
    _feed(name, [p.read_bytes() for p in sorted((REGRESSIONS / name).iterdir()) if p.is_file()])
