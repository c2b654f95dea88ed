"""Colour fundus photographs graded ICDR 0-4 by the lesions drawn on them (APTOS 2019 layout).

Each image is either a procedural fundus (field of view, vignetting, choroidal texture,
optic disc with cup, macula and fovea, branching vessel arcades) or the real photograph
``skimage.data.retina()`` rotated, scaled, mirrored and recoloured. The grade decides only
the lesions, drawn at their sizes in real 45-degree photographs (about 25 micrometres per
pixel at 512 px): microaneurysms of 25-110 um (grade >= 1), dot/blot and flame haemorrhages
(flames elongated along the nerve fibres), hard exudates and cotton-wool spots (>= 2),
haemorrhages in all four quadrants, venous beading or IRMA (3, the 4-2-1 rule), and
neovascularisation or a pre-retinal haemorrhage (4). Lesion counts and contrast vary widely
within a grade, so many cases sit near a grade boundary (a grade 2 with one small
haemorrhage; a grade 1 with two microaneurysms). Everything else — background kind and
pigmentation, laterality, drusen (a normal finding that resembles exudates), exposure,
uneven illumination, focus, noise, camera dust, JPEG compression — is drawn independently of
the grade, so global colour and brightness predict it no better than in real photographs
(``tests/data/phantoms/leakage.py`` checks this). File names are random hex ids as in APTOS.
``phantom_truth.csv`` records the lesion counts.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medsight.data.phantoms.base import Progress, case_rng, default_workers, register_phantom, run_cases

Point = tuple[float, float]

SIZE = 512
GRADE_SHARE = (0.49, 0.10, 0.27, 0.05, 0.09)  # APTOS 2019 training distribution
LESIONS = (
    "microaneurysms",
    "haemorrhages",
    "flame_haemorrhages",
    "exudate_clusters",
    "cotton_wool",
    "venous_beading",
    "irma",
    "neovascular",
    "preretinal",
    "drusen",
)


@lru_cache(maxsize=1)
def _real_retina() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.retina()).resize((SIZE, SIZE), Image.Resampling.LANCZOS))


@lru_cache(maxsize=1)
def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-0.5, 0.5] (read-only: shared by every photo a process draws)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    grid = (xx + 0.5) / SIZE - 0.5, (yy + 0.5) / SIZE - 0.5
    for axis in grid:
        axis.flags.writeable = False
    return grid


def _smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    small = Image.fromarray((rng.random((SIZE // 8, SIZE // 8)) * 255).astype(np.uint8))
    big = small.resize((SIZE, SIZE), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(big, np.float32) / 255.0 - 0.5


def _blend(img: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], strength: float) -> None:
    """Paint ``colour`` over ``img`` in place with opacity ``mask * strength``; only the rows and
    columns the mask touches are computed (elsewhere the opacity is exactly 0: same pixels)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a = np.clip(mask[box] * strength, 0.0, 1.0)[..., None]
    part = img[box]
    part *= 1.0 - a
    part += a * np.asarray(colour, np.float32)


def _mask(draw_fn: Callable[[ImageDraw.ImageDraw], None], blur: float) -> np.ndarray:
    layer = Image.new("L", (SIZE, SIZE), 0)
    draw_fn(ImageDraw.Draw(layer))
    if blur > 0:
        layer = layer.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(layer, np.float32) / 255.0


def _vessel(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    start: Point,
    angle: float,
    bend: float,
    length: float,
    width: float,
    depth: int,
) -> None:
    """A tapering, gently curving vessel with a few side branches (recursively thinner)."""
    x, y = start
    step = 5.0
    n = max(2, int(length / step))
    for i in range(n):
        angle += bend + rng.normal(0.0, 0.05)
        nx, ny = x + step * math.cos(angle), y + step * math.sin(angle)
        w = width * (1.0 - 0.55 * i / n)
        draw.line([(x, y), (nx, ny)], fill=255, width=max(1, round(w)))
        x, y = nx, ny
        if depth > 0 and i > 3 and rng.random() < 0.045:
            side = rng.choice((-1.0, 1.0))
            branch = angle + side * rng.uniform(0.5, 1.1)
            _vessel(draw, rng, (x, y), branch, bend * 0.3, length * rng.uniform(0.25, 0.45), w * 0.6, depth - 1)


