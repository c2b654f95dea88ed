"""Which model a study goes to: the first route (in serve.yaml's order) that matches at least one of
its image series takes the series it matches."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from medsight.service.config import Match, Route
from medsight.service.intake import Instance

__all__ = ["Series", "describe", "matches", "route_study"]


@dataclass(frozen=True)
class Series:
    """A received series as routing sees it (the facts of its first instance)."""

    uid: str
    modality: str
    body_part: str
    description: str
    sop_class: str
    instances: int
    has_pixels: bool

    @classmethod
    def of(cls, instances: Sequence[Instance]) -> Series:
        """The series the instances (all of one series) make."""
        first = instances[0]
        return cls(first.series_uid, first.modality, first.body_part, first.series_description, first.sop_class,
                   len(instances), any(i.has_pixels for i in instances))  # fmt: skip


def matches(match: Match, series: Series) -> bool:
    """Whether ``series`` meets every key ``match`` gives (an empty match takes any image series)."""
    if not series.has_pixels:
        return False
    if match.modality and series.modality.upper() not in {m.upper() for m in match.modality}:
        return False
    if match.body_part and series.body_part.upper() not in {b.upper() for b in match.body_part}:
        return False
    if match.sop_class and series.sop_class not in match.sop_class:
        return False
    return match.series_description is None or bool(
        re.search(match.series_description, series.description, re.IGNORECASE)
    )


def route_study(routes: Sequence[Route], series: Sequence[Series]) -> tuple[Route, list[Series]] | None:
    """The first route matching a series of the study, with the series it matches; None if none does."""
    for route in routes:
        taken = [s for s in series if matches(route.match, s)]
        if taken:
            return route, taken
    return None


def describe(series: Sequence[Series]) -> str:
    """A study's series in a few words, for the note of a study no route took."""
    return "; ".join(
        f"{s.modality or '?'} {s.body_part or '-'} {s.description or '(no description)'!r} "
        f"({s.instances} instance(s){'' if s.has_pixels else ', no pixels'})"
        for s in series
    )
