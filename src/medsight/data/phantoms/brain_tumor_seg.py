"""Four-contrast brain MRI with gliomas (BraTS 2021 layout: t1, t1ce, t2, flair, seg; labels 1/2/4).

Anatomy comes from a real head: the Colin27 T1 (``../shared/data/mricron/ch2bet.nii.gz``)
or, when that is absent, nilearn's MNI152 template. Every case deforms it (rotation,
scaling, translation and a smooth elastic field) and grows a tumour that pushes the
surrounding tissue aside (mass effect). Contrasts are synthesised from the T1 through
tissue anchors (CSF, grey and white matter), so anatomical detail and partial volumes
carry over: T1 and T1ce show white matter bright, T2 shows CSF bright, FLAIR suppresses
CSF. Tumour regions: necrotic core (NCR, 1) dark on T1ce and bright on T2; enhancing rim
(ET, 4) bright on T1ce; oedema (ED, 2) bright on T2 and FLAIR, spreading in white matter.
A bias field, Rician noise and a random global scale per contrast are added. Regions nest
by construction: ET ⊂ TC ⊂ WT. ``phantom_truth.csv`` has the tumour centre and radii.
"""

from __future__ import annotations

import logging
from functools import lru_cache, partial
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

from medsight.core.errors import InputError
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
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
# Colin27, in the data folder make_phantom is given (by default ../shared/data)
COLIN = Path("mricron") / "ch2bet.nii.gz"
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


def colin_in(data_dir: Path | None) -> Path | None:
    """The Colin27 head in ``data_dir`` (by default :func:`default_data_dir`), if it is there."""
    folder = data_dir if data_dir is not None else default_data_dir()
    path = folder / COLIN if folder is not None else None
    return path if path is not None and path.is_file() else None