def _procedural(rng: np.random.Generator, disc: Point, right_eye: bool) -> np.ndarray:
    xx, yy = _grid()
    pigment = rng.uniform(0.0, 0.7)  # blond (light orange, choroid visible) to darkly pigmented (brown)
    base = np.array([0.95 - 0.35 * pigment, 0.38 - 0.2 * pigment, 0.16 - 0.1 * pigment], np.float32) * rng.uniform(
        0.9, 1.1, 3
    ).astype(np.float32)
    img = np.ones((SIZE, SIZE, 3), np.float32) * base
    img *= 1.0 + rng.uniform(0.06, 0.2) * _smooth_noise(rng, 6)[..., None]  # choroidal texture
    dx, dy = xx - disc[0], yy - disc[1]
    disc_r = rng.uniform(0.06, 0.08)
    disc_mask = np.exp(-((np.hypot(dx, dy) / disc_r) ** 4))
    _blend(img, disc_mask, (1.0, 0.86, 0.62), 0.85)
    _blend(img, np.exp(-((np.hypot(dx, dy) / (disc_r * 0.45)) ** 2)), (1.0, 0.97, 0.85), 0.6)  # cup
    macula = (-disc[0] * 0.25, disc[1] + rng.normal(0, 0.01))
    mdist = np.hypot(xx - macula[0], yy - macula[1])
    _blend(img, np.exp(-((mdist / 0.09) ** 2)), (0.45, 0.14, 0.06), 0.45)
    _blend(img, np.exp(-((mdist / 0.015) ** 2)), (0.3, 0.08, 0.04), 0.5)  # fovea

    start = ((disc[0] + 0.5) * SIZE, (disc[1] + 0.5) * SIZE)
    temporal = 0.0 if not right_eye else math.pi
    sign = 1.0 if not right_eye else -1.0

    def trees(draw: ImageDraw.ImageDraw, scale: float) -> None:
        for up in (-1.0, 1.0):
            angle = temporal + sign * up * rng.uniform(1.0, 1.3)
            _vessel(draw, rng, start, angle, -sign * up * 0.02, SIZE * rng.uniform(0.7, 0.9), 5 * scale, 2)
            nasal = temporal + math.pi + sign * up * rng.uniform(0.4, 0.8)
            _vessel(draw, rng, start, nasal, 0.0, SIZE * rng.uniform(0.3, 0.4), 4 * scale, 1)

    veins = _mask(lambda d: trees(d, 1.0), 0.7)
    arteries = _mask(lambda d: trees(d, 0.7), 0.7)
    _blend(img, veins, (0.45, 0.07, 0.05), 0.7)
    _blend(img, arteries, (0.65, 0.14, 0.09), 0.5)
    return img


def _real(rng: np.random.Generator) -> tuple[np.ndarray, Point, bool]:
    photo = Image.fromarray(_real_retina())
    right_eye = bool(rng.random() < 0.5)
    if right_eye:
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.94, 1.06)
    photo = photo.rotate(angle, resample=Image.Resampling.BICUBIC)
    if scale != 1.0:
        resized = photo.resize((round(SIZE * scale),) * 2, Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (SIZE, SIZE))
        offset = (SIZE - resized.size[0]) // 2
        canvas.paste(resized, (offset, offset))
        photo = canvas
    img = np.asarray(photo, np.float32) / 255.0
    img *= np.array([rng.uniform(0.85, 1.1), rng.uniform(0.8, 1.15), rng.uniform(0.7, 1.3)], np.float32)
    disc_x = -0.355 if not right_eye else 0.355
    theta = math.radians(-angle)
    x, y = disc_x * scale, -0.05 * scale
    disc = (x * math.cos(theta) - y * math.sin(theta), x * math.sin(theta) + y * math.cos(theta))
    return img, disc, right_eye


def _places(
    rng: np.random.Generator, n: int, disc: Point, *, quadrants: tuple[int, ...] = (0, 1, 2, 3), radius: float = 0.4
) -> list[Point]:
    """Points inside the field of view, away from the disc, in the given quadrants."""
    out: list[Point] = []
    while len(out) < n:
        r = radius * math.sqrt(rng.uniform(0.02, 1.0))
        q = quadrants[len(out) % len(quadrants)]
        theta = (q + rng.uniform(0.05, 0.95)) * math.pi / 2
        x, y = r * math.cos(theta), r * math.sin(theta)
        if math.hypot(x - disc[0], y - disc[1]) > 0.11:
            out.append(((x + 0.5) * SIZE, (y + 0.5) * SIZE))
    return out


