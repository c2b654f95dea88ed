"""Four-contrast brain MRI with gliomas (BraTS 2021 layout: t1, t1ce, t2, flair, seg; labels 1/2/4).

Anatomy comes from a real head: the Colin27 T1, brain extracted (``ch2bet.nii.gz``), taken
from ``mricron/`` in the data folder when it is there and otherwise from the copy shipped
with medsight (``assets/``, BSD-3, see ``assets/LICENSE.colin27``). Every case deforms it
(rotation, scaling, translation and a smooth elastic field) and grows a tumour that pushes
the surrounding tissue aside (mass effect). Contrasts are synthesised from the T1 through
tissue anchors (CSF, grey and white matter), so anatomical detail and partial volumes
carry over: T1 and T1ce show white matter bright, T2 shows CSF bright, FLAIR suppresses
CSF. Tumour regions: necrotic core (NCR, 1) dark on T1ce and bright on T2; enhancing rim
(ET, 4) bright on T1ce; oedema (ED, 2) bright on T2 and FLAIR, spreading in white matter.
A bias field, Rician noise and a random global scale per contrast are added. Regions nest
by construction (ET ⊂ TC ⊂ WT) and the tumour is one connected lesion. ``phantom_truth.csv``
has the tumour centre (voxels) and radii (mm).

Cases lie on the BraTS grid (240 x 240 x 155 at 1 mm) unless ``voxel_mm`` asks for coarser
voxels over the same field of view (2 mm: 120 x 120 x 78, eight times fewer voxels, made
about eight times faster; the demo uses it).
"""

from __future__ import annotations

import logging
from functools import lru_cache, partial
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from scipy.ndimage import gaussian_filter, label, map_coordinates, zoom

from medsight.core.errors import ConfigError, InputError
from medsight.data.phantoms.base import (
    Progress,
    case_rng,
    default_data_dir,
    default_workers,
    register_phantom,
    run_cases,
    write_table,
)

log = logging.getLogger(__name__)

GRID = (240, 240, 155)  # BraTS voxel grid, 1 mm
FIELD_MM = GRID  # its field of view, kept whatever the voxel size
# Colin27: in the data folder make_phantom is given (by default ../shared/data), else the shipped copy
COLIN = Path("mricron") / "ch2bet.nii.gz"
SHIPPED_COLIN = Path(__file__).parent / "assets" / "colin27_ch2bet.nii.gz"
# contrast value at (CSF, grey matter, white matter), before the random global scale
ANCHORS = {
    "t1": (0.25, 0.55, 0.8),
    "t1ce": (0.25, 0.55, 0.75),
    "t2": (1.0, 0.6, 0.35),
    "flair": (0.15, 0.6, 0.45),
}
# tumour appearance per contrast: necrosis, oedema, enhancing rim
TUMOUR = {
    "t1": (0.2, 0.4, 0.5),
    "t1ce": (0.18, 0.45, 1.15),
    "t2": (0.95, 0.85, 0.65),
    "flair": (0.6, 0.95, 0.7),
}


def colin_in(data_dir: Path | None) -> Path:
    """The Colin27 head: from ``data_dir`` (by default :func:`default_data_dir`) when it holds one,
    else the copy shipped with medsight."""
    folder = data_dir if data_dir is not None else default_data_dir()
    path = folder / COLIN if folder is not None else None
    return path if path is not None and path.is_file() else SHIPPED_COLIN


