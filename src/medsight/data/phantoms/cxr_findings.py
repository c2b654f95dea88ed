"""Chest radiographs with co-occurring findings and boxes (NIH ChestX-ray14 layout).

Anatomy: torso and soft tissue, two lung fields with costophrenic angles, mediastinum and
spine, trachea, heart, diaphragm domes and abdomen, clavicles, posterior ribs, and vascular
markings fanning out from the hila. Exposure, contrast, rotation, scale, position, noise and
the view (PA/AP) vary independently of the findings. Findings: nodule, effusion
(a meniscus at a lung base, from a blunted costophrenic angle to a third of the lung),
cardiomegaly (cardiothoracic ratio > 0.5; normal hearts range 0.36-0.5, so many cases sit near
the boundary, and AP views magnify every heart by about 10 %), consolidation
(patchy opacity), pneumothorax (a lucent rim without markings behind a pleural line) and
atelectasis (a band of opacity with volume loss). They co-occur as in practice (effusion
with cardiomegaly and atelectasis, consolidation with effusion). Patients have one to three
follow-up images. ``phantom_truth.csv`` holds the cardiothoracic ratio and findings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medsight.data.phantoms.base import Progress, case_rng, default_workers, register_phantom, run_cases, write_table

SIZE = 512
FINDINGS = ("Nodule", "Effusion", "Cardiomegaly", "Consolidation", "Pneumothorax", "Atelectasis")
PREVALENCE = {"Nodule": 0.12, "Cardiomegaly": 0.14, "Consolidation": 0.1, "Pneumothorax": 0.08}
Point = tuple[float, float]
Draw = Callable[[ImageDraw.ImageDraw], None]


class _Frame:
    """Maps normalised body coordinates (x right, y down, roughly -0.5..0.5) to pixels."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.angle = math.radians(rng.normal(0.0, 2.5))
        self.scale = rng.uniform(0.88, 1.05)
        self.shift = (rng.normal(0.0, 0.02), rng.normal(0.02, 0.02))

    def __call__(self, x: float, y: float) -> Point:
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = (c * x - s * y) * self.scale + self.shift[0], (s * x + c * y) * self.scale + self.shift[1]
        return ((u + 0.5) * SIZE, (v + 0.5) * SIZE)

    def poly(self, points: Sequence[Point]) -> list[Point]:
        return [self(x, y) for x, y in points]


def _layer(draw: Draw, blur: float) -> np.ndarray:
    """One drawn structure (0-1), blurred; the blur runs on the drawing's box and a margin wider than
    the blur reaches (beyond it everything stays exactly 0: the same pixels as blurring the film)."""
    img = Image.new("L", (SIZE, SIZE), 0)
    draw(ImageDraw.Draw(img))
    box = img.getbbox()
    if box is None:
        return np.zeros((SIZE, SIZE), np.float32)
    if blur > 0:
        reach = int(4 * blur) + 4  # PIL's three box passes reach ~3 x (blur + 1) pixels
        box = (max(0, box[0] - reach), max(0, box[1] - reach), min(SIZE, box[2] + reach), min(SIZE, box[3] + reach))
    out = np.zeros((SIZE, SIZE), np.float32)
    part = img.crop(box)
    if blur > 0:
        part = part.filter(ImageFilter.GaussianBlur(blur))
    out[box[1] : box[3], box[0] : box[2]] = np.asarray(part, np.float32) / 255.0
    return out


def _ellipse(frame: _Frame, cx: float, cy: float, rx: float, ry: float, n: int = 40) -> list[Point]:
    return frame.poly([(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, n)])


def _lung_outline(side: float, rng: np.random.Generator, base_y: float) -> list[Point]:
    """One lung field (side -1: image left = patient right); y grows downwards."""
    apex = (side * rng.uniform(0.14, 0.18), -0.36)
    lateral = [(side * (0.18 + 0.22 * math.sin(t)), -0.36 + 0.5 * t / (math.pi / 2)) for t in np.linspace(0.2, 1.5, 8)]
    cp = (side * rng.uniform(0.39, 0.42), base_y + 0.02)
    dome = [(side * (0.39 - 0.33 * f), base_y - 0.08 * math.sin(math.pi * f)) for f in np.linspace(0.1, 1.0, 8)]
    medial = [(side * 0.065, base_y - 0.05), (side * 0.06, -0.1), (side * 0.08, -0.3)]
    return [apex, *lateral, cp, *dome, *medial]


