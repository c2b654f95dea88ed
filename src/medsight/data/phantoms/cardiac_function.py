"""Short-axis cine MRI over one heart beat with a known ejection fraction (ACDC layout).

The left ventricle is a truncated ellipsoid stacked over 8-11 short-axis slices 8-10 mm
apart; its cavity shrinks through systole and refills in diastole while the myocardium
keeps its area (it thickens as the cavity empties). The right ventricle is a crescent
wrapped around the septum on the basal and mid slices. ACDC groups set the physiology:
NOR (normal), MINF (low EF, a thinned non-contracting scar), DCM (dilated, low EF), HCM
(thick wall, high EF), RV (dilated, poorly contracting right ventricle). The end-systolic
size is solved so that the EF measured on the written masks (voxel counts at ED and ES)
equals the case's intended EF. Images are bSSFP-like (bright blood, dark myocardium,
bright fat, dark lungs) with coil shading and Rician noise. ``phantom_truth.csv`` holds the
intended and measured EF, volumes, mass, clinical covariates (age, sex, height, weight,
hypertension, diabetes) and a simulated outcome (years to event, event flag) whose hazard
rises as EF falls and with age and comorbidity; ``clinical.csv`` the covariates and outcome
alone, keyed by ``patient_id`` (what ``medsight data join`` adds to a manifest).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from medsight.data.phantoms.base import Progress, case_rng, default_workers, register_phantom, run_cases, write_table

SIZE = 128
PIXEL_MM = 1.8
GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
# (EF range %, LV end-diastolic cavity radius at the base mm, wall thickness mm, RV EF range %)
PHYSIOLOGY = {
    "NOR": ((56, 70), (22, 26), (7, 10), (50, 65)),
    "MINF": ((25, 45), (24, 30), (7, 10), (40, 60)),
    "DCM": ((10, 38), (30, 37), (6, 8), (30, 55)),
    "HCM": ((62, 80), (17, 22), (14, 22), (55, 70)),
    "RV": ((52, 68), (20, 25), (7, 10), (15, 35)),
}
HAZARD = {"ef": -0.045, "age": 0.04, "hypertension": 0.4, "diabetes": 0.5, "male": 0.2}


def _contraction(phase: float, end_systole: float) -> float:
    """0 at end-diastole, 1 at end-systole, back to 0 after rapid filling and atrial kick."""
    if phase <= end_systole:
        return 0.5 - 0.5 * math.cos(math.pi * phase / end_systole)
    relax = min(1.0, (phase - end_systole) / (0.82 - end_systole))
    return 0.5 + 0.5 * math.cos(math.pi * relax)


class _Heart:
    """Geometry of one heart; ``masks(c)`` rasterises it at contraction ``c`` (0 = ED, 1 = ES)."""

    def __init__(self, rng: np.random.Generator, group: str, slices: int) -> None:
        ef, radius, wall, rv_ef = PHYSIOLOGY[group]
        self.group = group
        self.slices = slices
        self.radius = rng.uniform(*radius)
        self.wall = rng.uniform(*wall)
        self.ef_target = rng.uniform(*ef) / 100
        self.rv_ef = rng.uniform(*rv_ef) / 100
        self.rv_scale = rng.uniform(1.25, 1.5) if group == "RV" else rng.uniform(0.95, 1.15)
        self.centre = np.array([rng.normal(0, 6), rng.normal(0, 6)])
        self.septum = rng.uniform(math.radians(160), math.radians(200))  # RV lies on this side
        self.drift = rng.normal(0, 1.0, size=(slices, 2))
        self.scar = (rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 1.2)) if group == "MINF" else None
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        self.x = (xx - (SIZE - 1) / 2) * PIXEL_MM
        self.y = (yy - (SIZE - 1) / 2) * PIXEL_MM
        self.es_scale = math.sqrt(1.0 - self.ef_target)  # refined by solve()
        self.rv_es_scale = math.sqrt(1.0 - self.rv_ef)
        self._slices: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _profile(self, k: int) -> float:
        """Cavity radius factor from base (k = 0) to apex."""
        u = k / max(self.slices - 1, 1)
        return math.sqrt(max(1.0 - (0.95 * u) ** 2, 0.0))

    def _slice(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slice ``k``'s distance from the LV axis, wall thickness and scar (the same at every
        contraction: computed once, as ``masks`` is drawn ~40 times per case)."""
        if k not in self._slices:
            cx, cy = self.centre + self.drift[k]
            dx, dy = self.x - cx, self.y - cy
            r = np.hypot(dx, dy)
            wall = np.full_like(r, self.wall)
            scar = np.zeros_like(r, bool)
            if self.scar is not None:
                delta = np.angle(np.exp(1j * (np.arctan2(dy, dx) - self.scar[0])))
                scar = np.abs(delta) < self.scar[1] / 2
                wall = np.where(scar, self.wall * 0.5, wall)
            self._slices[k] = r, wall, scar
        return self._slices[k]

    def masks(self, c: float) -> np.ndarray:
        """Label map (slices, y, x): 1 RV cavity, 2 myocardium, 3 LV cavity."""
        out = np.zeros((self.slices, SIZE, SIZE), np.uint8)
        scale = 1.0 - c * (1.0 - self.es_scale)
        rv_scale = 1.0 - c * (1.0 - self.rv_es_scale)
        for k in range(self.slices):
            cx, cy = self.centre + self.drift[k]
            r, wall, scar = self._slice(k)
            r_ed = self.radius * self._profile(k)
            cavity_r = r_ed * np.where(scar, 1.0 - c * 0.05, scale)  # the scar barely moves
            outer = np.sqrt(cavity_r**2 + (r_ed + wall) ** 2 - r_ed**2)  # myocardial area is kept
            out[k][r < outer] = 2
            out[k][r < cavity_r] = 3
            if k < math.ceil(self.slices * 0.75):  # the RV covers the basal and mid slices
                size = self.radius * self.rv_scale * self._profile(k) * rv_scale
                # a crescent: an ellipse long across the septum, centred close enough to wrap the LV
                shift = r_ed + self.wall + size * 0.15
                rx, ry = cx + math.cos(self.septum) * shift, cy + math.sin(self.septum) * shift
                along, across = size * 0.95, size * 1.9
                u = ((self.x - rx) * math.cos(self.septum) + (self.y - ry) * math.sin(self.septum)) / along
                v = (-(self.x - rx) * math.sin(self.septum) + (self.y - ry) * math.cos(self.septum)) / across
                rv = (u**2 + v**2 < 1.0) & (r > outer + 2.5)
                out[k][rv & (out[k] == 0)] = 1
        return out

    def solve(self, voxel_ml: float) -> tuple[float, float, float]:
        """Find the ES sizes that give the intended EF on the rasterised masks; return EDV, ESV, mass."""
        ed = self.masks(0.0)
        edv = float((ed == 3).sum())
        lo, hi = 0.05, 1.0
        for _ in range(30):
            self.es_scale = (lo + hi) / 2
            ef = 1.0 - float((self.masks(1.0) == 3).sum()) / edv
            if abs(ef - self.ef_target) < 0.001:
                break
            lo, hi = (self.es_scale, hi) if ef > self.ef_target else (lo, self.es_scale)
        esv = float((self.masks(1.0) == 3).sum())
        return edv * voxel_ml, esv * voxel_ml, float((ed == 2).sum()) * voxel_ml * 1.05


