"""Long fuzzing of one reader with atheris (coverage-guided libFuzzer), as ``scripts/fuzz.sh`` runs it.

    python -m tests.fuzz.run TARGET [-runs=100000] [libFuzzer options]

Seeds are written to ``fuzz-out/TARGET/seeds``; inputs that crash (anything but a MedsightError),
hang (``-timeout``, 2 s) or grow the process past ``-rss_limit_mb`` are kept by libFuzzer in
``fuzz-out/TARGET/`` (``crash-*``, ``timeout-*``, ``oom-*``). Copy a kept input into
``tests/fuzz/regressions/TARGET/`` once it is fixed: the CI smoke test replays that folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tests.fuzz.targets import TARGETS, run_one


def main() -> None:
    import atheris

    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    logging.disable(logging.CRITICAL)  # readers log skipped files; libFuzzer's own output is enough
    out = Path("fuzz-out") / target.name
    seeds = out / "seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(target.seeds()):
        (seeds / f"seed-{i}{target.suffix}").write_bytes(data)
    corpus = out / "corpus"
    corpus.mkdir(exist_ok=True)

    for data in target.seeds():  # imports everything the reader uses ...
        run_one(target, data)
    atheris.instrument_all()  # ... so that coverage guides the search through all of it

    def one(data: bytes) -> None:
        run_one(target, data)  # raises CrashError for anything but a MedsightError

    args = [sys.argv[0], *sys.argv[2:], f"-artifact_prefix={out}/", str(corpus), str(seeds)]
    atheris.Setup(args, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