def _in_lung(rng: np.random.Generator, side: float, region: str = "any") -> Point:
    y_lo, y_hi = {"any": (-0.22, 0.12), "upper": (-0.28, -0.1), "lower": (0.0, 0.12)}[region]
    return side * rng.uniform(0.14, 0.33), rng.uniform(y_lo, y_hi)


def _box(mask: np.ndarray, threshold: float = 0.35) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask > threshold)
    if xs.size == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)


def _choose_findings(rng: np.random.Generator) -> set[str]:
    found = {f for f, p in PREVALENCE.items() if rng.random() < p}
    p_effusion = 0.45 if "Cardiomegaly" in found else 0.25 if "Consolidation" in found else 0.07
    if rng.random() < p_effusion:
        found.add("Effusion")
    p_atelectasis = 0.4 if "Effusion" in found else 0.07
    if rng.random() < p_atelectasis:
        found.add("Atelectasis")
    return found


def _cardiothoracic_ratio(rng: np.random.Generator, enlarged: bool) -> float:
    """Normal hearts 0.36-0.5; enlarged ones mostly just above 0.5 (borderline), a few far above."""
    if enlarged:
        return float(min(0.5 + rng.exponential(0.05), 0.68))
    return float(rng.uniform(0.36, 0.5))


def radiograph(
    rng: np.random.Generator, findings: set[str], *, view: str = "PA"
) -> tuple[np.ndarray, list[dict], float]:
    """One chest radiograph (uint8, 512x512), its finding boxes, and its cardiothoracic ratio."""
    frame = _Frame(rng)
    base_y = rng.uniform(0.12, 0.18)
    img = np.zeros((SIZE, SIZE), np.float32)
    torso = [(-0.46, -0.5), (0.46, -0.5), (0.48, 0.5), (-0.48, 0.5)]
    img += rng.uniform(0.38, 0.62) * _layer(lambda d: d.polygon(frame.poly(torso), fill=255), 25)  # habitus
    lungs = {side: _lung_outline(side, rng, base_y + (0.02 if side < 0 else 0.0)) for side in (-1.0, 1.0)}
    lung_mask = {s: _layer(lambda d, s=s: d.polygon(frame.poly(lungs[s]), fill=255), 6) for s in lungs}
    both = np.clip(lung_mask[-1.0] + lung_mask[1.0], 0, 1)
    img -= rng.uniform(0.25, 0.38) * both  # depth of inspiration
    spine = [(-0.06, -0.5), (0.06, -0.5), (0.06, 0.5), (-0.06, 0.5)]
    img += 0.14 * _layer(lambda d: d.polygon(frame.poly(spine), fill=255), 8)
    img -= 0.1 * _layer(lambda d: d.line([frame(0, -0.5), frame(0.01, -0.12)], fill=255, width=14), 4)  # trachea

    thorax_width = 0.82
    ctr = _cardiothoracic_ratio(rng, "Cardiomegaly" in findings)
    shown = ctr * (rng.uniform(1.05, 1.15) if view == "AP" else 1.0)  # AP: the heart is further from the film
    heart_half = shown * thorax_width / 2
    heart = _ellipse(frame, 0.05, base_y - 0.09, heart_half, rng.uniform(0.11, 0.13))
    img += rng.uniform(0.22, 0.32) * _layer(lambda d: d.polygon(heart, fill=255), 6) * (0.3 + both)

    def ribs(d: ImageDraw.ImageDraw) -> None:
        for side in (-1.0, 1.0):
            for k in range(10):
                y0 = -0.34 + 0.052 * k + rng.normal(0, 0.004)
                pts = [(side * (0.06 + 0.32 * f), y0 + 0.09 * f * f - 0.05 * f) for f in np.linspace(0, 1, 12)]
                d.line(frame.poly(pts), fill=255, width=7)

    img += 0.09 * _layer(ribs, 1.5) * (0.4 + both)
    clavicles = lambda d: [  # noqa: E731 - two lines
        d.line(frame.poly([(s * 0.05, -0.32), (s * 0.3, -0.37)]), fill=255, width=11) for s in (-1.0, 1.0)
    ]
    img += 0.16 * _layer(clavicles, 2)

    def markings(d: ImageDraw.ImageDraw) -> None:
        for side in (-1.0, 1.0):
            for _ in range(14):
                x, y = side * 0.1, rng.uniform(-0.1, 0.05)
                angle = math.atan2(rng.uniform(-0.3, 0.3), side)
                pts = [(x, y)]
                for _ in range(10):
                    angle += rng.normal(0, 0.2)
                    x, y = x + 0.025 * math.cos(angle), y + 0.025 * math.sin(angle)
                    pts.append((x, y))
                d.line(frame.poly(pts), fill=255, width=3)

    img += 0.07 * _layer(markings, 1.2) * both
    boxes = _findings(img, rng, frame, findings, lungs, lung_mask, base_y)
    return _expose(img, rng), boxes, ctr