@lru_cache(maxsize=2)
def _atlas(colin: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A real skull-stripped T1 head (float32, 1 mm) and its CSF/GM/WM intensity anchors."""
    try:
        data = np.asarray(nib.load(str(colin)).dataobj, np.float32)
    except (OSError, ValueError, EOFError, ImageFileError) as exc:  # a truncated or foreign file in the data folder
        raise InputError(f"cannot read the Colin27 head {colin} ({exc}); remove it to use the shipped copy") from exc
    if data.ndim != 3 or not (data > 0).any():
        raise InputError(
            f"{colin} is not a brain-extracted 3D head (shape {data.shape}); remove it to use the shipped copy"
        )
    brain = data[data > 0]
    # tissue anchors: the three modes of the brain's intensity histogram (CSF, GM, WM)
    from sklearn.cluster import KMeans

    sample = np.random.default_rng(0).choice(brain, size=min(50_000, brain.size), replace=False)
    centres = np.sort(KMeans(3, n_init=4, random_state=0).fit(sample[:, None]).cluster_centers_.ravel())
    return data, (float(centres[0]), float(centres[1]), float(centres[2]))


def grid_for(voxel_mm: float) -> tuple[int, int, int]:
    """The phantom's voxel grid at ``voxel_mm`` over the BraTS field of view."""
    if not 0.5 <= voxel_mm <= 4.0:
        raise ConfigError(f"voxel_mm must lie in [0.5, 4] mm, got {voxel_mm}")
    return tuple(max(8, round(n / voxel_mm)) for n in FIELD_MM)  # type: ignore[return-value]


def affine_for(voxel_mm: float) -> np.ndarray:
    """The BraTS orientation (LPS-flipped x and y) with ``voxel_mm`` voxels."""
    grid = grid_for(voxel_mm)
    return np.array(
        [[-voxel_mm, 0, 0, 0], [0, -voxel_mm, 0, (grid[1] - 1) * voxel_mm], [0, 0, voxel_mm, 0], [0, 0, 0, 1]]
    )


@lru_cache(maxsize=2)
def _grid(voxel_mm: float) -> np.ndarray:
    """Output voxel centres relative to the grid centre in mm, (3, N) float32."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(voxel_mm) for n in grid_for(voxel_mm)]
    return np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")])


def _rotation(rng: np.random.Generator) -> np.ndarray:
    angles = np.radians(rng.normal(0, 5, size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return (rz @ ry @ rx) * rng.uniform(0.92, 1.08)


def _smooth_field(
    rng: np.random.Generator, amplitude: float, grid: tuple[int, ...], coarse: tuple[int, int, int] = (6, 6, 5)
) -> np.ndarray:
    field = rng.normal(0, amplitude, size=coarse).astype(np.float32)
    return zoom(field, [g / c for g, c in zip(grid, coarse, strict=True)], order=1).ravel()


def _tumour(rng: np.random.Generator, brain: np.ndarray, step: int, voxel_mm: float) -> dict:
    """Centre (output voxels) and radii (mm) of the tumour compartments; ``brain`` is subsampled by ``step``."""
    candidates = np.argwhere(gaussian_filter(brain.astype(np.float32), 8 / (step * voxel_mm)) > 0.95)
    centre = (candidates[rng.integers(len(candidates))] * step).astype(np.float32)
    core = rng.uniform(8, 20)
    return {
        "centre": centre,
        "core": core,
        "necrosis": core * rng.uniform(0.3, 0.7) if rng.random() < 0.8 else 0.0,
        "oedema": core + rng.uniform(6, 22),
        "push": core * rng.uniform(0.4, 0.8),
    }


def _lumpy(rng: np.random.Generator, d: np.ndarray, amplitude: float) -> np.ndarray:
    """Distances with an irregular surface: each compartment gets its own bumps."""
    return d * (1.0 + _smooth_field(rng, amplitude, d.shape, (24, 24, 16)).reshape(d.shape))


def case_volumes(
    rng: np.random.Generator, data_dir: Path | None = None, *, voxel_mm: float = 1.0
) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Four contrasts (float32) and the label map (uint8, BraTS codes) of one case, on
    :func:`grid_for` ``(voxel_mm)``."""
    grid = grid_for(voxel_mm)
    t1, (csf, gm, wm) = _atlas(colin_in(data_dir))
    atlas_centre = (np.array(t1.shape, np.float32) - 1) / 2  # the atlas has 1 mm voxels: mm = its voxels
    rot = _rotation(rng).astype(np.float32)
    coords = rot @ _grid(voxel_mm) + (atlas_centre + rng.normal(0, 4, size=3).astype(np.float32))[:, None]
    for axis in range(3):
        coords[axis] += _smooth_field(rng, 2.5, grid)
    step = max(1, round(4 / voxel_mm))
    coarse = coords.reshape(3, *grid)[:, ::step, ::step, ::step]
    brain0 = map_coordinates(t1, coarse.reshape(3, -1), order=0).reshape(coarse.shape[1:]) > 0
    tumour = _tumour(rng, brain0, step, voxel_mm)
    stretch = rng.uniform(0.75, 1.3, size=3).astype(np.float32)
    # each voxel's offset from the tumour centre, in mm
    offset = _grid(voxel_mm) + ((np.array(grid, np.float32) - 1) / 2 - tumour["centre"])[:, None] * np.float32(voxel_mm)
    d = np.sqrt(((offset / stretch[:, None]) ** 2).sum(axis=0))
    # mass effect: sample the atlas closer to the centre, so tissue appears pushed outwards
    radial = tumour["push"] * np.exp(-((d / (tumour["oedema"] * 1.2)) ** 2)) / np.maximum(d, 1.0)
    coords -= rot @ (offset * radial)
    anatomy = map_coordinates(t1, coords, order=1).reshape(grid)
    brain = anatomy > 0.5 * csf
    d = d.reshape(grid)

    labels = np.zeros(grid, np.uint8)
    white = np.clip((anatomy - gm) / max(wm - gm, 1e-3), 0, 1)
    oedema = brain & (_lumpy(rng, d, 0.25) < tumour["oedema"] * (0.75 + 0.4 * white))  # further in white matter
    labels[oedema] = 2
    labels[brain & (_lumpy(rng, d, 0.3) < tumour["core"])] = 4
    if tumour["necrosis"] > 0:
        labels[brain & (_lumpy(rng, d, 0.35) < tumour["necrosis"])] = 1
    labels = _one_lesion(labels)
    images = _contrasts(rng, anatomy, labels, brain, (csf, gm, wm), voxel_mm)
    truth = {
        "centre": tumour["centre"].tolist(),
        **{k: round(float(tumour[k]), 2) for k in ("core", "necrosis", "oedema")},
    }
    return images, labels, truth


def _one_lesion(labels: np.ndarray) -> np.ndarray:
    """The tumour as one connected lesion, as most gliomas are: oedema islands that the white-matter
    threshold leaves apart from the main mass become normal tissue."""
    parts, count = label(labels > 0, structure=np.ones((3, 3, 3), bool))
    if count > 1:
        main = int(np.argmax(np.bincount(parts.ravel())[1:])) + 1
        labels = np.where(parts == main, labels, 0).astype(np.uint8)
    return labels


def _contrasts(
    rng: np.random.Generator,
    anatomy: np.ndarray,
    labels: np.ndarray,
    brain: np.ndarray,
    anchors: tuple[float, ...],
    voxel_mm: float,
) -> dict[str, np.ndarray]:
    """T1, T1ce, T2 and FLAIR from the deformed T1, with tumour signal, bias field and Rician noise."""
    csf, gm, wm = anchors
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(brain))  # work inside the brain only
    sub_anatomy, sub_labels, sub_brain = anatomy[box], labels[box], brain[box]
    bias = np.exp(_smooth_field(rng, 0.12, anatomy.shape, (4, 4, 3)).reshape(anatomy.shape)[box])
    images = {}
    for name, levels in ANCHORS.items():
        value = np.interp(sub_anatomy, [0.0, csf, gm, wm, wm * 1.3], [0.0, *levels, levels[2] * 1.1])
        value = value.astype(np.float32)
        for code, level in zip((1, 2, 4), TUMOUR[name], strict=True):
            region = sub_labels == code
            value[region] = level * (1.0 + 0.08 * rng.standard_normal(int(region.sum()), dtype=np.float32))
        value = gaussian_filter(value, 0.6 / voxel_mm) * sub_brain * bias
        noise = np.float32(rng.uniform(0.01, 0.03))
        real = value + noise * rng.standard_normal(value.shape, dtype=np.float32)
        imaginary = noise * rng.standard_normal(value.shape, dtype=np.float32)
        full = np.zeros(anatomy.shape, np.float32)
        full[box] = np.hypot(real, imaginary) * sub_brain * np.float32(rng.uniform(300, 3000))
        images[name] = full
    return images


