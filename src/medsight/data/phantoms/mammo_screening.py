"""Four-view screening mammograms with benign and malignant findings (VinDr-Mammo layout, DICOM).

Each exam has CC and MLO views of both breasts. A breast is a compressed half-ellipse
against the chest wall with a skin line, nipple, darker subcutaneous fat near the edge
(thinner tissue), fibroglandular texture whose amount follows the BI-RADS density category
(A-D), and in MLO views the pectoral muscle. A finding is placed once in breast coordinates
(depth from the nipple, position across the breast) and drawn in both views of that breast:
masses (benign: round or oval with sharp margins; malignant: irregular or spiculated) and
calcification clusters (benign: few coarse, scattered; malignant: many fine, pleomorphic,
tightly clustered). Breast BI-RADS follows the finding (1 normal, 2-3 benign, 4-5
malignant). Exposure, contrast, noise, photometric interpretation (30 % MONOCHROME1),
density and breast size are drawn independently of malignancy. ``phantom_truth.csv`` has
the lesion kind, pathology and centre in every view. ``clinical.csv`` has, per exam (the
patient unit, keyed ``patient_id`` as the manifest is), the woman's age, a family history of
breast cancer and a simulated follow-up (years to a later cancer, event flag) whose hazard rises
with breast density (seen only in the images), age and family history: what a risk model that
reads the images beside the table can learn and one of the table alone cannot.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydicom.uid import generate_uid
from scipy.ndimage import gaussian_filter

from medsight.core.geometry import Geometry
from medsight.core.volume import Volume, VolumeMetadata
from medsight.data.phantoms.base import Progress, case_rng, default_workers, register_phantom, run_cases, write_table
from medsight.io.dicom_write import write_dicom_image

ROWS, COLS = 512, 416
SPACING_MM = 0.5
DENSITIES = ("A", "B", "C", "D")
DENSITY_SHARE = (0.1, 0.4, 0.4, 0.1)
GLAND_FRACTION = {"A": 0.12, "B": 0.35, "C": 0.6, "D": 0.82}
# finding per breast: kind, pathology, probability
# later cancer: log hazard per density category above A, per year of age above 55, and with a family history
RISK = {"density": 1.2, "age": 0.03, "family": 0.7, "base": 0.02}
FINDINGS = (
    ("none", "normal", 0.7),
    ("mass", "benign", 0.08),
    ("calcification", "benign", 0.07),
    ("mass", "malignant", 0.09),
    ("calcification", "malignant", 0.06),
)


def _breast(rng: np.random.Generator, view: str, depth: float, height: float) -> tuple[np.ndarray, dict]:
    """Breast geometry on a chest-wall-left canvas: mask, thickness and landmarks."""
    yy, xx = np.mgrid[0:ROWS, 0:COLS].astype(np.float32)
    cy = ROWS * (0.5 if view == "CC" else 0.56)
    a, b = COLS * depth, ROWS * height / 2
    if view == "MLO":  # longer towards the axilla and down to the inframammary fold
        b *= 1.12
    r = (xx / a) ** 2 + ((yy - cy) / b) ** 2
    mask = (r <= 1.0).astype(np.float32)
    thickness = np.clip(1.0 - r, 0, 1) ** 0.35 * mask  # compressed: thinner towards the skin
    info = {"cy": cy, "a": a, "b": b, "nipple": (a, cy)}
    if view == "MLO":
        pect = Image.new("L", (COLS, ROWS), 0)
        w = COLS * rng.uniform(0.22, 0.35)
        ImageDraw.Draw(pect).polygon([(0, 0), (w, 0), (0, ROWS * rng.uniform(0.45, 0.65))], fill=255)
        info["pectoral"] = np.asarray(pect.filter(ImageFilter.GaussianBlur(3)), np.float32) / 255.0
    return mask, {**info, "thickness": thickness}


def _texture(rng: np.random.Generator, mask: np.ndarray, info: dict, density: str) -> np.ndarray:
    """Fibroglandular tissue: multi-scale noise, strongest behind the nipple, thresholded to the density."""
    # ducts and ligaments run towards the nipple: smoother along x than across
    field = sum(
        gaussian_filter(rng.normal(size=(ROWS, COLS)), (s, 2.5 * s)) * w for s, w in ((2, 0.35), (5, 1.0), (12, 1.3))
    )
    yy, xx = np.mgrid[0:ROWS, 0:COLS].astype(np.float32)
    centre = ((xx - info["a"] * 0.5) / (info["a"] * 0.5)) ** 2 + ((yy - info["cy"]) / (info["b"] * 0.8)) ** 2
    field = field / field.std() + 2.5 * np.exp(-centre)  # glandular tissue gathers centrally, fat at the edges
    inside = field[mask > 0]
    threshold = np.quantile(inside, 1.0 - GLAND_FRACTION[density])
    gland = 1.0 / (1.0 + np.exp(-(field - threshold) * 2.0))
    return gland * mask


def _mass(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, r: float, malignant: bool) -> None:
    if not malignant:
        e = rng.uniform(0.7, 1.0)
        draw.ellipse((x - r, y - r * e, x + r, y + r * e), fill=255)
        return
    points = []
    for t in np.linspace(0, 2 * math.pi, 24, endpoint=False):
        radius = r * rng.uniform(0.65, 1.2)
        points.append((x + radius * math.cos(t), y + radius * math.sin(t)))
    draw.polygon(points, fill=255)
    for _ in range(int(rng.integers(8, 16))):  # spicules
        t = rng.uniform(0, 2 * math.pi)
        length = r * rng.uniform(1.6, 3.0)
        draw.line([(x, y), (x + length * math.cos(t), y + length * math.sin(t))], fill=200, width=2)


def _calcifications(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, malignant: bool) -> None:
    if malignant:  # fine pleomorphic, tight, often linear-branching
        angle = rng.uniform(0, math.pi)
        for _ in range(int(rng.integers(12, 30))):
            along, across = rng.normal(0, 7), rng.normal(0, 2.5)
            px, py = (
                x + along * math.cos(angle) - across * math.sin(angle),
                y + along * math.sin(angle) + across * math.cos(angle),
            )
            size = rng.uniform(0.6, 1.6)
            draw.ellipse((px - size, py - size * rng.uniform(0.5, 1.5), px + size, py + size), fill=255)
    else:  # few coarse, round, scattered
        for _ in range(int(rng.integers(3, 8))):
            px, py, size = x + rng.normal(0, 18), y + rng.normal(0, 18), rng.uniform(1.8, 3.5)
            draw.ellipse((px - size, py - size, px + size, py + size), fill=255)


def _render(
    rng: np.random.Generator, view: str, density: str, finding: dict, size: tuple[float, float], exposure: dict
) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    mask, info = _breast(rng, view, *size)
    gland = _texture(rng, mask, info, density)
    img = info["thickness"] * (0.3 + 0.35 * gland)
    if "pectoral" in info:
        img = np.maximum(img, 0.8 * info["pectoral"] * mask)
    box = None
    if finding["kind"] != "none":
        # depth from the nipple towards the chest wall; 'across' is superior-inferior (MLO oblique)
        x = info["a"] * (1.0 - finding["depth"])
        y = info["cy"] + finding["across"] * info["b"] * (0.75 if view == "CC" else 0.85) + (12 if view == "MLO" else 0)
        layer = Image.new("L", (COLS, ROWS), 0)
        draw = ImageDraw.Draw(layer)
        r = finding["radius"]
        if finding["kind"] == "mass":
            _mass(draw, case_rng(finding["seed"], 0, stream=7), x, y, r, finding["malignant"])
            lesion = np.asarray(
                layer.filter(ImageFilter.GaussianBlur(1.2 if finding["malignant"] else 0.6)), np.float32
            )
            img += 0.3 * lesion / 255.0 * mask
        else:
            _calcifications(draw, case_rng(finding["seed"], 0, stream=7), x, y, finding["malignant"])
            lesion = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.5)), np.float32)
            img += 0.55 * lesion / 255.0 * mask
        ys, xs = np.nonzero(lesion * mask > 40)
        if xs.size:
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    nipple = Image.new("L", (COLS, ROWS), 0)
    nx, ny = info["nipple"]
    ImageDraw.Draw(nipple).ellipse((nx - 6, ny - 5, nx + 3, ny + 5), fill=255)
    img += 0.15 * np.asarray(nipple.filter(ImageFilter.GaussianBlur(2)), np.float32) / 255.0
    img = np.clip(img, 0, None) ** exposure["gamma"] * exposure["gain"]
    img = img + rng.normal(0, exposure["noise"], size=img.shape) * mask
    return (np.clip(img, 0, 1) * 4095).astype(np.uint16), box


def _finding(rng: np.random.Generator, seed: int, index: int) -> dict:
    probs = np.array([p for *_, p in FINDINGS])
    kind, pathology, _ = FINDINGS[int(rng.choice(len(FINDINGS), p=probs / probs.sum()))]
    return {
        "kind": kind,
        "pathology": pathology,
        "malignant": pathology == "malignant",
        "depth": rng.uniform(0.25, 0.75),
        "across": rng.uniform(-0.55, 0.55),
        "radius": rng.uniform(7, 16),
        "seed": seed * 100_003 + index,
    }


def _birads(finding: dict, rng: np.random.Generator) -> int:
    if finding["kind"] == "none":
        return 1
    if finding["malignant"]:
        return int(rng.choice((4, 5), p=(0.45, 0.55)))
    return int(rng.choice((2, 3), p=(0.7, 0.3)))


_COMMON = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
           "breast_birads", "breast_density"]  # fmt: skip


def _exam_of(out: Path, seed: int, index: int) -> tuple[list, list, list, list]:
    """Exam ``index`` from its own random stream (in a worker process), and its clinical row."""
    breasts, findings, truth = _exam(out, case_rng(seed, index), seed, index)
    return breasts, findings, truth, _clinical(str(breasts[0][0]), str(breasts[0][8]).split()[-1], seed, index)


def _clinical(study: str, density: str, seed: int, index: int) -> list:
    """Age, family history and a simulated follow-up for a later cancer (a stream of its own, so that the
    images stay those of the same seed without it)."""
    rng = np.random.default_rng([seed, index, 0x5EED])
    age, family = rng.uniform(40, 75), rng.random() < 0.15
    log_hazard = (RISK["density"] * DENSITIES.index(density) + RISK["age"] * (age - 55)
                  + RISK["family"] * family)  # fmt: skip
    event_time = rng.exponential(1.0 / (RISK["base"] * math.exp(log_hazard)))
    censor_time = rng.uniform(2.0, 10.0)
    return [study, round(age, 1), int(family), round(min(event_time, censor_time), 3), int(event_time <= censor_time)]


def _exam(out: Path, rng: np.random.Generator, seed: int, index: int) -> tuple[list, list, list]:
    """Write one exam's four DICOM images; return its breast, finding and truth rows."""
    study = rng.bytes(16).hex()
    split = "test" if rng.random() < 0.2 else "training"
    density = DENSITIES[int(rng.choice(4, p=DENSITY_SHARE))]
    exposure = {"gamma": rng.uniform(0.8, 1.3), "gain": rng.uniform(0.75, 1.0), "noise": rng.uniform(0.005, 0.02)}
    photometric = "MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2"
    size = (rng.uniform(0.55, 0.85), rng.uniform(0.7, 0.92))
    folder = out / "images" / study
    folder.mkdir(parents=True)
    study_uid = generate_uid(entropy_srcs=[study])  # the four views share their exam's StudyInstanceUID
    breasts, findings, truth = [], [], []
    for laterality in ("L", "R"):
        finding = _finding(rng, seed, index * 2 + (laterality == "R"))
        category = _birads(finding, rng)
        for view in ("CC", "MLO"):
            image_id = rng.bytes(16).hex()
            pixels, box = _render(rng, view, density, finding, size, exposure)
            if laterality == "R":  # right breasts face the other way
                pixels = pixels[:, ::-1]
                box = None if box is None else (COLS - box[2], box[1], COLS - box[0], box[3])
            volume = Volume(
                np.ascontiguousarray(pixels)[None, None],
                Geometry(spacing=(1.0, SPACING_MM, SPACING_MM)),
                VolumeMetadata(modality="MG", patient_id=study[:10]),
            )
            write_dicom_image(
                volume,
                folder / f"{image_id}.dicom",
                modality="MG",
                photometric=photometric,
                bits_stored=12,
                laterality=laterality,
                view=view,
                study_uid=study_uid,
            )
            row = [study, "s" + study[:8], image_id, laterality, view, ROWS, COLS, f"BI-RADS {category}"]
            breasts.append([*row, f"DENSITY {density}", split])
            centre: tuple[float | None, float | None] = (None, None)
            if box is not None:
                label = "Mass" if finding["kind"] == "mass" else "Suspicious Calcification"
                findings.append([*row, f"DENSITY {density}", f"['{label}']", f"BI-RADS {category}", *box, split])
                centre = (round((box[0] + box[2]) / 2, 1), round((box[1] + box[3]) / 2, 1))
            truth.append([study, image_id, laterality, view, finding["kind"], finding["pathology"], *centre])
    return breasts, findings, truth


@register_phantom(
    "mammo-screening",
    layout="vindr-mammo",
    description="4-view screening mammograms with benign/malignant masses and calcifications; VinDr-Mammo layout",
)
def write_mammo(out: Path, cases: int, seed: int, progress: Progress | None) -> None:
    """``cases`` exams: ``images/<study>/<image>.dicom`` and the two VinDr annotation CSVs."""
    breasts, findings, truth, clinical = [], [], [], []
    exams = run_cases(partial(_exam_of, out, seed), cases, workers=default_workers(), progress=progress,
                      stage="making mammography exams")  # fmt: skip
    for rows in exams:
        breasts += rows[0]
        findings += rows[1]
        truth += rows[2]
        clinical.append(rows[3])
    write_table(out / "clinical.csv", ["patient_id", "age", "family_history", "years", "event"], clinical)
    box_columns = ["finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax", "split"]
    write_table(out / "breast-level_annotations.csv", [*_COMMON, "split"], breasts)
    write_table(out / "finding_annotations.csv", [*_COMMON, *box_columns], findings)
    truth_columns = ["study_id", "image_id", "laterality", "view", "kind", "pathology", "centre_x", "centre_y"]
    write_table(out / "phantom_truth.csv", truth_columns, truth)