def _image(labels: np.ndarray, body: np.ndarray) -> np.ndarray:
    """bSSFP-like intensities for one frame (slices, y, x): the heart drawn over the static body."""
    level = np.array([0.0, 0.85, 0.22, 0.9], np.float32)  # background, RV blood, myocardium, LV blood
    img = np.where(labels > 0, level[labels], body)
    return gaussian_filter(img, (0, 0.8, 0.8))


def _body(rng: np.random.Generator, slices: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    x, y = (xx - SIZE / 2) / (SIZE / 2), (yy - SIZE / 2) / (SIZE / 2)
    img = np.where(x**2 / 0.95 + y**2 / 0.75 < 1.0, 0.35, 0.02).astype(np.float32)
    img[(x - 0.55) ** 2 / 0.12 + (y + 0.1) ** 2 / 0.3 < 1] = 0.06  # lung
    img[(x + 0.6) ** 2 / 0.1 + (y + 0.1) ** 2 / 0.3 < 1] = 0.06  # lung
    img[(x + 0.3) ** 2 / 0.2 + (y - 0.55) ** 2 / 0.08 < 1] = 0.45  # liver
    fat = np.abs(x**2 / 0.95 + y**2 / 0.75 - 0.93) < 0.05
    img[fat] = 0.8  # subcutaneous fat
    texture = gaussian_filter(rng.standard_normal((slices, SIZE, SIZE), dtype=np.float32), (0, 2, 2))
    return img[None] * (1 + 0.15 * texture)


def _case(out: Path, seed: int, cine: bool, index: int) -> list:
    rng = case_rng(seed, index)
    group = str(rng.choice(GROUPS))
    slices, frames = int(rng.integers(8, 12)), int(rng.integers(20, 31))
    spacing = rng.uniform(8.0, 10.0)
    heart = _Heart(rng, group, slices)
    voxel_ml = PIXEL_MM * PIXEL_MM * spacing / 1000.0
    edv, esv, mass = heart.solve(voxel_ml)
    es_frame = max(2, round(frames * rng.uniform(0.32, 0.4)))
    body = _body(rng, slices)
    shading = np.exp(gaussian_filter(rng.standard_normal((1, SIZE, SIZE)), (0, 25, 25)) * 8).astype(np.float32)
    drawn = range(frames) if cine else (0, es_frame)  # without the cine only the labelled frames are drawn
    images = np.zeros((len(drawn), slices, SIZE, SIZE), np.float32)
    label_frames = {}
    for i, t in enumerate(drawn):
        labels = heart.masks(_contraction(t / frames, es_frame / frames))  # exactly 0 at ED, 1 at ES
        if t in (0, es_frame):
            label_frames[t] = labels
        images[i] = _image(labels, body) * shading
    noise = rng.uniform(0.015, 0.04)
    images = np.hypot(
        images + noise * rng.standard_normal(images.shape, dtype=np.float32),
        noise * rng.standard_normal(images.shape, dtype=np.float32),
    )
    images = (images * rng.uniform(200, 600)).astype(np.int16)
    frame = {t: images[i] for i, t in enumerate(drawn)}

    pid = f"patient{index + 1:03d}"
    folder = out / "training" / pid
    folder.mkdir(parents=True)
    affine = np.diag([PIXEL_MM, PIXEL_MM, spacing, 1.0])
    if cine:  # NIfTI order (x, y, z, t): our (t, z, y, x) reversed
        nib.save(nib.Nifti1Image(np.transpose(images, (3, 2, 1, 0)), affine), folder / f"{pid}_4d.nii.gz")
    for t, labels in label_frames.items():
        name = f"{pid}_frame{t + 1:02d}"
        nib.save(nib.Nifti1Image(np.transpose(frame[t], (2, 1, 0)), affine), folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.transpose(labels, (2, 1, 0)), affine), folder / f"{name}_gt.nii.gz")
    height, weight = rng.normal(172, 9), rng.normal(78, 14)
    (folder / "Info.cfg").write_text(
        f"ED: 1\nES: {es_frame + 1}\nGroup: {group}\nHeight: {height:.1f}\nNbFrame: {frames}\nWeight: {weight:.1f}\n"
    )
    ef_measured = (edv - esv) / edv
    age, male = rng.uniform(25, 85), rng.random() < 0.6
    hypertension, diabetes = rng.random() < 0.35 + 0.004 * (age - 50), rng.random() < 0.15
    log_hazard = (
        HAZARD["ef"] * (100 * ef_measured - 55) + HAZARD["age"] * (age - 60)
        + HAZARD["hypertension"] * hypertension + HAZARD["diabetes"] * diabetes + HAZARD["male"] * male
    )  # fmt: skip
    event_time = rng.exponential(1.0 / (0.08 * math.exp(log_hazard)))
    censor_time = rng.uniform(1.0, 8.0)
    return [
        pid, group, round(heart.ef_target, 4), round(ef_measured, 4), round(edv, 2), round(esv, 2), round(mass, 2),
        round(age, 1), "M" if male else "F", round(height, 1), round(weight, 1), int(hypertension), int(diabetes),
        round(min(event_time, censor_time), 3), int(event_time <= censor_time),
    ]  # fmt: skip


