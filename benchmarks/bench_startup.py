"""How long the ``medsight`` command takes before it does anything, against a bare interpreter.

Runs ``medsight --help``, ``medsight --version``, ``medsight info`` on a 64x64 PNG and on a
DICOM file (pydicom's ``CT_small.dcm``), each as a fresh process, alternating with
``python -c pass`` (the interpreter's own start-up) and ``python -c "import torch"`` (what
every command used to pay). Prints the median wall time, peak memory, the ratio to the
targets (``--help`` < 0.5 s, ``info`` < 1.5 s on 2 cores), the CPU class, and the slowest
imports of ``medsight.cli.main`` from ``python -X importtime``.

    python benchmarks/bench_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"--help": 0.5, "--version": 0.5, "info PNG": 1.5, "info DICOM": 1.5}


_MAKE_INPUTS = """
import sys
import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file
Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(sys.argv[1])
print(get_testdata_file("CT_small.dcm"))
"""


def cpu_class() -> str:
    """The CPU's instruction-set class: AMX, AVX-512 BF16, AVX-512, AVX2 or older."""
    flags = set(re.findall(r"\w+", Path("/proc/cpuinfo").read_text())) if Path("/proc/cpuinfo").exists() else set()
    for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return name
    return "pre-AVX2 or unknown"


def _run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one fresh process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {child.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def _importtime(top: int) -> list[tuple[float, str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import medsight.cli.main"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]) / 1e6, parts[2].rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    medsight = [sys.executable, "-m", "medsight"]
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "small.png"
        # inputs are made in a child: this process stays small, since a child's peak memory
        # (ru_maxrss) starts from its parent's size at fork
        dicom = subprocess.run(
            [sys.executable, "-c", _MAKE_INPUTS, str(png)], capture_output=True, text=True, check=True
        )
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "--help": [*medsight, "--help"],
            "--version": [*medsight, "--version"],
            "info PNG": [*medsight, "info", str(png)],
            "info DICOM": [*medsight, "info", dicom.stdout.strip()],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        peaks: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # alternate, so a busy moment hits every command alike
            for name, command in commands.items():
                elapsed, peak = _run(command)
                times[name].append(elapsed)
                peaks[name].append(peak)
    print(f"CPU class: {cpu_class()}; {args.repeats} alternating runs each, median wall time")
    print(f"{'command':28s} {'median s':>9s} {'peak MB':>8s} {'target s':>9s} {'target/median':>14s}")
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGETS.get(name)
        ratio = f"{target / median:13.2f}x" if target else ""
        print(f"{name:28s} {median:9.3f} {max(peaks[name]):8.0f} {target or '':>9} {ratio:>14s}")
    print("\nslowest imports of medsight.cli.main (cumulative s, python -X importtime):")
    for seconds, module in _importtime(12):
        print(f"  {seconds:7.3f}  {module}")


if __name__ == "__main__":
    main()
