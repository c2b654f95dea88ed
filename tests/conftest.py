"""Shared fixtures: real sample data (skipped with a reason when absent) and series builders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medsight.core import Geometry, Volume, VolumeMetadata
from medsight.io import write_dicom_series

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _numeric_mode_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The engine's measured numeric modes are cached per test session, not in the user's home."""
    import os

    os.environ.setdefault("MEDSIGHT_CACHE_DIR", str(tmp_path_factory.mktemp("medsight-cache")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real images); tests using it skip when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (clone without ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def testdata() -> Callable[[str], str]:
    """Path of a pydicom test file (from pydicom or the pydicom-data package)."""
    pytest.importorskip("data_store", reason="pydicom-data is not installed (pip install pydicom-data)")
    from pydicom.data import get_testdata_file

    def get(name: str) -> str:
        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"pydicom test file {name} not available")
        return str(path)

    return get


def oblique_direction(angle_deg: float = 20.0, *, left_handed: bool = False) -> tuple[tuple[float, ...], ...]:
    """An orthonormal direction (columns z, y, x) rotated about the world x axis."""
    a = np.radians(angle_deg)
    x_axis = np.array([1.0, 0.0, 0.0])
    y_axis = np.array([0.0, np.cos(a), np.sin(a)])
    z_axis = np.cross(x_axis, y_axis)
    if left_handed:
        z_axis = -z_axis
    return tuple(map(tuple, np.stack([z_axis, y_axis, x_axis], axis=1)))


@pytest.fixture
def make_series(tmp_path: Path) -> Callable[..., tuple[Path, Volume]]:
    """Write a small synthetic CT series with our writer; return (folder, volume written)."""

    def make(
        name: str = "series",
        shape: tuple[int, int, int] = (6, 24, 20),
        spacing: tuple[float, float, float] = (2.5, 0.8, 0.7),
        origin: tuple[float, float, float] = (-10.0, 20.0, 30.0),
        direction: tuple[tuple[float, ...], ...] | None = None,
        seed: int = 0,
    ) -> tuple[Path, Volume]:
        rng = np.random.default_rng(seed)
        array = rng.integers(-1000, 2000, size=(1, *shape)).astype(np.int16)
        geometry = Geometry(spacing=spacing, origin=origin, direction=direction or Geometry().direction)
        volume = Volume(array, geometry, VolumeMetadata(modality="CT"))
        folder = tmp_path / name
        write_dicom_series(volume, folder)
        return folder, volume

    return make


@pytest.fixture
def two_series(make_series: Callable[..., tuple[Path, Volume]], tmp_path: Path) -> tuple[Path, Volume, Volume]:
    """A folder holding a 4-slice and a 6-slice series; returns (folder, small, large)."""
    import shutil

    a, small = make_series("a", shape=(4, 8, 8))
    b, large = make_series("b", shape=(6, 8, 8), seed=1)
    both = tmp_path / "both"
    shutil.copytree(a, both / "a")
    shutil.copytree(b, both / "b")
    return both, small, large
