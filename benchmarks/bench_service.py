"""`medsight serve` on loopback, against plain pynetdicom and the package's own pipeline, same process.

    python benchmarks/bench_service.py                   # 8 chest X-rays, 4 MR and 4 CT series, a pynetdicom PACS
    python benchmarks/bench_service.py --orthanc         # the results go to a real Orthanc (apt install orthanc)
    python benchmarks/bench_service.py --studies 20 --cxr 20

Three models are trained briefly on phantoms first (the cxr-findings recipe's DenseNet-121 at 224
px, one epoch; the cardiac-function recipe's U-Net as the demo trains it: 16 base filters, 2.5 mm
in plane, 12x64x64 patches, five iterations; the lung-nodule-det recipe's U-Net at 5x2.8x2.8 mm
with 8 base filters, four iterations): their figures are not the point, their networks' cost is.
Then, with the service running in this process (DICOM listener, worker, sender; SQLite):

- **receive**: instances/s the DICOM listener takes over one association (each checked, written,
  flushed to disk and only then acknowledged), against a plain pynetdicom C-STORE SCP that writes
  each data set to a file without flushing, on the same instances (ratio: medsight/plain);
- **latency**: from the Success of a study's last instance to its SR arriving at the PACS, p50 and
  p95, for a chest X-ray (one DX image), an MR series and a chest CT series (nodule detection: SEG of
  the candidates, SR placing them), one study at a time; against the package
  on its own (predict + write the DICOM results) on the same study. The difference is the service's
  share: waiting ``release_s`` (1 s) for the study to be complete, spooling, the database, sending.

The CPU's instruction-set class is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.presentation import build_context

from medsight.core import Volume, VolumeMetadata
from medsight.core.hardware import cpu_class
from medsight.data import build_manifest
from medsight.data.phantoms import make_phantom
from medsight.data.splits import assign_splits
from medsight.engine.fit import fit
from medsight.engine.recipe import load_recipe
from medsight.export import export_package
from medsight.export.dicom_results import write_dicom_results
from medsight.inference import Predictor
from medsight.io import read, write_dicom_image, write_dicom_series

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_packages(work: Path) -> dict[str, Path]:
    """One-epoch runs of the two recipes on phantoms, exported as packages."""
    settings = {"cxr-findings": (60, ["train.epochs=1", "train.batch_size=8", "evaluation.bootstrap=20"]),
                "cardiac-function": (8, ["train.epochs=1", "evaluation.bootstrap=20", "preprocess.base_filters=16",
                                         "preprocess.overrides={spacing: [8.0, 2.5, 2.5], patch_size: [12, 64, 64], "
                                         "batch_size: 4, iterations_per_epoch: 5}"]),
                "lung-nodule-det": (6, ["train.epochs=1", "evaluation.bootstrap=20", "preprocess.base_filters=8",
                                        "preprocess.overrides={spacing: [5.0, 2.8, 2.8], patch_size: [32, 64, 64], "
                                        "batch_size: 2, iterations_per_epoch: 4}"])}  # fmt: skip
    packages = {}
    for recipe, (cases, overrides) in settings.items():
        if (work / f"package-{recipe}" / "package.json").is_file():  # --work given again: trained already
            packages[recipe] = work / f"package-{recipe}"
            continue
        started = time.perf_counter()
        folder = make_phantom(recipe, work / recipe, cases=cases, seed=0)
        manifest = build_manifest(folder)
        if recipe == "lung-nodule-det":  # LUNA16's subsets draw no val split: drawn here, by patient
            manifest = assign_splits(manifest, val_fraction=0.2, test_fraction=0.2, seed=0, respect_official=False)
        manifest.save(work / f"{recipe}.csv")
        fit(load_recipe(recipe, overrides), work / f"{recipe}.csv", work / f"run-{recipe}")
        packages[recipe] = export_package(work / f"run-{recipe}", work / f"package-{recipe}", format="onnx").folder
        print(f"  {recipe}: trained one epoch and exported in {time.perf_counter() - started:.0f} s", flush=True)
    return packages


def study_makers(work: Path) -> dict[str, object]:
    """Functions writing a new study (new UIDs) of each kind into a folder: a DX chest X-ray, an MR series, a
    chest CT series."""
    xray = next(p for p in sorted((work / "cxr-findings").rglob("*")) if p.suffix.lower() in (".png", ".jpg"))
    image = read(xray)
    values = np.clip(np.asarray(image.array, dtype=np.float64), 0, None)
    values = (values / max(float(values.max()), 1.0) * 4095).astype(np.uint16)
    projection = Volume(values.reshape(1, 1, *values.shape[-2:]), image.geometry, VolumeMetadata(modality="DX"))
    frame = next(p for p in sorted((work / "cardiac-function").rglob("*frame*.nii.gz")) if "_gt" not in p.name)
    heart = read(frame)
    series = Volume(np.asarray(heart.array).astype(np.int16), heart.geometry, VolumeMetadata(modality="MR"))

    def cxr(folder: Path) -> list[Path]:
        folder.mkdir(parents=True)
        return [write_dicom_image(projection, folder / "cxr.dcm", modality="DX", study_uid=pydicom.uid.generate_uid())]

    def mr(folder: Path) -> list[Path]:
        folder.parent.mkdir(parents=True, exist_ok=True)
        return write_dicom_series(series, folder, modality="MR", study_uid=pydicom.uid.generate_uid())

    scan = read(next(p for p in sorted((work / "lung-nodule-det").rglob("*.mhd"))))
    chest = Volume(np.asarray(scan.array).astype(np.int16), scan.geometry, VolumeMetadata(modality="CT"))

    def ct(folder: Path) -> list[Path]:
        folder.parent.mkdir(parents=True, exist_ok=True)
        return write_dicom_series(chest, folder, modality="CT", study_uid=pydicom.uid.generate_uid())

    return {"cxr": cxr, "mr": mr, "ct": ct}


def send(port: int, paths: list[Path], called: str = "MEDSIGHT", nodelay: bool = True) -> float:
    """C-STORE the files in one association (TCP_NODELAY on our side unless ``nodelay`` is False);
    the time the last Success came back."""
    from medsight.service.dimse import nodelay as set_nodelay

    ae = AE(ae_title="BENCH")
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    for sop_class in sorted({str(h.SOPClassUID) for h in heads}):
        ae.requested_contexts = [*ae.requested_contexts, build_context(sop_class, [
            str(h.file_meta.TransferSyntaxUID) for h in heads if str(h.SOPClassUID) == sop_class][:1])]  # fmt: skip
    assoc = ae.associate("127.0.0.1", port, ae_title=called,
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)] if nodelay else [])  # fmt: skip
    if not assoc.is_established:
        raise SystemExit(f"no association with {called} on port {port}")
    for path in paths:
        status = assoc.send_c_store(path)
        if int(status.Status) != 0:
            raise SystemExit(f"{path.name} refused: 0x{int(status.Status):04X}")
    done = time.monotonic()
    assoc.release()
    return done


def _store_scp(ae_title: str, handler: object) -> tuple[object, int]:
    """A C-STORE SCP on a free loopback port, calling ``handler`` for each instance; (server, port)."""
    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)])
    return server, server.server_address[1]


class PlainScp:
    """The baseline receiver: pynetdicom writing each data set to a file, no checks, no flush."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0
        self.server, self.port = _store_scp("MEDSIGHT", self._store)

    def _store(self, event) -> int:
        self.count += 1
        (self.folder / f"{self.count}.dcm").write_bytes(event.encoded_dataset())
        return 0


