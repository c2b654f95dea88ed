"""`LabelSchema`: what the integer values of a label map mean."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from medsight.core.errors import ConfigError, InputError

__all__ = ["CodedConcept", "LabelClass", "LabelSchema", "class_color"]

# A qualitative palette that stays distinct when overlaid on grey images.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


def class_color(index: int) -> tuple[int, int, int]:
    """The default colour (RGB) of the ``index``-th class (0-based) of a label map."""
    return _PALETTE[index % len(_PALETTE)]


@dataclass(frozen=True)
class CodedConcept:
    """A coded term, as DICOM SEG and SR need (e.g. SCT 108369006 "Neoplasm")."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class LabelClass:
    """One foreground class of a label map."""

    code: int
    name: str
    color: tuple[int, int, int] = (255, 0, 0)
    concept: CodedConcept | None = None


@dataclass(frozen=True)
class LabelSchema:
    """Class names, integer codes, colours and derived regions of a label map.

    ``background`` (default 0) is implicit and not listed in ``classes``. ``regions`` are
    named unions of class codes, such as the BraTS evaluation regions.

    Example:
        >>> brats = LabelSchema(
        ...     classes=(LabelClass(1, "NCR"), LabelClass(2, "ED"), LabelClass(4, "ET")),
        ...     regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
        ... )
        >>> brats.region_mask(np.array([0, 1, 2, 4]), "TC").tolist()
        [False, True, False, True]
    """

    classes: tuple[LabelClass, ...]
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    background: int = 0

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        codes = [c.code for c in classes]
        names = [c.name for c in classes]
        if not classes:
            raise ConfigError("a LabelSchema needs at least one foreground class")
        for label, values in (("codes", [str(c) for c in codes]), ("names", names)):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ConfigError(f"LabelSchema class {label} must be unique; repeated: {dupes}")
        if self.background in codes:
            raise ConfigError(
                f"class code {self.background} is the background code; give foreground classes other codes"
            )
        regions = {str(k): tuple(int(c) for c in v) for k, v in dict(self.regions).items()}
        for region, members in regions.items():
            unknown = sorted(set(members) - set(codes))
            if unknown:
                raise ConfigError(f"region {region!r} uses codes {unknown} that are not classes {codes}")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "regions", MappingProxyType(regions))

    @classmethod
    def from_names(cls, names: Sequence[str], *, background: int = 0) -> LabelSchema:
        """Classes coded 1, 2, ... in the given order, with default colours."""
        start = 1 if background == 0 else 0
        classes = []
        code = start
        for i, name in enumerate(names):
            if code == background:
                code += 1
            classes.append(LabelClass(code, name, class_color(i)))
            code += 1
        return cls(classes=tuple(classes), background=background)

    @property
    def codes(self) -> tuple[int, ...]:
        """Foreground codes in declaration order."""
        return tuple(c.code for c in self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        """Foreground names in declaration order."""
        return tuple(c.name for c in self.classes)

    def code_of(self, name: str) -> int:
        """Integer code of a class name."""
        for c in self.classes:
            if c.name == name:
                return c.code
        raise ConfigError(f"unknown class {name!r}; known classes: {list(self.names)}")

    def name_of(self, code: int) -> str:
        """Class name of an integer code."""
        for c in self.classes:
            if c.code == code:
                return c.name
        raise ConfigError(f"unknown class code {code}; known codes: {list(self.codes)}")

    def validate_mask(self, mask: np.ndarray) -> None:
        """Raise :class:`InputError` if ``mask`` holds values that are not in the schema."""
        values = np.unique(np.asarray(mask))
        allowed = {self.background, *self.codes}
        unknown = [v.item() for v in values if v not in allowed]
        if unknown:
            raise InputError(
                f"label map holds values {unknown[:10]} outside the schema {sorted(allowed)}; "
                "check the label file or the schema's codes"
            )

    def region_mask(self, mask: np.ndarray, region: str) -> np.ndarray:
        """Boolean mask of a named region (or of a single class given by name)."""
        if region in self.regions:
            members: Iterable[int] = self.regions[region]
        elif region in self.names:
            members = (self.code_of(region),)
        else:
            raise ConfigError(f"unknown region {region!r}; regions: {list(self.regions)}, classes: {list(self.names)}")
        return np.isin(mask, list(members))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary; :meth:`from_dict` reads it back."""
        return {
            "background": self.background,
            "classes": [
                {
                    "code": c.code,
                    "name": c.name,
                    "color": list(c.color),
                    "concept": None if c.concept is None else vars(c.concept).copy(),
                }
                for c in self.classes
            ],
            "regions": {k: list(v) for k, v in self.regions.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSchema:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        allowed = {"background", "classes", "regions"}
        extra = set(data) - allowed
        if extra:
            raise ConfigError(f"unknown LabelSchema keys {sorted(extra)}; allowed: {sorted(allowed)}")
        classes = []
        for item in data.get("classes", []):
            concept = item.get("concept")
            classes.append(
                LabelClass(
                    code=int(item["code"]),
                    name=str(item["name"]),
                    color=tuple(item.get("color", (255, 0, 0))),  # type: ignore[arg-type]
                    concept=CodedConcept(**concept) if concept else None,
                )
            )
        return cls(
            classes=tuple(classes),
            regions={k: tuple(v) for k, v in data.get("regions", {}).items()},
            background=int(data.get("background", 0)),
        )