def _findings(
    img: np.ndarray,
    rng: np.random.Generator,
    frame: _Frame,
    findings: set[str],
    lungs: dict[float, list[Point]],
    lung_mask: dict[float, np.ndarray],
    base_y: float,
) -> list[dict]:
    boxes = []

    def add(label: str, mask: np.ndarray) -> None:
        box = _box(mask)
        if box is not None:
            boxes.append({"label": label, "x": box[0], "y": box[1], "w": box[2], "h": box[3]})

    if "Nodule" in findings:
        side = rng.choice((-1.0, 1.0))
        cx, cy = _in_lung(rng, side)
        r = rng.uniform(0.012, 0.03)
        mask = _layer(lambda d: d.polygon(_ellipse(frame, cx, cy, r, r * rng.uniform(0.8, 1.2)), fill=255), 1.2)
        img += rng.uniform(0.14, 0.24) * mask
        add("Nodule", mask)
    if "Consolidation" in findings:
        side = rng.choice((-1.0, 1.0))
        cx, cy = _in_lung(rng, side, rng.choice(("upper", "lower")))
        blobs = [(cx + rng.normal(0, 0.04), cy + rng.normal(0, 0.03), rng.uniform(0.02, 0.05)) for _ in range(7)]
        mask = _layer(lambda d: [d.polygon(_ellipse(frame, x, y, r, r), fill=255) for x, y, r in blobs], 5)
        mask *= lung_mask[side]
        img += rng.uniform(0.18, 0.28) * mask
        add("Consolidation", mask)
    if "Atelectasis" in findings:
        side = rng.choice((-1.0, 1.0))
        y = base_y - rng.uniform(0.06, 0.12)
        band = [(side * 0.1, y), (side * 0.3, y - 0.03), (side * 0.3, y - 0.005), (side * 0.1, y + 0.025)]
        mask = _layer(lambda d: d.polygon(frame.poly(band), fill=255), 2.5) * lung_mask[side]
        img += 0.2 * mask
        add("Atelectasis", mask)
    if "Effusion" in findings:
        sides = (-1.0, 1.0) if rng.random() < 0.35 else (rng.choice((-1.0, 1.0)),)
        total = np.zeros_like(img)
        for side in sides:
            level = base_y - min(0.005 + rng.exponential(0.05), 0.18)  # mostly small: a blunted angle
            meniscus = [(side * (0.06 + 0.33 * f), level - 0.05 * f**2) for f in np.linspace(0, 1, 10)]
            fluid = [*meniscus, (side * 0.42, 0.45), (side * 0.06, 0.45)]
            mask = _layer(lambda d, fluid=fluid: d.polygon(frame.poly(fluid), fill=255), 5) * lung_mask[side]
            total = np.maximum(total, mask)
            add("Effusion", mask)
        img += rng.uniform(0.18, 0.3) * total
    if "Pneumothorax" in findings:
        side = rng.choice((-1.0, 1.0))
        depth = rng.uniform(0.03, 0.07)
        rim = [
            (side * (0.2 + 0.16 * math.sin(t)) - side * depth * 0.5, -0.33 + 0.55 * t / (math.pi / 2))
            for t in np.linspace(0.15, 1.2, 10)
        ]
        outer = _lung_outline(side, rng, base_y)[:9]
        region = _layer(lambda d: d.polygon(frame.poly([*outer, *reversed(rim)]), fill=255), 2) * lung_mask[side]
        img -= 0.08 * region  # no lung markings: darker than aerated lung
        img += 0.09 * _layer(lambda d: d.line(frame.poly(rim), fill=255, width=2), 0.6)  # visceral pleural line
        add("Pneumothorax", region)
    return boxes