def _counts(rng: np.random.Generator, grade: int) -> dict[str, int]:
    """Lesion counts for an ICDR grade; wide ranges, so many cases sit near a boundary."""
    c = dict.fromkeys(LESIONS, 0)
    if grade >= 1:  # a few microaneurysms define grade 1; more come with the later grades
        c["microaneurysms"] = int(rng.integers(1, 6) if grade == 1 else rng.integers(2, 30))
    if grade == 2:  # more than microaneurysms only, less than severe: often just one or two lesions
        c["haemorrhages"] = int(np.floor(np.exp(rng.uniform(np.log(2), np.log(22)))) - (rng.random() < 0.3))
        c["flame_haemorrhages"] = int(rng.integers(0, 3) * (rng.random() < 0.3))
        c["exudate_clusters"] = int(rng.integers(0, 4) * (rng.random() < 0.5))
        c["cotton_wool"] = int(rng.integers(1, 3) * (rng.random() < 0.25))
        if c["haemorrhages"] + c["flame_haemorrhages"] + c["exudate_clusters"] + c["cotton_wool"] == 0:
            c["haemorrhages"] = 1
    if grade >= 3:  # the 4-2-1 rule: haemorrhages in all four quadrants, beading in two, or IRMA
        rule = rng.choice(("haemorrhages", "beading", "irma")) if grade == 3 else rng.choice(("haemorrhages", "none"))
        c["haemorrhages"] = int(rng.integers(14, 32) if rule == "haemorrhages" else rng.integers(2, 14))
        c["flame_haemorrhages"] = int(rng.integers(0, 5))
        c["exudate_clusters"] = int(rng.integers(0, 5))
        c["cotton_wool"] = int(rng.integers(0, 5))
        c["venous_beading"] = int(rng.integers(2, 4)) if rule == "beading" else 0
        c["irma"] = int(rng.integers(1, 4)) if rule == "irma" else int(rng.random() < 0.2)
    if grade == 4:
        c["neovascular"] = int(rng.integers(1, 4))
        c["preretinal"] = int(rng.random() < 0.35)
    c["drusen"] = int(rng.integers(3, 40)) if rng.random() < 0.35 else 0  # a normal finding, any grade
    return c


def _dots(
    rng: np.random.Generator, points: list[Point], r_lo: float, r_hi: float, elong: float = 1.0
) -> Callable[[ImageDraw.ImageDraw], None]:
    def draw(d: ImageDraw.ImageDraw) -> None:
        for x, y in points:
            r = rng.uniform(r_lo, r_hi)
            e = rng.uniform(1.0, elong)
            d.ellipse((x - r * e, y - r / e, x + r * e, y + r / e), fill=255)

    return draw


def _flames(rng: np.random.Generator, points: list[Point], disc: Point) -> Callable[[ImageDraw.ImageDraw], None]:
    """Splinter haemorrhages in the nerve fibre layer: thin, long, pointing away from the disc."""
    dx0, dy0 = (disc[0] + 0.5) * SIZE, (disc[1] + 0.5) * SIZE

    def draw(d: ImageDraw.ImageDraw) -> None:
        for x, y in points:
            angle = math.atan2(y - dy0, x - dx0) + rng.normal(0, 0.2)
            length, width = rng.uniform(6, 16), rng.uniform(1.5, 3.5)
            ux, uy = math.cos(angle), math.sin(angle)
            outline = [
                (x - ux * length, y - uy * length),
                (x - uy * width, y + ux * width),
                (x + ux * length * 0.6, y + uy * length * 0.6),
                (x + uy * width, y - ux * width),
            ]
            d.polygon(outline, fill=255)

    return draw


def _squiggles(
    rng: np.random.Generator, centre: Point, loops: tuple[int, int], steps: tuple[int, int], spread: float
) -> Callable[[ImageDraw.ImageDraw], None]:
    """Fine tortuous vessels around ``centre`` (IRMA inside the retina; denser for new vessels)."""

    def draw(d: ImageDraw.ImageDraw) -> None:
        for _ in range(int(rng.integers(*loops))):
            angle = rng.uniform(0, 2 * math.pi)
            x, y = centre[0] + rng.normal(0, spread), centre[1] + rng.normal(0, spread)
            pts = [(x, y)]
            for _ in range(int(rng.integers(*steps))):
                angle += rng.normal(0, 0.9)
                x, y = x + 4 * math.cos(angle), y + 4 * math.sin(angle)
                pts.append((x, y))
            d.line(pts, fill=255, width=1)

    return draw


