"""Chest CT with lung nodules in world millimetres (LUNA16 layout: subsetN/<uid>.mhd + annotations.csv).

Most scans are procedural: body wall with fat and muscle, two lung fields that taper to the
apices and sit on diaphragm domes, heart, aorta, trachea and main bronchi, spine and ribs,
and vessel trees branching from the hila. About a quarter start from the real CT
``../shared/data/radiomics/lung1_image.nrrd`` (mirrored, cropped and re-noised); its own
tumour, from ``lung1_label.nrrd``, is annotated too. Nodules are 3-30 mm: solid or
part-solid (solid core in a ground-glass halo), round, lobulated or spiculated; some sit on
a vessel, some touch the pleura. Each is centred in aerated lung, away from the earlier ones: a
nodule inside a vessel or a nodule as thick as itself would be invisible, yet annotated.
Findings under 3 mm go to ``annotations_excluded.csv`` as in LUNA16; ``candidates.csv`` lists
the nodules (class 1) and random lung points (class 0).
Scan ``i`` goes to ``subset{i % 10}``.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter, label

from medsight.data.phantoms.base import Progress, case_rng, default_workers, register_phantom, run_cases, write_table

SHAPE = (120, 256, 256)  # z, y, x
SPACING = (2.5, 1.4, 1.4)  # mm
REAL = Path("radiomics")  # the real lung CT (lung1_image.nrrd, lung1_label.nrrd) in the data folder
UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."


def _axes(shape: tuple[int, int, int], spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Millimetre coordinates about the volume centre, broadcastable (z, y, x)."""
    z, y, x = (np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in shape)
    return z[:, None, None] * spacing[0], y[None, :, None] * spacing[1], x[None, None, :] * spacing[2]