class Pacs:
    """Where the results go: an in-process C-STORE SCP noting when each study's SR arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        self.server, self.port = _store_scp("PACS", self._store)

    def _store(self, event) -> int:
        if str(event.request.AffectedSOPClassUID) == SR_CLASS:
            with self.lock:
                self.arrived[str(event.dataset.StudyInstanceUID)] = time.monotonic()
        return 0

    def wait(self, study_uid: str, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if study_uid in self.arrived:
                return self.arrived[study_uid]
            time.sleep(0.005)
        raise SystemExit(f"the SR of study {study_uid} never arrived")


class Orthanc:
    """A real Orthanc as the PACS, asked every 20 ms whether a study's SR has arrived."""

    def __init__(self, work: Path) -> None:
        import httpx2 as httpx

        self.httpx, self.port, http_port = httpx, _free_port(), _free_port()
        settings = {"Name": "bench", "StorageDirectory": str(work / "orthanc"), "IndexDirectory": str(work / "orthanc"),
                    "HttpPort": http_port, "DicomPort": self.port, "DicomAet": "PACS", "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False, "TcpNoDelay": True, "Plugins": []}  # fmt: skip
        (work / "orthanc.json").write_text(json.dumps(settings))
        binary = shutil.which("Orthanc")
        if binary is None:
            raise SystemExit("Orthanc is not installed (apt install orthanc)")
        self.process = subprocess.Popen([binary, str(work / "orthanc.json")], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
        self.base = f"http://127.0.0.1:{http_port}"
        for _ in range(300):
            try:
                httpx.get(f"{self.base}/system", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)

    def wait(self, study_uid: str, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}
        while time.monotonic() < deadline:
            if self.httpx.post(f"{self.base}/tools/find", json=query, timeout=10).json():
                return time.monotonic()
            time.sleep(0.02)
        raise SystemExit(f"the SR of study {study_uid} never arrived in Orthanc")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cxr", type=int, default=8, help="chest X-ray studies timed one by one")
    parser.add_argument("--studies", type=int, default=4, help="MR series timed one by one (and sent for receive)")
    parser.add_argument("--ct", type=int, default=4, help="chest CT series timed one by one (nodule detection)")
    parser.add_argument("--orthanc", action="store_true", help="send the results to a real Orthanc")
    parser.add_argument("--work", type=Path, help="keep the trained packages here (and reuse them next time)")
    args = parser.parse_args()

    import os

    from fastapi.testclient import TestClient

    from medsight.service import load_serve_config
    from medsight.service.app import create_app

    print(f"CPU: {cpu_class()}, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        packages = train_packages(args.work or work)
        make = study_makers(args.work or work)
        pacs = Orthanc(work) if args.orthanc else Pacs()
        os.environ.setdefault("MEDSIGHT_API_TOKENS", "bench=bench-token-0123456789")
        spec = {"storage": str(work / "store"), "poll_s": 1.0,
                "dicom": {"port": _free_port(), "ae_title": "MEDSIGHT"},
                "models": {"cxr": {"package": str(packages["cxr-findings"])},
                           "heart": {"package": str(packages["cardiac-function"])},
                           "lung": {"package": str(packages["lung-nodule-det"])}},
                "routes": [{"name": "cxr", "model": "cxr", "match": {"modality": ["DX", "CR"]}, "send_to": ["pacs"]},
                           {"name": "heart", "model": "heart", "match": {"modality": ["MR"]}, "send_to": ["pacs"]},
                           {"name": "lung", "model": "lung", "match": {"modality": ["CT"]}, "send_to": ["pacs"]}],
                "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}}}  # fmt: skip
        (work / "serve.yaml").write_text(json.dumps(spec))
        config = load_serve_config(work / "serve.yaml")
        dicom_port = config.dicom.port

        # the package on its own, same studies: the baseline of the latency
        alone: dict[str, list[float]] = {"cxr": [], "mr": [], "ct": []}
        kinds = (("cxr", packages["cxr-findings"], args.cxr), ("mr", packages["cardiac-function"], args.studies),
                 ("ct", packages["lung-nodule-det"], args.ct))  # fmt: skip
        for kind, package, count in kinds:
            predictor = Predictor.from_run(package)
            for i in range(count + 1):
                paths = make[kind](work / f"alone-{kind}-{i}")
                started = time.perf_counter()
                table = predictor.predict_files([paths[0] if kind == "cxr" else paths[0].parent],
                                                masks=work / f"alone-masks-{kind}-{i}").table()  # fmt: skip
                write_dicom_results(predictor, table, work / f"alone-out-{kind}-{i}")
                if i:  # the first warms up
                    alone[kind].append(time.perf_counter() - started)

        app = create_app(config)
        with TestClient(app):
            served: dict[str, list[float]] = {"cxr": [], "mr": [], "ct": []}
            for kind, count in (("cxr", args.cxr), ("mr", args.studies), ("ct", args.ct)):
                for i in range(count + 1):
                    paths = make[kind](work / f"served-{kind}-{i}")
                    study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
                    acknowledged = send(dicom_port, paths)
                    arrived = pacs.wait(study)
                    if i:
                        served[kind].append(arrived - acknowledged)

            # receive: new studies each time, to the listener (with nothing else to do: no study
            # staged, queued or running) and to a plain pynetdicom SCP
            def idle() -> None:
                store, listener = app.state.node.store, app.state.listener
                while listener._last or store.counts()["queued"] or store.counts()["running"] or store.due():
                    time.sleep(0.1)

            plain = PlainScp(work / "plain")
            (work / "plain").mkdir()
            rates = {}
            senders = [True, False] + (["storescu"] if shutil.which("storescu") else [])
            for round_ in range(2):  # the first round warms up
                for way in senders:
                    for name, port in (("plain", plain.port), ("medsight", dicom_port)):
                        where = work / f"receive-{way}-{name}-{round_}"
                        batch = [p for i in range(args.studies) for p in make["mr"](where / str(i))]
                        idle()
                        started = time.monotonic()
                        if way == "storescu":  # dcmtk in a process of its own (no GIL shared with the receiver)
                            subprocess.run(["storescu", "-aet", "BENCH", "-aec", "MEDSIGHT", "127.0.0.1", str(port),
                                            *map(str, batch)], check=True, capture_output=True, env={**os.environ,
                                            "TCP_NODELAY": "1"})  # fmt: skip
                            done = time.monotonic()
                        else:
                            done = send(port, batch, nodelay=way)
                        rates[name, way] = len(batch) / (done - started)
            plain.server.shutdown()
        if isinstance(pacs, Orthanc):
            pacs.stop()
        kib = pydicom.dcmread(batch[0]).pixel_array.nbytes // 1024 if batch else 0
        slices = len(batch) // max(args.studies, 1)
        ct_slices = len(list((work / "served-ct-0").glob("*.dcm"))) if args.ct else 0

    print(f"\nreceive ({len(batch)} MR instances of {kib} KiB pixels each, one association, the receiver idle):")
    labels = {True: "pynetdicom sender in this process, TCP_NODELAY on",
              False: "pynetdicom sender in this process, TCP_NODELAY off (Nagle's algorithm on)",
              "storescu": "dcmtk storescu, a process of its own (process start included), TCP_NODELAY=1"}  # fmt: skip
    for way in senders:
        ratio = rates["medsight", way] / rates["plain", way]
        print(
            f"  {labels[way]}:\n    plain pynetdicom SCP   {rates['plain', way]:8.0f} instances/s\n"
            f"    medsight listener      {rates['medsight', way]:8.0f} instances/s   medsight/plain {ratio:.2f}"
        )
    where = "Orthanc" if args.orthanc else "PACS"
    print(f"\nstudy-to-result latency (last instance acknowledged -> SR stored at the {where}):")
    for kind, label in (
        ("cxr", "chest X-ray (DX, 1 image)"),
        ("mr", f"MR series ({slices} slices)"),
        ("ct", f"chest CT series ({ct_slices} slices)"),
    ):
        s, a = served[kind], alone[kind]
        if s:
            print(
                f"  {label:26s} service p50 {_pct(s, 50):5.2f} s  p95 {_pct(s, 95):5.2f} s   "
                f"package alone p50 {_pct(a, 50):5.2f} s   service share p50 {_pct(s, 50) - _pct(a, 50):5.2f} s"
            )
    print(
        f"\n({args.cxr} chest X-rays, {args.studies} MR series and {args.ct} CT series, one at a time, after one "
        "warm-up each; the "
        "service waits release_s = 1 s for a study to be complete)"
    )


if __name__ == "__main__":
    main()