def _beads(rng: np.random.Generator, start: Point, angle: float) -> Callable[[ImageDraw.ImageDraw], None]:
    """A stretch of vein whose calibre swells and narrows like a string of beads."""

    def draw(d: ImageDraw.ImageDraw) -> None:
        x, y = start
        heading = angle
        for i in range(int(rng.integers(12, 22))):
            r = 1.5 + 1.2 * (1 + math.sin(i * rng.uniform(1.2, 1.8)))
            d.ellipse((x - r, y - r, x + r, y + r), fill=255)
            heading += rng.normal(0, 0.08)
            x, y = x + 4 * math.cos(heading), y + 4 * math.sin(heading)

    return draw


def _lesions(img: np.ndarray, rng: np.random.Generator, grade: int, counts: dict[str, int], disc: Point) -> None:
    """Draw the lesions; each kind's contrast varies between photographs as it does in real ones."""
    quads = (0, 1, 2, 3) if grade >= 3 else tuple(rng.choice(4, size=int(rng.integers(1, 4)), replace=False))
    contrast = rng.uniform(0.9, 1.0)  # how clearly this photograph shows its lesions (media, focus)
    red = (0.42, 0.05, 0.03)
    if counts["drusen"]:  # small pale yellow dots around the macula, independent of the grade
        centre = (-disc[0] * 0.25, disc[1])
        pts = [((centre[0] + rng.normal(0, 0.08) + 0.5) * SIZE, (centre[1] + rng.normal(0, 0.08) + 0.5) * SIZE)
               for _ in range(counts["drusen"])]  # fmt: skip
        _blend(img, _mask(_dots(rng, pts, 0.8, 2.0), 0.8), (0.95, 0.85, 0.5), 0.5 * contrast)
    if counts["microaneurysms"]:
        pts = _places(rng, counts["microaneurysms"], disc, radius=0.3)
        _blend(img, _mask(_dots(rng, pts, 0.6, 2.0), 0.5), (0.5, 0.05, 0.03), contrast)
    if counts["haemorrhages"]:
        pts = _places(rng, counts["haemorrhages"], disc, quadrants=quads)
        _blend(img, _mask(_dots(rng, pts, 3.0, 8.0, elong=1.7), 1.0), red, 0.95 * contrast)
    if counts["flame_haemorrhages"]:
        pts = _places(rng, counts["flame_haemorrhages"], disc, radius=0.3)
        _blend(img, _mask(_flames(rng, pts, disc), 1.0), red, 0.9 * contrast)
    for _ in range(counts["exudate_clusters"]):
        ((cx, cy),) = _places(rng, 1, disc, radius=0.25)
        pts = [(cx + rng.normal(0, 10), cy + rng.normal(0, 10)) for _ in range(int(rng.integers(3, 15)))]
        _blend(img, _mask(_dots(rng, pts, 0.8, 3.0), 0.6), (1.0, 0.92, 0.45), 0.9 * contrast)
    if counts["cotton_wool"]:
        pts = _places(rng, counts["cotton_wool"], disc, radius=0.3)
        _blend(img, _mask(_dots(rng, pts, 6.0, 13.0, elong=1.5), 4.0), (0.98, 0.93, 0.8), 0.7 * contrast)
    for q in rng.choice(4, size=min(counts["venous_beading"], 4), replace=False):
        ((x, y),) = _places(rng, 1, disc, quadrants=(int(q),))
        _blend(img, _mask(_beads(rng, (x, y), rng.uniform(0, 2 * math.pi)), 0.8), (0.4, 0.06, 0.05), 0.75 * contrast)
    for _ in range(counts["irma"]):
        (centre,) = _places(rng, 1, disc, radius=0.3)
        _blend(img, _mask(_squiggles(rng, centre, (3, 7), (4, 9), 6), 0.4), (0.5, 0.06, 0.05), 0.8 * contrast)
    for _ in range(counts["neovascular"]):
        near_disc = rng.random() < 0.5
        (centre,) = _places(rng, 1, disc) if not near_disc else [((disc[0] + 0.5) * SIZE, (disc[1] + 0.5) * SIZE)]
        _blend(img, _mask(_squiggles(rng, centre, (6, 14), (6, 14), 8), 0.4), (0.55, 0.06, 0.05), 0.9)
    if counts["preretinal"]:
        ((cx, cy),) = _places(rng, 1, disc, radius=0.3)
        r = rng.uniform(20, 40)

        def boat(d: ImageDraw.ImageDraw) -> None:
            d.chord((cx - r, cy - r, cx + r, cy + r), 0, 180, fill=255)  # flat top: blood settles

        _blend(img, _mask(boat, 2.0), (0.3, 0.02, 0.02), 0.95)


