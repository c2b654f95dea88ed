"""Miniature replicas of public data set layouts: same folder names, file names, CSV columns and
label conventions as the real downloads, with tiny images. Each builder can also plant one
defect (``malformed=True``) that the adapter must reject with a clear error."""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from PIL import Image

from medsight.core import Geometry, Volume, VolumeMetadata
from medsight.io import write_dicom_series

Builder = Callable[[Path, bool], tuple[Path, dict]]
REPLICAS: dict[str, Builder] = {}


def replica(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        REPLICAS[name] = fn
        return fn

    return wrap


def _rng(seed: int | None = 0, path: Path | None = None) -> np.random.Generator:
    """Random numbers; distinct per file name so replicas hold no accidental duplicates."""
    if seed is None:
        seed = zlib.crc32(str(path.name if path else "").encode())
    return np.random.default_rng(seed)


def picture(path: Path, shape=(8, 8), rgb=False, seed=None) -> None:
    """A small PNG or JPEG (format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _rng(seed, path).integers(0, 255, size=(*shape, 3) if rgb else shape, dtype=np.uint8)
    Image.fromarray(arr).save(path)


def nifti(path: Path, shape=(6, 6, 4), labels=None, seed=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        arr = _rng(seed, path).choice(labels, size=shape).astype(np.uint8)
    else:
        arr = _rng(seed, path).normal(size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)


def dicom_file(path: Path, shape=(8, 8), seed=None, pixels: np.ndarray | None = None) -> None:
    """A one-frame DICOM file of random pixels (or ``pixels``, 2D)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _rng(seed, path).integers(0, 4000, size=(1, 1, *shape)).astype(np.int16) if pixels is None else \
        np.asarray(pixels, np.int16)[None, None]  # fmt: skip
    tmp = path.parent / f".tmp_{path.stem}"
    write_dicom_series(Volume(arr, Geometry(), VolumeMetadata(modality="CT")), tmp, modality="CT")
    shutil.move(next(tmp.iterdir()), path)
    tmp.rmdir()


@replica("aptos2019")
def aptos(root: Path, malformed: bool) -> tuple[Path, dict]:
    ids = ["000c1434d8d7", "001639a390f0", "0024cdab0c1e", "002c21358ce6", "005b95c28852", "0083ee8054ee"]
    grades = [2, 4, 1, 0, 0, 3]
    if malformed:
        grades[2] = 7  # not an ICDR grade
    lines = ["id_code,diagnosis"] + [f"{i},{g}" for i, g in zip(ids, grades, strict=True)]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "test.csv").write_text("id_code\n0005cfc8afb6\n")
    for i in ids:
        picture(root / "train_images" / f"{i}.png", rgb=True)
    return root, {"cases": 6, "patients": 6, "targets": grades, "error": "DR grades must be 0-4"}


@replica("eyepacs2015")
def eyepacs(root: Path, malformed: bool) -> tuple[Path, dict]:
    names = ["10_left", "10_right", "13_left", "13_right", "15_left", "15_right"]
    levels = [0, 0, 0, 1, 2, 2]
    (root / "trainLabels.csv").write_text(
        "image,level\n" + "".join(f"{n},{g}\n" for n, g in zip(names, levels, strict=True))
    )
    for n in names[: -1 if malformed else None]:  # malformed: one image missing
        picture(root / "train" / f"{n}.jpeg", rgb=True)
    return root, {"cases": 6, "patients": 3, "error": "1 of 6 image file(s) not found: 15_right"}