@register_phantom(
    "cardiac-function",
    layout="acdc",
    description="short-axis cine MRI with known EF, covariates and outcome; ACDC layout",
)
def write_cardiac(out: Path, cases: int, seed: int, progress: Progress | None, *, cine: bool = True) -> None:
    """``training/patientNNN/`` folders (Info.cfg, 4D cine, ED/ES frames and masks) and the truth table.

    ``cine=False`` writes no 4D cine, only the ED and ES frames (what training and measuring read), in
    a tenth of the time; those cases differ from the ones with a cine (fewer random draws)."""
    make = partial(_case, out, seed, cine)
    rows = list(run_cases(make, cases, workers=default_workers(), progress=progress, stage="making cardiac cines"))
    # what a hospital's clinical export would hold: covariates and follow-up per patient, keyed as the manifest
    # (height and weight are in each Info.cfg, as in ACDC)
    clinical = ["patient_id", "age", "sex", "hypertension", "diabetes", "years", "event"]
    write_table(out / "clinical.csv", clinical, [[row[0], row[7], row[8], *row[11:]] for row in rows])
    write_table(
        out / "phantom_truth.csv",
        [
            "patient",
            "group",
            "ef_intended",
            "ef_masks",
            "edv_ml",
            "esv_ml",
            "lv_mass_g",
            "age",
            "sex",
            "height",
            "weight",
            "hypertension",
            "diabetes",
            "years",
            "event",
        ],
        rows,
    )