def _procedural(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic chest CT (HU, float32) and its lung mask; +x is patient left, +y posterior (LPS)."""
    zz, yy, xx = _axes(SHAPE, SPACING)
    half_w, half_ap = rng.uniform(155, 185), rng.uniform(110, 135)
    body = (xx / half_w) ** 2 + (yy / half_ap) ** 2
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[np.broadcast_to(body < 1.0, SHAPE)] = -100.0  # subcutaneous fat
    hu[np.broadcast_to(body < 0.82, SHAPE)] = 40.0  # muscle and mediastinum
    top, bottom = zz.max(), zz.min()
    t = (zz - bottom) / (top - bottom)  # 0 at the base, 1 at the apex
    lungs = np.zeros(SHAPE, bool)
    for side in (-1.0, 1.0):
        cx = side * half_w * rng.uniform(0.42, 0.5)
        taper = np.sqrt(np.clip((1.0 - t) / 0.35, 0, 1))  # narrow at the apex
        ax = half_w * rng.uniform(0.33, 0.4) * taper
        ay = np.where(yy > 0, 0.78, 0.6) * half_ap * rng.uniform(0.9, 1.05) * taper  # deeper at the back
        dome = bottom + rng.uniform(25, 45) + 45 * np.exp(-(((xx - cx) / 70) ** 2 + (yy / 60) ** 2))
        inside = ((xx - cx) / np.maximum(ax, 1e-3)) ** 2 + ((yy - 5) / np.maximum(ay, 1e-3)) ** 2 < 1.0
        lungs |= inside & (zz > dome)
    heart = (((xx - 25) / 60) ** 2 + ((yy + 30) / 50) ** 2 + ((zz - bottom - 70) / 55) ** 2) < 1.0
    lungs &= ~heart & (body < 0.84**2)  # inside the rib cage: a lung never reaches the skin
    hu[lungs] = -860.0
    hu[heart] = 40.0
    aorta = ((xx - 22) ** 2 + (yy - 28) ** 2 < 13**2) & (zz > bottom + 60)  # descending, left of the spine
    hu[np.broadcast_to(aorta, SHAPE)] = 45.0
    carina = bottom + rng.uniform(150, 175)
    trachea = (xx**2 + (yy + 5) ** 2 < 9**2) & (zz > carina)
    for side in (-1.0, 1.0):  # main bronchi run down and out from the carina
        trachea |= ((xx - side * (carina - zz) * 0.7) ** 2 + yy**2 < 6**2) & (zz <= carina) & (zz > carina - 40)
    hu[np.broadcast_to(trachea, SHAPE)] = -1000.0
    spine_y = half_ap * 0.68
    vertebra = xx**2 + (yy - spine_y) ** 2
    hu[np.broadcast_to(vertebra < 18**2, SHAPE)] = 300.0
    hu[np.broadcast_to(vertebra < 15**2, SHAPE)] = 180.0
    hu[np.broadcast_to(xx**2 + (yy - spine_y - 22) ** 2 < 7**2, SHAPE)] = 15.0  # spinal canal, behind the body
    angle = np.arctan2(yy, xx)
    ring = np.abs(np.sqrt((xx / half_w) ** 2 + (yy / half_ap) ** 2) - 0.88) < 0.035
    ribs = ring & (np.sin(2 * np.pi * (zz + 30 * angle) / 26.0) > 0.5) & (np.sin(angle) > -0.85)  # none at the sternum
    hu[ribs] = 650.0
    vessels = _vessel_tree(rng, lungs, carina)
    hu[vessels & lungs] = 40.0
    hu[lungs] += 25 * gaussian_filter(rng.standard_normal(SHAPE, dtype=np.float32), 1.5)[lungs]
    return hu, lungs


def _vessel_tree(rng: np.random.Generator, lungs: np.ndarray, carina: float) -> np.ndarray:
    """Branching vessels from the hila: random walks splatted and smoothed into tubes."""
    points = np.zeros(SHAPE, np.float32)
    spacing = np.array(SPACING, np.float32)
    centre = (np.array(SHAPE, np.float32) - 1) / 2
    walkers = []
    for side in (-1.0, 1.0):
        hilum = np.array([carina - 25, 5.0, side * 40.0], np.float32)  # z, y, x mm: beside the mediastinum
        for _ in range(28):
            direction = rng.normal(0, 1, 3).astype(np.float32)
            direction[0] *= 1.6  # fan out up and down as much as sideways
            direction[2] = side * (abs(direction[2]) + 1.0)
            walkers.append((hilum.copy(), direction / np.linalg.norm(direction), 3, True))
    while walkers:
        pos, direction, generation, outside = walkers.pop()
        for _ in range(int(rng.integers(30, 70))):
            direction = direction + rng.normal(0, 0.12, 3).astype(np.float32)
            direction /= np.linalg.norm(direction)
            pos = pos + 2.0 * direction
            idx = np.round(pos / spacing + centre).astype(int)
            if np.any(idx < 0) or np.any(idx >= SHAPE):
                break
            if not lungs[tuple(idx)]:
                if not outside:  # left the lung after entering it: the branch ends at the pleura
                    break
                continue
            outside = False
            points[tuple(idx)] = generation
            if generation > 1 and rng.random() < 0.06:
                branch = direction + rng.normal(0, 0.6, 3).astype(np.float32)
                walkers.append((pos.copy(), branch / np.linalg.norm(branch), generation - 1, False))
    tubes = gaussian_filter(points, (0.6, 1.0, 1.0))
    return tubes > 0.08


@lru_cache(maxsize=2)
def _real_ct(data_dir: Path | None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], np.ndarray] | None:
    """The real lung CT (HU, z y x), its lung mask, its spacing and its tumour mask, if available."""
    folder = data_dir / REAL if data_dir is not None else None
    if folder is None or not (folder / "lung1_image.nrrd").is_file():
        return None
    image = sitk.ReadImage(str(folder / "lung1_image.nrrd"))
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "lung1_label.nrrd"))) > 0
    air = hu < -400
    components, _ = label(air)
    outside = np.unique(np.concatenate([components[:, 0, :].ravel(), components[:, -1, :].ravel()]))
    lungs = air & ~np.isin(components, outside[outside > 0])
    return hu, binary_erosion(lungs, iterations=2), tuple(image.GetSpacing()[::-1]), tumour


def _real(
    rng: np.random.Generator, data_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], list[dict], np.ndarray]:
    """The real CT cropped and perhaps mirrored: HU, lung mask, spacing, its tumour as a finding and
    as a mask."""
    hu, lungs, spacing, tumour = _real_ct(data_dir)  # type: ignore[misc]
    start = int(rng.integers(0, 8))
    stop = hu.shape[0] - int(rng.integers(0, 8))
    sl = slice(start, stop)
    hu, lungs, tumour = hu[sl].copy(), lungs[sl].copy(), tumour[sl]
    if rng.random() < 0.5:
        hu, lungs, tumour = hu[:, :, ::-1].copy(), lungs[:, :, ::-1].copy(), tumour[:, :, ::-1]
    own = []
    if tumour.any():
        zyx = np.argwhere(tumour).mean(axis=0)
        volume_mm3 = tumour.sum() * float(np.prod(spacing))
        own.append({"zyx": zyx, "diameter": 2 * (3 * volume_mm3 / (4 * math.pi)) ** (1 / 3)})
    return hu, lungs, spacing, own, tumour.copy()  # a copy: nodules are marked on it


def _beside_vessel(
    hu: np.ndarray,
    lungs: np.ndarray,
    taken: np.ndarray,
    spacing: tuple[float, ...],
    rng: np.random.Generator,
    radius: float,
) -> np.ndarray | None:
    """A centre (voxel z, y, x) in aerated lung half a radius beyond a vessel's wall, so the nodule
    sits on the vessel and most of it is seen against the lung; None if no vessel offers one.

    A nodule centred inside a vessel (or a hilar bundle, or an earlier nodule) as thick as itself
    has the same density as all around it: no reader could see it, and it must not be annotated."""
    near = binary_dilation(lungs, iterations=3)  # the real CT's lung mask stops short of its vessels
    vessels = np.argwhere((hu > -200) & near & ~taken)
    if len(vessels) == 0:
        return None
    limit = np.array(hu.shape) - 1
    step = 0.5 / np.asarray(spacing, np.float32)  # half a millimetre along each axis, in voxels
    for _ in range(20):
        start = vessels[rng.integers(len(vessels))].astype(np.float32)
        direction = rng.normal(0, 1, 3).astype(np.float32)
        direction /= np.linalg.norm(direction)
        for n in range(1, 40):  # out of the vessel, up to 20 mm
            at = np.clip(np.rint(start + direction * step * n), 0, limit).astype(int)
            if taken[tuple(at)] or not near[tuple(at)]:
                break
            if hu[tuple(at)] < -500:  # past the wall: go on half a radius into the lung
                centre = start + direction * step * (n + radius)
                inside = np.clip(np.rint(centre), 0, limit).astype(int)
                if lungs[tuple(inside)] and not taken[tuple(inside)] and hu[tuple(inside)] < -500:
                    return centre
                break
    return None


def _nodule(
    hu: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, ...],
    rng: np.random.Generator,
    diameter: float,
    taken: np.ndarray,
) -> dict | None:
    """Insert one nodule away from the earlier ones (``taken``, updated); return its centre
    (voxel z, y, x) and diameter, or None if it did not fit."""
    kind = rng.choice(("solid", "solid", "part-solid"))
    shape = rng.choice(("round", "lobulated", "spiculated"))
    radius = diameter / 2
    free = lungs & ~taken & (hu < -500)  # aerated lung: not in a vessel (nor the real CT's tumour)
    inner = np.argwhere(binary_erosion(free[::2, ::4, ::4], iterations=1)) * (2, 4, 4)
    if len(inner) == 0:
        return None
    where = rng.choice(("free", "free", "vessel", "pleura"))
    centre = inner[rng.integers(len(inner))].astype(np.float32)
    if where == "pleura":  # move outwards until the nodule touches the chest wall
        step = np.array([0.0, 0.0, np.sign(centre[2] - (hu.shape[2] - 1) / 2) or 1.0], np.float32)
        limit = np.array(hu.shape) - 1
        for _ in range(hu.shape[2]):
            ahead = np.clip((centre + step * (radius / spacing[2] + 1)).astype(int), 0, limit)
            if not lungs[tuple(ahead)] or ahead[2] in (0, limit[2]):
                break
            centre += step
    elif where == "vessel":
        beside = _beside_vessel(hu, lungs, taken, spacing, rng, radius)
        if beside is not None:
            centre = beside.astype(np.float32)
    reach = [math.ceil(radius * 2.2 / s) + 2 for s in spacing]
    lo = [max(0, int(c) - r) for c, r in zip(centre, reach, strict=True)]
    hi = [min(n, int(c) + r + 1) for c, r, n in zip(centre, reach, hu.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grids = np.meshgrid(
        *[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing, strict=True)], indexing="ij"
    )
    d = np.sqrt(sum(g**2 for g in grids))
    theta, phi = np.arctan2(grids[1], grids[2]), np.arccos(np.clip(grids[0] / np.maximum(d, 1e-6), -1, 1))
    surface = radius * np.ones_like(d)
    if shape == "lobulated":
        surface *= 1 + 0.18 * np.sin(3 * theta + rng.uniform(0, 6)) * np.sin(2 * phi + rng.uniform(0, 6))
    solid = d < surface
    if shape == "spiculated":
        for _ in range(int(rng.integers(6, 12))):
            axis = rng.normal(0, 1, 3)
            axis /= np.linalg.norm(axis)
            along = sum(g * a for g, a in zip(grids, axis, strict=True))
            across = np.sqrt(np.maximum(d**2 - along**2, 0))
            solid |= (along > 0) & (along < radius * rng.uniform(1.6, 2.4)) & (across < 0.9)
    region = hu[box]
    if kind == "part-solid":
        halo = d < surface * 1.6
        region[halo] = np.maximum(region[halo], -550 + 40 * rng.standard_normal(int(halo.sum())))
        solid &= d < surface * 0.6
    region[solid] = 30 + 25 * rng.standard_normal(int(solid.sum()))
    taken[box] |= d < surface * 1.6 + 2.0  # the next nodule keeps 2 mm off this one (and its halo)
    return {"zyx": centre, "diameter": float(diameter), "kind": kind, "shape": shape, "where": where}


def _sizes(rng: np.random.Generator) -> tuple[list[float], list[float]]:
    count = int(rng.choice(4, p=(0.35, 0.35, 0.2, 0.1)))
    nodules = list(np.exp(rng.uniform(np.log(3.5), np.log(30.0), size=count)))
    tiny = list(rng.uniform(1.5, 2.9, size=int(rng.integers(0, 3))))
    return nodules, tiny


def _world(zyx: np.ndarray, origin: tuple[float, ...], spacing: tuple[float, ...]) -> list[float]:
    """Voxel (z, y, x) -> world (x, y, z) mm with an identity direction, as LUNA16 states coordinates."""
    return [round(origin[i] + float(zyx[2 - i]) * spacing[2 - i], 4) for i in range(3)]


def _case(out: Path, seed: int, data_dir: Path | None, index: int) -> tuple[list, list, list]:
    rng = case_rng(seed, index)
    uid = UID_ROOT + "".join(str(d) for d in rng.integers(0, 10, size=39))
    found: list[dict] = []
    if _real_ct(data_dir) is not None and rng.random() < 0.25:
        hu, lungs, spacing, found, taken = _real(rng, data_dir)  # nodules keep off its tumour
    else:
        hu, lungs = _procedural(rng)
        spacing = SPACING
        taken = np.zeros(hu.shape, bool)
    nodules, tiny = _sizes(rng)
    for diameter in nodules:
        placed = _nodule(hu, lungs, spacing, rng, diameter, taken)
        if placed is not None:
            found.append(placed)
    excluded = [n for n in (_nodule(hu, lungs, spacing, rng, d, taken) for d in tiny) if n is not None]
    hu = gaussian_filter(hu, 0.5) + rng.normal(0, rng.uniform(8, 25), hu.shape).astype(np.float32)
    origin = (-float(hu.shape[2] - 1) * spacing[2] / 2, -float(hu.shape[1] - 1) * spacing[1] / 2, -300.0)
    image = sitk.GetImageFromArray(np.clip(hu, -1024, 3071).astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(origin)
    folder = out / f"subset{index % 10}"
    folder.mkdir(exist_ok=True)
    sitk.WriteImage(image, str(folder / f"{uid}.mhd"))  # writes <uid>.raw beside it
    annotations = [[uid, *_world(n["zyx"], origin, spacing), round(n["diameter"], 4)] for n in found]
    excluded_rows = [[uid, *_world(n["zyx"], origin, spacing), -1] for n in excluded]
    candidates = [[uid, *row[1:4], 1] for row in annotations]
    inner = np.argwhere(lungs[::4, ::8, ::8]) * (4, 8, 8)
    for zyx in inner[rng.choice(len(inner), size=min(20, len(inner)), replace=False)]:
        candidates.append([uid, *_world(zyx, origin, spacing), 0])
    return annotations, excluded_rows, candidates


@register_phantom(
    "lung-nodule-det",
    layout="luna16",
    description="chest CT (procedural and the real radiomics CT) with 3-30 mm nodules; LUNA16 layout",
    uses_data=True,
)
def write_lung(out: Path, cases: int, seed: int, progress: Progress | None, *, data_dir: Path | None = None) -> None:
    """``subsetN/<seriesuid>.mhd/.raw``, ``annotations.csv``, ``annotations_excluded.csv``, ``candidates.csv``."""
    annotations, excluded, candidates = [], [], []
    _real_ct(data_dir)  # read once here, before the workers fork (they share it)
    make = partial(_case, out, seed, data_dir)
    for rows in run_cases(make, cases, workers=default_workers(), progress=progress, stage="making chest CT scans"):
        annotations += rows[0]
        excluded += rows[1]
        candidates += rows[2]
    header = ["seriesuid", "coordX", "coordY", "coordZ"]
    write_table(out / "annotations.csv", [*header, "diameter_mm"], annotations)
    write_table(out / "annotations_excluded.csv", [*header, "diameter_mm"], excluded)
    write_table(out / "candidates.csv", [*header, "class"], candidates)