@replica("messidor2")
def messidor(root: Path, malformed: bool) -> tuple[Path, dict]:
    names = ["20051020_43808_0100_PP.png", "20051020_43832_0100_PP.png", "20051020_43882_0100_PP.png", "IM000001.JPG"]
    header = "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable"
    if malformed:
        header = "image_id,dr_level,adjudicated_dme,adjudicated_gradable"
    rows = [f"{names[0]},0,0,1", f"{names[1]},2,1,1", f"{names[2]},,,0", f"{names[3]},1,0,1"]
    (root / "messidor_data.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    for n in names:
        picture(root / "messidor-2" / "preprocess" / n, rgb=True)
    return root, {"cases": 3, "patients": 3, "error": "lacks required column(s) 'grade'"}


@replica("idrid")
def idrid(root: Path, malformed: bool) -> tuple[Path, dict]:
    gt = root / "B. Disease Grading" / "2. Groundtruths"
    gt.mkdir(parents=True)
    header = "Image name,Retinopathy grade,Risk of macular edema " + ("" if not malformed else ",x")
    (gt / "a. IDRiD_Disease Grading_Training Labels.csv").write_text(
        header + "\nIDRiD_001,3,2\nIDRiD_002,0,0\nIDRiD_003,2,1\n" + (",,\n" if not malformed else "IDRiD_004,5,0,1\n")
    )
    (gt / "b. IDRiD_Disease Grading_Testing Labels.csv").write_text(header.rstrip(",x ") + "\nIDRiD_101,4,2\n")
    images = root / "B. Disease Grading" / "1. Original Images"
    for i in ("001", "002", "003"):
        picture(images / "a. Training Set" / f"IDRiD_{i}.jpg", rgb=True)
    picture(images / "b. Testing Set" / "IDRiD_101.jpg", rgb=True)
    if malformed:
        picture(images / "a. Training Set" / "IDRiD_004.jpg", rgb=True)
    return root, {"cases": 4, "patients": 4, "test": 1, "error": "DR grades must be 0-4"}


@replica("nih-cxr14")
def nih(root: Path, malformed: bool) -> tuple[Path, dict]:
    rows = [
        ("00000001_000.png", "Cardiomegaly", 0, 1, 58, "M", "PA"),
        ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA"),
        ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA"),
        ("00000003_000.png", "Hernia", 0, 3, 81, "F", "PA"),
        ("00000003_001.png", "Nodule|Effusion" if not malformed else "Nodule|Covid", 1, 3, 74, "F", "AP"),
    ]
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    )
    lines = [header] + [f"{r[0]},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]},{r[6]},2682,2749,0.143,0.143," for r in rows]
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000003_001.png,Nodule,225.08,547.01,86.78,79.18\n"
    )
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000003_000.png\n00000003_001.png\n")
    for i, r in enumerate(rows):
        picture(root / f"images_00{1 + i // 3}" / "images" / r[0], shape=(16, 16))
    return root, {"cases": 5, "patients": 3, "test": 2, "error": "unknown finding(s) ['Covid']"}


