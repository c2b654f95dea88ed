"""Temperature scaling kept with a run: ``medsight evaluate RUN --temperature`` fits a temperature per
probability on the validation split (Guo et al. 2017) and writes ``temperatures.json``; prediction on
new images applies it. Scaling never changes the order of the cases (AUC) or the most probable
class, only how far the probabilities stand from 0.5.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsight.core.errors import InputError
from medsight.io.atomic import atomic_file
from medsight.metrics.calibration import apply_temperature

__all__ = ["TEMPERATURE_FILE", "apply_temperatures", "load_temperatures", "save_temperatures"]

log = logging.getLogger(__name__)

TEMPERATURE_FILE = "temperatures.json"


def save_temperatures(run_dir: Path, fitted: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Keep the fitted temperatures in the run (``None``: remove any, so that prediction matches an
    evaluation made without scaling)."""
    target = Path(run_dir) / TEMPERATURE_FILE
    if not fitted:
        target.unlink(missing_ok=True)
        return
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps({"temperatures": dict(fitted)}, indent=2))


def load_temperatures(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The run's fitted temperatures by probability name (``{}`` when it has none).

    Raises:
        InputError: the file is unreadable (named, with the fix).
    """
    source = Path(run_dir) / TEMPERATURE_FILE
    if not source.is_file():
        return {}
    try:
        found = json.loads(source.read_text())["temperatures"]
        return {str(k): {"columns": list(v["columns"]), "softmax": bool(v["softmax"]),
                         "temperature": float(v["temperature"])} for k, v in found.items()}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{source} is unreadable ({exc}); run `medsight evaluate {run_dir} --temperature` again "
                         "or delete it") from exc  # fmt: skip


def apply_temperatures(scores: pd.DataFrame, temperatures: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``scores`` with each fitted group's columns temperature-scaled (groups whose columns are absent
    are left alone)."""
    out = scores.copy()
    for name, group in temperatures.items():
        columns = list(group["columns"])
        if not set(columns) <= set(out.columns):
            log.debug("temperature %s: columns %s not in these scores", name, columns)
            continue
        values = out[columns].to_numpy(np.float64)
        scaled = apply_temperature(values if group["softmax"] else values[:, 0], float(group["temperature"]),
                                   softmax=bool(group["softmax"]))  # fmt: skip
        out[columns] = scaled if group["softmax"] else scaled[:, None]
    return out
