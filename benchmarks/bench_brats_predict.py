"""Whole-case prediction of a BraTS-size brain (4 contrasts, 240 x 240 x 155 at 1 mm; files in,
label map out): medsight's predictor against nnU-Net v2's with its default ``3d_fullres`` plan,
without and with mirroring TTA, on the same case in the same process.

    python benchmarks/bench_brats_predict.py --run medsight-demo/runs/brain-tumor-seg
    python benchmarks/bench_brats_predict.py --run RUN --no-nnunet     # medsight only

medsight: the run's planned model and weights (e.g. the demo's brain run, trained on 2 mm
phantoms), ``Predictor.predict_files`` on the case folder: read the four NIfTI files, crop,
resample to the plan's spacing, z-score, Gaussian sliding windows (8 mirrorings with TTA), back
to the source grid, postprocess, write the label map. Its Dice against the phantom's reference
is printed too (the case comes from a seed the run never saw).

nnU-Net v2 (when ``nnunetv2`` imports; ``pip install nnunetv2`` beside medsight): its fingerprint
and planner on ``--plan-cases`` phantom cases (timed), a network built from the ``3d_fullres``
plan with random weights (its speed does not depend on them; training it to a Dice is out of
reach of a 2-core CPU: the issue measured 31 s per iteration, and nnU-Net runs 250 000), and
``nnUNetPredictor.predict_from_files_sequential`` on the same four files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medsight.core.hardware import cpu_class
from medsight.data.phantoms import make_phantom
from medsight.inference import Predictor
from medsight.io import read
from medsight.metrics.segmentation import dice
from medsight.tasks import task_for

CHANNELS = ("t1", "t1ce", "t2", "flair")
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def _medsight(run: Path, case: Path, out: Path, mirror: bool) -> tuple[float, dict[str, float], str]:
    predictor = Predictor.from_run(run)
    spec = predictor.package.task.model_copy(update={"mirror": mirror})
    predictor = dataclasses.replace(predictor, task=task_for(spec))
    masks = out / ("medsight_tta" if mirror else "medsight")
    started = time.perf_counter()
    predictor.predict_files([case], masks=masks)
    seconds = time.perf_counter() - started
    predicted = np.asarray(read(next(masks.glob("*"))).array[0])
    truth = np.asarray(read(next(case.glob("*_seg.nii.gz"))).array[0])
    scores = {name: dice(np.isin(predicted, codes), np.isin(truth, codes)) for name, codes in REGIONS.items()}
    return seconds, scores, predictor.precision


def _nnunet(cases: list[Path], case: Path, work: Path, mirrors: tuple[bool, ...]) -> None:
    """nnU-Net's planning on ``cases`` and its prediction of ``case``, printed as they finish."""
    for name in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{name}"] = str(work / name)
        (work / name).mkdir(parents=True, exist_ok=True)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset = work / "raw" / "Dataset997_MedsightBrainPhantom"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    for folder in cases:
        for k, channel in enumerate(CHANNELS):
            shutil.copy(
                next(folder.glob(f"*_{channel}.nii.gz")), dataset / "imagesTr" / f"{folder.name}_{k:04d}.nii.gz"
            )
        seg = nib.load(next(folder.glob("*_seg.nii.gz")))
        codes = np.asarray(seg.dataobj)
        codes = np.where(codes == 4, 3, codes).astype(np.uint8)  # nnU-Net wants consecutive labels
        nib.save(nib.Nifti1Image(codes, seg.affine), dataset / "labelsTr" / f"{folder.name}.nii.gz")
    dataset_json = {"channel_names": {str(k): c for k, c in enumerate(CHANNELS)},
                    "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3},
                    "numTraining": len(cases), "file_ending": ".nii.gz"}  # fmt: skip
    (dataset / "dataset.json").write_text(json.dumps(dataset_json))
    started = time.perf_counter()
    extract_fingerprints([997], num_processes=2, check_dataset_integrity=False, clean=True, verbose=False)
    plan_experiments([997])
    planned = time.perf_counter() - started
    plans = PlansManager(str(work / "preprocessed" / dataset.name / "nnUNetPlans.json"))
    configuration = plans.get_configuration("3d_fullres")
    print(f"nnU-Net v2 plan ({len(cases)} cases, fingerprint + planner): {planned:.1f} s; 3d_fullres patch "
          f"{list(configuration.patch_size)}, spacing {list(configuration.spacing)}, features "
          f"{configuration.network_arch_init_kwargs['features_per_stage']}", flush=True)  # fmt: skip
    heads = plans.get_label_manager(dataset_json).num_segmentation_heads
    network = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                     configuration.network_arch_init_kwargs_req_import, len(CHANNELS), heads,
                                     allow_init=True, deep_supervision=False)  # fmt: skip
    inputs = [str(next(case.glob(f"*_{channel}.nii.gz"))) for channel in CHANNELS]
    for mirror in mirrors:
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    allow_tqdm=False)  # fmt: skip
        predictor.manual_initialization(network, plans, configuration, [network.state_dict()], dataset_json,
                                        "nnUNetTrainer", (0, 1, 2))  # fmt: skip
        out = work / ("nnunet_tta" if mirror else "nnunet")
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        predictor.predict_from_files_sequential([inputs], str(out), save_probabilities=False, overwrite=True,
                                                folder_with_segs_from_prev_stage=None)  # fmt: skip
        seconds = time.perf_counter() - started
        print(f"nnU-Net v2 3d_fullres ({'8 mirrorings' if mirror else 'no TTA'}): {seconds:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a brain-tumor-seg run (e.g. the demo's)")
    parser.add_argument("--plan-cases", type=int, default=4, help="phantom cases nnU-Net plans from")
    parser.add_argument("--no-nnunet", action="store_true", help="time medsight only")
    parser.add_argument("--no-tta", action="store_true", help="skip the mirroring runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-brats-"))
    try:
        phantoms = make_phantom("brain-tumor-seg", work / "phantoms", cases=args.plan_cases + 1, seed=2026)
        folders = sorted(p for p in phantoms.iterdir() if p.is_dir())
        case = folders[-1]
        mirrors = (False,) if args.no_tta else (False, True)
        print(f"CPU class: {cpu_class()}; case {case.name}: 4 x 240 x 240 x 155 at 1 mm; torch threads "
              f"{torch.get_num_threads()}", flush=True)  # fmt: skip
        for mirror in mirrors:
            seconds, scores, precision = _medsight(args.run, case, work, mirror)
            text = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            print(
                f"medsight ({precision}{', 8 mirrorings' if mirror else ''}): {seconds:.1f} s; Dice {text}", flush=True
            )
        if args.no_nnunet:
            return
        try:
            import nnunetv2  # noqa: F401
        except ImportError:
            print("nnU-Net v2 is not installed here (pip install nnunetv2): no same-run comparison")
            return
        _nnunet(folders[:-1], case, work / "nnunet", mirrors)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