@replica("chexpert")
def chexpert(root: Path, malformed: bool) -> tuple[Path, dict]:
    from medsight.data.adapters.chexpert import OBSERVATIONS

    release = root / "CheXpert-v1.0-small"
    release.mkdir()
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(OBSERVATIONS)
    labels = ["", "", "1.0", "-1.0", "", "0.0", "", "", "1.0", "", "-1.0", "", "", "1.0"]
    if malformed:
        labels[2] = "2.0"
    paths = [
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
        "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg",
        "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg",
    ]
    rows = [f"{p},Female,68,Frontal,AP," + ",".join(labels) for p in paths]
    (release / "train.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    valid = "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"
    (release / "valid.csv").write_text(header + "\n" + f"{valid},Male,73,Frontal,AP," + ",".join(["0.0"] * 14) + "\n")
    for p in [*paths, valid]:
        picture(root / p, shape=(12, 10))
    return root, {"cases": 4, "patients": 3, "test": 1, "error": "labels are 1, 0, -1 or blank"}


@replica("rsna-pneumonia")
def rsna(root: Path, malformed: bool) -> tuple[Path, dict]:
    rows = [
        "0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0",
        "00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1",
        "00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1",
        "00704310-78a8-4b38-8475-49f4573b2dbb,323.0,577.0,160.0,104.0,1",
    ]
    header = "patientId,x,y,width,height,Target" if not malformed else "patientId,x,y,w,h,Target"
    (root / "stage_2_train_labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    for pid in {r.split(",")[0] for r in rows}:
        dicom_file(root / "stage_2_train_images" / f"{pid}.dcm")
    return root, {"cases": 3, "patients": 3, "error": "lacks required column(s) 'width'"}


def _brats_case(root: Path, case: str, names: list[str], sep: str, labels: list[int]) -> None:
    for name in names:
        nifti(root / case / f"{case}{sep}{name}.nii.gz", labels=labels if name == "seg" else None)


@replica("brats2021")
def brats2021(root: Path, malformed: bool) -> tuple[Path, dict]:
    for case in ("BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"):
        names = ["t1", "t1ce", "t2", "flair", "seg"]
        if malformed and case.endswith("3"):
            names.remove("t1ce")
        _brats_case(root, case, names, "_", [0, 1, 2, 4])
    return root, {"cases": 3, "patients": 3, "error": "missing BraTS2021_00003_t1ce.nii.gz"}


@replica("brats2023")
def brats2023(root: Path, malformed: bool) -> tuple[Path, dict]:
    for case in ("BraTS-GLI-00000-000", "BraTS-GLI-00000-001", "BraTS-GLI-00002-000"):
        names = ["t1n", "t1c", "t2w", "t2f", "seg"]
        if malformed and case.endswith("2-000"):
            names.remove("t2f")
        _brats_case(root / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", case, names, "-", [0, 1, 2, 3])
    return root, {"cases": 3, "patients": 2, "error": "missing BraTS-GLI-00002-000-t2f.nii.gz"}


@replica("msd")
def msd(root: Path, malformed: bool) -> tuple[Path, dict]:
    training = []
    for i in (1, 2, 3):
        nifti(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", shape=(6, 6, 4, 4))
        if not (malformed and i == 3):
            nifti(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", labels=[0, 1, 2, 3])
        training.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})
    spec = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": 3,
        "training": training,
        "test": ["./imagesTs/BRATS_485.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root, {"cases": 3, "patients": 3, "error": "labelsTr/BRATS_003.nii.gz is listed but missing"}


@replica("luna16")
def luna16(root: Path, malformed: bool) -> tuple[Path, dict]:
    uids = {
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860": 0,
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.100332161840553388986847034053": 0,
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.100398138793540579077826395208": 1,
    }
    for uid, subset in uids.items():
        folder = root / f"subset{subset}"
        folder.mkdir(exist_ok=True)
        img = sitk.GetImageFromArray(np.zeros((4, 6, 6), np.int16))
        sitk.WriteImage(img, str(folder / f"{uid}.mhd"))
    if malformed:
        next((root / "subset1").glob("*.raw")).unlink()
    first, _, third = uids
    (root / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{first},-128.6994211,-175.3192718,-298.3875064,5.651470635\n"
        f"{first},103.7836509,-211.9251487,-227.12125,4.224708481\n"
        f"{third},69.63901724,-140.9445859,876.3744957,5.786347814\n"
    )
    (root / "annotations_excluded.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{third},-24.0138242,192.1024053,-391.0812764,-1\n"
    )
    return root, {"cases": 3, "patients": 3, "folds": [0, 0, 1], "error": "has no .raw data file"}


@replica("acdc")
def acdc(root: Path, malformed: bool) -> tuple[Path, dict]:
    for pid, (ed, es, group) in {
        "patient001": (1, 12, "DCM"),
        "patient002": (1, 12, "DCM"),
        "patient051": (1, 11, "NOR"),
    }.items():
        folder = root / "training" / pid
        folder.mkdir(parents=True)
        cfg = f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"
        if malformed and pid == "patient051":
            cfg = cfg.replace("ES: 11\n", "")
        (folder / "Info.cfg").write_text(cfg)
        nifti(folder / f"{pid}_4d.nii.gz", shape=(6, 6, 3, 4))
        for frame in (ed, es):
            nifti(folder / f"{pid}_frame{frame:02d}.nii.gz", shape=(6, 6, 3))
            nifti(folder / f"{pid}_frame{frame:02d}_gt.nii.gz", shape=(6, 6, 3), labels=[0, 1, 2, 3])
    return root, {"cases": 3, "patients": 3, "error": "has no ES frame"}


@replica("mnms")
def mnms(root: Path, malformed: bool) -> tuple[Path, dict]:
    header = "External code,VendorName,Vendor,Centre,ED,ES,Pathology,Sex,Age,Height,Weight"
    if malformed:
        header = header.replace("Centre", "Hospital")
    rows = [
        "A0S9V9,Siemens,A,1,0,9,DCM,M,67,180,80",
        "A1D0Q7,Philips,B,2,0,10,HCM,F,41,160,55",
        "Z9Z9Z9,GE,C,3,0,8,NOR,M,50,170,70",
    ]
    (root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").write_text(
        header + "\n" + "\n".join(rows) + "\n"
    )
    for code in ("A0S9V9", "A1D0Q7"):
        folder = root / "Training" / "Labeled" / code
        nifti(folder / f"{code}_sa.nii.gz", shape=(6, 6, 3, 10))
        nifti(folder / f"{code}_sa_gt.nii.gz", shape=(6, 6, 3, 10), labels=[0, 1, 2, 3])
    return root, {"cases": 2, "patients": 2, "error": "lacks required column(s) 'centre'"}


@replica("vindr-mammo")
def vindr(root: Path, malformed: bool) -> tuple[Path, dict]:
    header = "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split"
    rows = []
    studies = {"b8bb8a1a1a1b0e3aee3e2a2b5a4b0a1e": "BI-RADS 1", "4e3a578fd5f7a7e1d7a4a4c0e5f5c9f0": "BI-RADS 5"}
    for s, (study, bir) in enumerate(studies.items()):
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                image = f"{study[:8]}{lat}{view}{s}"
                category = bir if lat == "R" else "BI-RADS 1"
                rows.append(
                    f"{study},ser{s},{image},{lat},{view},32,24,{category},DENSITY C,{'training' if s == 0 else 'test'}"
                )
                dicom_file(root / "images" / study / f"{image}.dicom", shape=(32, 24))
    if malformed:
        rows[0] = rows[0].replace(",L,CC,", ",X,CC,")
    (root / "breast-level_annotations.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    finding = rows[-1].split(",")
    (root / "finding_annotations.csv").write_text(
        "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,"
        "finding_categories,finding_birads,xmin,ymin,xmax,ymax,split\n"
        f"{finding[0]},{finding[1]},{finding[2]},R,MLO,32,24,BI-RADS 5,DENSITY C,"
        "['Mass'],BI-RADS 5,4.0,5.0,12.0,15.0,test\n"
    )
    return root, {"cases": 8, "patients": 2, "test": 4, "error": "laterality must be L/R"}


@replica("medmnist")
def medmnist(root: Path, malformed: bool) -> tuple[Path, dict]:
    rng = _rng()
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, size=(n + (1 if malformed and split == "val" else 0), 1))
    np.savez(root / "pneumoniamnist.npz", **arrays)
    return root, {"cases": 11, "patients": 11, "test": 3, "error": "val_images has 2 rows, val_labels 3"}


@replica("csv")
def generic_csv(root: Path, malformed: bool) -> tuple[Path, dict]:
    lines = [
        "path,label,patient_id,site",
        "imgs/a.png,benign,p1,north",
        "imgs/b.png,malignant,p1,north",
        "imgs/c.png,benign,p2,south",
    ]
    for name in ("a", "b", "c")[: 2 if malformed else 3]:
        picture(root / "imgs" / f"{name}.png")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root, {"cases": 3, "patients": 2, "error": "1 of 3 image file(s) not found: imgs/c.png"}


@replica("folder")
def generic_folder(root: Path, malformed: bool) -> tuple[Path, dict]:
    for cls in ("normal", "pneumonia") if not malformed else ("normal",):
        for i in range(2):
            picture(root / cls / f"{cls}_{i}.png")
    return root, {"cases": 4, "patients": 4, "error": "at least two class sub-folders"}


def _lidc_roi(z: float, cx: float, cy: float, r: float, sop: str) -> str:
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    edges = "".join(
        f"<edgeMap><xCoord>{round(cx + r * np.cos(a))}</xCoord><yCoord>{round(cy + r * np.sin(a))}</yCoord></edgeMap>"
        for a in angles
    )
    return (
        f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
        f"<inclusion>TRUE</inclusion>{edges}</roi>"
    )


@replica("lidc-idri")
def lidc(root: Path, malformed: bool) -> tuple[Path, dict]:
    series = (
        root
        / "LIDC-IDRI-0001"
        / "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
        / ("1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192")
    )
    series.parent.mkdir(parents=True)
    arr = _rng(3).integers(-1000, 400, size=(1, 12, 64, 64)).astype(np.int16)
    geometry = Geometry(spacing=(2.5, 0.7, 0.7), origin=(-22.4, -22.4, -100.0))
    write_dicom_series(Volume(arr, geometry, VolumeMetadata(modality="CT")), series)
    z = [-100.0 + 2.5 * k for k in range(12)]
    sessions = []
    for reader, (dx, dy) in enumerate([(0, 0), (1, 0), (0, -1), (9, 9)]):
        nodules = ""
        if reader < 3:  # nodule A: three readers agree
            rois = "".join(_lidc_roi(z[k], 30 + dx, 20 + dy, 5, f"sop{k}") for k in (4, 5, 6))
            rating = f"<characteristics><malignancy>{3 + (reader == 2)}</malignancy></characteristics>"
            nodules += f"<unblindedReadNodule><noduleID>A{reader}</noduleID>{rating}{rois}</unblindedReadNodule>"
        else:  # nodule B: one reader only, a small nodule and a non-nodule
            rois = "".join(_lidc_roi(z[k], 50, 45, 4, f"sop{k}") for k in (2, 3))
            nodules += f"<unblindedReadNodule><noduleID>B</noduleID>{rois}</unblindedReadNodule>"
            nodules += (
                "<unblindedReadNodule><noduleID>s1</noduleID><roi><imageZposition>-80.0</imageZposition>"
                "<inclusion>TRUE</inclusion><edgeMap><xCoord>10</xCoord><yCoord>12</yCoord></edgeMap></roi>"
                "</unblindedReadNodule>"
            )
            nodules += (
                "<nonNodule><nonNoduleID>n1</nonNoduleID><imageZposition>-90.0</imageZposition>"
                "<locus><xCoord>40</xCoord><yCoord>8</yCoord></locus></nonNodule>"
            )
        sessions.append(
            f"<readingSession><servicingRadiologistID>r{reader}</servicingRadiologistID>{nodules}</readingSession>"
        )
    uid = "" if malformed else f"<SeriesInstanceUid>{series.name}</SeriesInstanceUid>"
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.1" '
        'xmlns="http://www.nih.gov"><ResponseHeader><Version>1.8.1</Version>'
        f"{uid}<StudyInstanceUID>{series.parent.name}</StudyInstanceUID></ResponseHeader>{''.join(sessions)}</LidcReadMessage>"
    )
    (series / "069.xml").write_text(xml)
    return root, {"cases": 1, "patients": 1, "targets": [1], "error": "has no SeriesInstanceUid"}


@replica("cbis-ddsm")
def cbis(root: Path, malformed: bool) -> tuple[Path, dict]:
    tail = "cropped image file path,ROI mask file path"
    mass_header = (
        "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
        f"mass shape,mass margins,assessment,pathology,subtlety,image file path,{tail}"
    )
    calc_header = (
        "patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,"
        f"calc type,calc distribution,assessment,pathology,subtlety,image file path,{tail}"
    )
    uid = "1.3.6.1.4.1.9590.100.1.2.422112722213189649807611434612228974994"
    mass = [
        ("P_00001", "LEFT", "CC", 1, "IRREGULAR-ARCHITECTURAL_DISTORTION", "SPICULATED", 4, "MALIGNANT"),
        ("P_00001", "LEFT", "CC", 2, "OVAL", "CIRCUMSCRIBED", 3, "BENIGN"),
        ("P_00001", "LEFT", "MLO", 1, "IRREGULAR", "SPICULATED", 5, "MALIGNANT"),
        ("P_00004", "RIGHT", "MLO", 1, "ROUND", "CIRCUMSCRIBED", 2, "BENIGN_WITHOUT_CALLBACK"),
    ]
    lines = [mass_header] + [
        f"{p},3,{s},{v},{a},mass,{shape},{margin},{assess},{path},4,"
        f"Mass-Training_{p}_{s}_{v}/{uid}/{uid}/000000.dcm,Mass-Training_{p}_{s}_{v}_{a}/{uid}/{uid}/000000.dcm,"
        f"Mass-Training_{p}_{s}_{v}_{a}/{uid}/{uid}/000001.dcm"
        for p, s, v, a, shape, margin, assess, path in mass
    ]
    (root / "mass_case_description_train_set.csv").write_text("\n".join(lines) + "\n")
    calc = f"P_00038,2,LEFT,CC,1,calcification,PUNCTATE,CLUSTERED,2,BENIGN,3,Calc-Test_P_00038_LEFT_CC/{uid}/x.dcm,a,b"
    (root / "calc_case_description_test_set.csv").write_text(calc_header + "\n" + calc + "\n")
    folders = {f"Mass-Training_{p}_{s}_{v}" for p, s, v, *_ in mass} | {"Calc-Test_P_00038_LEFT_CC"}
    for name in sorted(folders):
        if malformed and "P_00004" in name:
            continue
        dicom_file(
            root / "CBIS-DDSM" / name / "07-20-2016-DDSM-74994" / "1.000000-full mammogram images-24515" / "1-1.dcm",
            shape=(24, 16),
        )
    crop = (
        root / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_CC_1" / "08-07-2016-DDSM-24563" / "1.000000-ROI mask images-99"
    )
    dicom_file(crop / "1-1.dcm")  # the cropped image: smaller than the full mammogram
    mask = np.zeros((24, 16), np.int16)
    mask[5:12, 3:9] = 255  # the ROI: rows 5-11, columns 3-8
    dicom_file(crop / "1-2.dcm", pixels=mask)
    empty = root / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_MLO_1" / "08-07-2016-DDSM-1" / "1.000000-ROI mask images-1"
    dicom_file(empty / "1-1.dcm", pixels=np.zeros((24, 16), np.int16))  # an empty mask: no box
    return root, {"cases": 4, "patients": 3, "test": 1, "targets": [0, 1, 1, 0], "error": "1 full mammogram folder(s)"}
