"""Make, load and override a data set's :class:`~medsight.planning.Plan` (``medsight plan``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from medsight.core.errors import ConfigError
from medsight.core.progress import Progress
from medsight.data.cases import fingerprint_manifest
from medsight.data.manifest import Manifest
from medsight.engine.recipe import apply_overrides, explain
from medsight.io.atomic import atomic_file
from medsight.planning import Plan, make_plan, read_plan

__all__ = ["load_plan", "plan_dataset", "save_plan"]

log = logging.getLogger(__name__)


def _overridden(plan: Plan, overrides: Sequence[str]) -> Plan:
    if not overrides:
        return plan
    data = apply_overrides(plan.model_dump(mode="json"), overrides)
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid plan after --set {' '.join(overrides)}: {explain(exc, Plan)}") from None


def plan_dataset(
    manifest: Manifest,
    *,
    memory_gb: float = 8.0,
    modality: str | None = None,
    base_filters: int = 32,
    out_channels: int | None = None,
    overrides: Sequence[str] = (),
    progress: Progress | None = None,
) -> Plan:
    """Fingerprint a manifest's labelled cases and plan for them within ``memory_gb``.

    ``out_channels`` defaults to one per label value seen plus background. ``overrides``
    (``patch_size=[64,64,64]``, ``network.filters=[16,32,64,128]``...) are applied last and the
    result is validated again.
    """
    found = fingerprint_manifest(manifest, modality=modality, progress=progress)
    channels = out_channels if out_channels is not None else len(found.labels) + 1
    plan = make_plan(found, out_channels=channels, memory_gb=memory_gb, base_filters=base_filters)
    plan = _overridden(plan, overrides)
    log.info(
        "plan: spacing %s mm, patch %s, batch %d, %d levels, ~%.1f GB",
        plan.spacing, plan.patch_size, plan.batch_size, len(plan.network.filters), plan.estimated_memory_gb,
    )  # fmt: skip
    return plan


def save_plan(plan: Plan, path: str | os.PathLike[str]) -> Path:
    """Write ``plan.json`` atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(plan.model_dump_json(indent=2))
    return path


def load_plan(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Plan:
    """Read a ``plan.json`` and apply ``key=value`` overrides.

    Raises:
        InputError: the file is missing or not JSON.
        ConfigError: it is not a valid plan of this version (the keys at fault are named).
    """
    return _overridden(read_plan(path), overrides)