def _camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optics and sensor: vignetting, uneven light, dust, exposure, colour cast, blur, noise, JPEG."""
    xx, yy = _grid()
    r = np.hypot(xx, yy)
    img *= (1.0 - rng.uniform(0.3, 1.3) * r**2)[..., None]  # vignetting
    tilt = rng.uniform(0, 2 * math.pi)
    img *= 1.0 + rng.uniform(-0.25, 0.25) * (xx * math.cos(tilt) + yy * math.sin(tilt))[..., None]  # uneven light
    if rng.random() < 0.3:  # a bright crescent where the light source reflects at the rim
        edge = np.clip((r - 0.3) / 0.15, 0, 1) * np.clip(np.cos(np.arctan2(yy, xx) - rng.uniform(0, 6.3)), 0, 1)
        _blend(img, edge, (0.95, 0.8, 0.6), rng.uniform(0.1, 0.35))
    for _ in range(int(rng.integers(0, 4))):  # dust on the lens: soft grey blobs
        cx, cy, rad = rng.uniform(-0.35, 0.35), rng.uniform(-0.35, 0.35), rng.uniform(0.01, 0.03)
        _blend(img, np.exp(-((np.hypot(xx - cx, yy - cy) / rad) ** 2)), (0.2, 0.12, 0.1), 0.25)
    img *= rng.uniform(0.9, 1.1, 3).astype(np.float32)  # white balance
    img = np.clip(img * rng.uniform(0.7, 1.3), 0, 1) ** rng.uniform(0.8, 1.25)  # exposure and gamma
    fov = r < rng.uniform(0.44, 0.49)
    if rng.random() < 0.3:  # some cameras crop the circle at top and bottom
        fov &= np.abs(yy) < rng.uniform(0.38, 0.45)
    img *= fov[..., None]
    out = Image.fromarray((img * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.4)))
    arr = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(1.0, 5.0), size=(SIZE, SIZE, 3))
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.7:  # most fundus cameras save JPEG; its blocks and ringing stay in the PNG
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=int(rng.integers(65, 96)))
        out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(out, np.uint8)


def fundus(rng: np.random.Generator, grade: int) -> tuple[np.ndarray, dict[str, int]]:
    """One fundus photograph (uint8 RGB, 512x512) of the given ICDR grade and its lesion counts."""
    if rng.random() < 0.35:
        img, disc, right_eye = _real(rng)
    else:
        right_eye = bool(rng.random() < 0.5)
        disc = (0.22 * (1 if right_eye else -1) + rng.normal(0, 0.015), rng.normal(0, 0.03))
        img = _procedural(rng, disc, right_eye)
    counts = _counts(rng, grade)
    _lesions(img, rng, grade, counts, disc)
    return _camera(img, rng), {**counts, "right_eye": int(right_eye)}


@register_phantom(
    "dr-grading",
    layout="aptos2019",
    description="fundus photos graded ICDR 0-4 by drawn lesions; APTOS 2019 layout",
)
def write_dr_grading(out: Path, cases: int, seed: int, progress: Progress | None) -> None:
    """Write ``train.csv``, ``train_images/<id>.png`` and ``phantom_truth.csv`` under ``out``."""
    images = out / "train_images"
    images.mkdir()
    make = partial(_photo, images, seed)
    rows = run_cases(make, cases, workers=default_workers(), progress=progress, stage="making fundus photos")
    with open(out / "train.csv", "w", newline="") as labels, open(out / "phantom_truth.csv", "w", newline="") as truth:
        label_writer = csv.writer(labels)
        label_writer.writerow(["id_code", "diagnosis"])
        truth_writer = csv.writer(truth)
        truth_writer.writerow(["id_code", "diagnosis", *LESIONS, "right_eye"])
        for id_code, grade, counts in rows:
            label_writer.writerow([id_code, grade])
            truth_writer.writerow([id_code, grade, *(counts[k] for k in LESIONS), counts["right_eye"]])


def _photo(images: Path, seed: int, index: int) -> tuple[str, int, dict[str, int]]:
    """Draw and save case ``index``'s photo (in a worker process); return its id, grade and lesion counts."""
    rng = case_rng(seed, index)
    grade = int(rng.choice(5, p=GRADE_SHARE))
    id_code = rng.bytes(6).hex()
    pixels, counts = fundus(rng, grade)
    Image.fromarray(pixels).save(images / f"{id_code}.png", optimize=False, compress_level=1)
    return id_code, grade, counts