@lru_cache(maxsize=2)
def _atlas(colin: Path | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A real skull-stripped T1 head (float32, 1 mm) and its CSF/GM/WM intensity anchors."""
    if colin is not None:
        data = np.asarray(nib.load(str(colin)).dataobj, np.float32)
    else:
        try:
            from nilearn.datasets import load_mni152_template
        except ImportError as exc:
            raise InputError(
                f"the brain phantom needs a real head: no {COLIN} in the data folder (--data-dir, by default "
                "../shared/data) and nilearn is not installed (pip install nilearn, which ships the MNI152 template)"
            ) from exc
        data = np.asarray(load_mni152_template(resolution=1).get_fdata(), np.float32)
    brain = data[data > 0]
    # tissue anchors: the three modes of the brain's intensity histogram (CSF, GM, WM)
    from sklearn.cluster import KMeans

    sample = np.random.default_rng(0).choice(brain, size=min(50_000, brain.size), replace=False)
    centres = np.sort(KMeans(3, n_init=4, random_state=0).fit(sample[:, None]).cluster_centers_.ravel())
    return data, (float(centres[0]), float(centres[1]), float(centres[2]))


@lru_cache(maxsize=1)
def _grid() -> np.ndarray:
    """Output voxel centres relative to the grid centre, (3, N) float32."""
    axes = [np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in GRID]
    return np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")])


def _rotation(rng: np.random.Generator) -> np.ndarray:
    angles = np.radians(rng.normal(0, 5, size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return (rz @ ry @ rx) * rng.uniform(0.92, 1.08)


def _smooth_field(rng: np.random.Generator, amplitude: float, coarse: tuple[int, int, int] = (6, 6, 5)) -> np.ndarray:
    field = rng.normal(0, amplitude, size=coarse).astype(np.float32)
    return zoom(field, [g / c for g, c in zip(GRID, coarse, strict=True)], order=1).ravel()


def _tumour(rng: np.random.Generator, brain: np.ndarray, step: int) -> dict:
    """Centre (output voxels) and radii (mm) of the tumour compartments; ``brain`` is subsampled by ``step``."""
    candidates = np.argwhere(gaussian_filter(brain.astype(np.float32), 8 / step) > 0.95)
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
    return d * (1.0 + _smooth_field(rng, amplitude, (24, 24, 16)).reshape(GRID))


def case_volumes(
    rng: np.random.Generator, data_dir: Path | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Four contrasts (float32) and the label map (uint8, BraTS codes) of one case."""
    t1, (csf, gm, wm) = _atlas(colin_in(data_dir))
    atlas_centre = (np.array(t1.shape, np.float32) - 1) / 2
    rot = _rotation(rng).astype(np.float32)
    coords = rot @ _grid() + (atlas_centre + rng.normal(0, 4, size=3).astype(np.float32))[:, None]
    for axis in range(3):
        coords[axis] += _smooth_field(rng, 2.5)
    step = 4
    coarse = coords.reshape(3, *GRID)[:, ::step, ::step, ::step]
    brain0 = map_coordinates(t1, coarse.reshape(3, -1), order=0).reshape(coarse.shape[1:]) > 0
    tumour = _tumour(rng, brain0, step)
    stretch = rng.uniform(0.75, 1.3, size=3).astype(np.float32)
    offset = _grid() + (np.array(GRID, np.float32)[:, None] - 1) / 2 - tumour["centre"][:, None]
    d = np.sqrt(((offset / stretch[:, None]) ** 2).sum(axis=0))
    # mass effect: sample the atlas closer to the centre, so tissue appears pushed outwards
    radial = tumour["push"] * np.exp(-((d / (tumour["oedema"] * 1.2)) ** 2)) / np.maximum(d, 1.0)
    coords -= rot @ (offset * radial)
    anatomy = map_coordinates(t1, coords, order=1).reshape(GRID)
    brain = anatomy > 0.5 * csf
    d = d.reshape(GRID)

    labels = np.zeros(GRID, np.uint8)
    white = np.clip((anatomy - gm) / max(wm - gm, 1e-3), 0, 1)
    oedema = brain & (_lumpy(rng, d, 0.25) < tumour["oedema"] * (0.75 + 0.4 * white))  # further in white matter
    labels[oedema] = 2
    labels[brain & (_lumpy(rng, d, 0.3) < tumour["core"])] = 4
    if tumour["necrosis"] > 0:
        labels[brain & (_lumpy(rng, d, 0.35) < tumour["necrosis"])] = 1
    images = _contrasts(rng, anatomy, labels, brain, (csf, gm, wm))
    truth = {
        "centre": tumour["centre"].tolist(),
        **{k: round(float(tumour[k]), 2) for k in ("core", "necrosis", "oedema")},
    }
    return images, labels, truth


def _contrasts(
    rng: np.random.Generator, anatomy: np.ndarray, labels: np.ndarray, brain: np.ndarray, anchors: tuple[float, ...]
) -> dict[str, np.ndarray]:
    """T1, T1ce, T2 and FLAIR from the deformed T1, with tumour signal, bias field and Rician noise."""
    csf, gm, wm = anchors
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(brain))  # work inside the brain only
    sub_anatomy, sub_labels, sub_brain = anatomy[box], labels[box], brain[box]
    bias = np.exp(_smooth_field(rng, 0.12, (4, 4, 3)).reshape(GRID)[box])
    images = {}
    for name, levels in ANCHORS.items():
        value = np.interp(sub_anatomy, [0.0, csf, gm, wm, wm * 1.3], [0.0, *levels, levels[2] * 1.1])
        value = value.astype(np.float32)
        for code, level in zip((1, 2, 4), TUMOUR[name], strict=True):
            region = sub_labels == code
            value[region] = level * (1.0 + 0.08 * rng.standard_normal(int(region.sum()), dtype=np.float32))
        value = gaussian_filter(value, 0.6) * sub_brain * bias
        noise = np.float32(rng.uniform(0.01, 0.03))
        real = value + noise * rng.standard_normal(value.shape, dtype=np.float32)
        imaginary = noise * rng.standard_normal(value.shape, dtype=np.float32)
        full = np.zeros(GRID, np.float32)
        full[box] = np.hypot(real, imaginary) * sub_brain * np.float32(rng.uniform(300, 3000))
        images[name] = full
    return images


@register_phantom(
    "brain-tumor-seg",
    layout="brats2021",
    description="4-contrast brain MRI (deformed real head) with gliomas; BraTS 2021 layout, labels 1/2/4",
    uses_data=True,
)
def write_brain(out: Path, cases: int, seed: int, progress: Progress | None, *, data_dir: Path | None = None) -> None:
    """``BraTS2021_NNNNN/`` folders with the four contrasts and the segmentation."""
    _atlas(colin_in(data_dir))  # read once here, before the workers fork (they share it)
    make = partial(_write_case, out, seed, data_dir)
    rows = list(run_cases(make, cases, workers=default_workers(), progress=progress, stage="making brain MRI cases"))
    write_table(
        out / "phantom_truth.csv",
        ["case", "centre_i", "centre_j", "centre_k", "core_mm", "necrosis_mm", "oedema_mm"],
        rows,
    )


def _write_case(out: Path, seed: int, data_dir: Path | None, index: int) -> list:
    case = f"BraTS2021_{index:05d}"
    folder = out / case
    folder.mkdir()
    images, labels, truth = case_volumes(case_rng(seed, index), data_dir)
    for name, value in images.items():
        nib.save(nib.Nifti1Image(np.clip(value, 0, 32767).astype(np.int16), AFFINE), folder / f"{case}_{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels, AFFINE), folder / f"{case}_seg.nii.gz")
    return [case, *truth["centre"], truth["core"], truth["necrosis"], truth["oedema"]]
