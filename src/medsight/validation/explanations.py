"""The explanations section of the validation report, read from what ``medsight explain`` wrote
(``RUN/explain/explanations.json`` and its overlay PNGs): the report never computes them itself."""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from typing import Any

__all__ = ["EXPLAIN_FOLDER", "explanation_section"]

log = logging.getLogger(__name__)

EXPLAIN_FOLDER = "explain"
"""Where ``medsight explain`` writes by default, inside the run folder."""
_OVERLAYS = 6  # overlays shown on the page


def _ci(block: Any) -> str:
    if not isinstance(block, dict) or block.get("estimate") is None:
        return "-"
    estimate, low, high = (block.get(k) for k in ("estimate", "low", "high"))
    if low is None or high is None or any(math.isnan(float(v)) for v in (low, high)):
        return f"{float(estimate):.3f}"
    return f"{float(estimate):.3f} [{float(low):.3f}, {float(high):.3f}]"


def _randomised(random: dict[str, Any], rho: Any) -> str:
    if not random:
        return "-"
    if not isinstance(rho, (int, float)) or not math.isfinite(rho):
        return "map vanished: changed"
    return f"rank correlation {rho:.2f}: {'changed' if random.get('changed') else 'NOT changed'}"


def _rows(methods: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for method, s in methods.items():
        random = s.get("randomisation") or {}
        rho = random.get("mean_rank_correlation")
        rows.append({
            "method": method,
            "images": str(s.get("images", "-")),
            "faithfulness": _ci(s.get("faithfulness")),
            "deletion / insertion": (f"{s['deletion_auc']:.3f} / {s['insertion_auc']:.3f} (random "
                                     f"{s['deletion_auc_random']:.3f} / {s['insertion_auc_random']:.3f})"
                                     if "deletion_auc" in s else "-"),
            "energy in box": _ci(s.get("energy_in_box")) + (f" (boxes cover {s['box_share']:.3f})"
                                                            if "box_share" in s else ""),
            "pointing game": _ci(s.get("pointing_game")),
            "randomised weights": _randomised(random, rho),
        })  # fmt: skip
    return rows


def explanation_section(run_dir: Path) -> dict[str, Any] | None:
    """Per method the figures of the run's explanations, and a few overlays (images with true boxes
    first) as PNG data URLs; None when the run has not been explained (or its file is unreadable,
    which is logged)."""
    folder = run_dir / EXPLAIN_FOLDER
    path = folder / "explanations.json"
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        methods, images = dict(document["methods"]), list(document["images"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s cannot be read (%s): the report leaves explanations out", path, exc)
        return None
    shown = sorted(images, key=lambda i: not i.get("boxes"))[:_OVERLAYS]
    overlays = []
    for item in shown:
        for method, name in (item.get("overlays") or {}).items():
            png = folder / str(name)
            if png.is_file() and png.parent == folder:
                data = base64.b64encode(png.read_bytes()).decode("ascii")
                overlays.append({"title": f"{Path(str(item['input'])).name}: {method}, {item['target']} "
                                          f"p = {float(item['probability']):.3f}",
                                 "src": f"data:image/png;base64,{data}"})  # fmt: skip
                break  # one method per image
    return {"source": str(path), "rows": _rows(methods), "overlays": overlays}