@register_phantom(
    "brain-tumor-seg",
    layout="brats2021",
    description="4-contrast brain MRI (deformed real head) with gliomas; BraTS 2021 layout, labels 1/2/4",
    uses_data=True,
)
def write_brain(
    out: Path, cases: int, seed: int, progress: Progress | None, *, data_dir: Path | None = None, voxel_mm: float = 1.0
) -> None:
    """``BraTS2021_NNNNN/`` folders with the four contrasts and the segmentation; ``voxel_mm``
    coarsens the 1 mm BraTS grid over the same field of view."""
    grid_for(voxel_mm)  # a bad size fails here, before any worker starts
    _atlas(colin_in(data_dir))  # read once here, before the workers fork (they share it)
    make = partial(_write_case, out, seed, data_dir, voxel_mm)
    rows = list(run_cases(make, cases, workers=default_workers(), progress=progress, stage="making brain MRI cases"))
    write_table(
        out / "phantom_truth.csv",
        ["case", "centre_i", "centre_j", "centre_k", "core_mm", "necrosis_mm", "oedema_mm"],
        rows,
    )


def _write_case(out: Path, seed: int, data_dir: Path | None, voxel_mm: float, index: int) -> list:
    case = f"BraTS2021_{index:05d}"
    folder = out / case
    folder.mkdir()
    images, labels, truth = case_volumes(case_rng(seed, index), data_dir, voxel_mm=voxel_mm)
    affine = affine_for(voxel_mm)
    for name, value in images.items():
        nib.save(nib.Nifti1Image(np.clip(value, 0, 32767).astype(np.int16), affine), folder / f"{case}_{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / f"{case}_seg.nii.gz")
    return [case, *truth["centre"], truth["core"], truth["necrosis"], truth["oedema"]]