def _expose(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    texture = Image.fromarray((rng.random((SIZE // 4, SIZE // 4)) * 255).astype(np.uint8))
    texture = texture.resize((SIZE, SIZE), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))
    img = img + 0.03 * (np.asarray(texture, np.float32) / 255.0 - 0.5)
    lo, hi = np.percentile(img, [0.5, 99.5])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    img = img ** rng.uniform(0.7, 1.4) * rng.uniform(0.8, 1.0) + rng.uniform(0.0, 0.08)
    img = img + rng.normal(0, rng.uniform(0.005, 0.02), size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@register_phantom(
    "cxr-findings",
    layout="nih-cxr14",
    description="chest radiographs with six co-occurring findings and boxes; NIH ChestX-ray14 layout",
)
def write_cxr(out: Path, cases: int, seed: int, progress: Progress | None) -> None:
    """Write ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, split lists and ``images_001/images/``."""
    images = out / "images_001" / "images"
    images.mkdir(parents=True)
    entries, box_rows, truth, test, plan = [], [], [], [], []
    patient, follow_up, patient_rng = 0, 0, case_rng(seed, 0, stream=1)
    for index in range(cases):  # who is who: one stream for every patient, drawn in order
        if index == 0 or patient_rng.random() > 0.35 or follow_up >= 2:  # new patient, else a follow-up
            patient, follow_up = patient + 1, 0
            findings = _choose_findings(case_rng(seed, patient, stream=2))
            age, sex = int(patient_rng.integers(18, 90)), str(patient_rng.choice(("M", "F")))
            in_test = patient_rng.random() < 0.2
        else:
            follow_up += 1
        name = f"{patient:08d}_{follow_up:03d}.png"
        plan.append((name, tuple(sorted(findings)), patient, follow_up, age, sex, in_test))
    made = run_cases(partial(_film, images, seed, [p[:2] for p in plan]), cases, workers=default_workers(),
                     progress=progress, stage="making chest radiographs")  # fmt: skip
    for (name, _, patient, follow_up, age, sex, in_test), (current, view, boxes, ctr) in zip(plan, made, strict=True):
        labels = "|".join(f for f in FINDINGS if f in current) or "No Finding"
        entries.append([name, labels, follow_up, patient, age + follow_up, sex, view, SIZE, SIZE, 0.3, 0.3])
        box_rows += [[name, b["label"], b["x"], b["y"], b["w"], b["h"]] for b in boxes]
        truth.append([name, labels, round(ctr, 4)])
        if in_test:
            test.append(name)
    write_table(out / "Data_Entry_2017.csv", [
        "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
        "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
    ], entries)  # fmt: skip
    write_table(out / "BBox_List_2017.csv", ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"], box_rows)
    write_table(out / "phantom_truth.csv", ["Image Index", "Finding Labels", "cardiothoracic_ratio"], truth)
    names = [e[0] for e in entries]
    (out / "test_list.txt").write_text("".join(f"{n}\n" for n in names if n in set(test)))
    (out / "train_val_list.txt").write_text("".join(f"{n}\n" for n in names if n not in set(test)))


def _film(images: Path, seed: int, plan: Sequence[tuple[str, tuple[str, ...]]], index: int) -> tuple:
    """Draw and save radiograph ``index`` (in a worker process): its findings, view, boxes and CTR."""
    name, findings = plan[index]
    rng = case_rng(seed, index)
    current = set(findings)
    if rng.random() < 0.3 and current:  # findings come and go between visits
        current.discard(sorted(current)[int(rng.integers(len(current)))])
    view = "PA" if rng.random() < 0.6 else "AP"
    pixels, boxes, ctr = radiograph(rng, current, view=view)
    Image.fromarray(pixels).save(images / name, compress_level=1)
    return current, view, boxes, ctr
