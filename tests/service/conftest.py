"""The service tests' model package and DICOM studies, made once per session."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.service.common import TOKEN, free_port


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> dict[str, Path]:
    """A segmentation package, and two of its test cases as DICOM series: an MR one and a CT one."""
    pytest.importorskip("onnxruntime", reason="the serve extra is not installed (pip install 'medsight[serve]')")
    from medsight.core import Volume, VolumeMetadata
    from medsight.export import export_package
    from medsight.io import read, write_dicom_series
    from tests.export.runs import trained

    root = tmp_path_factory.mktemp("service")
    run, data, _ = trained(root, "segmentation")
    export_package(run, root / "package", format="onnx")
    series = {}
    for modality, case in (("MR", 8), ("CT", 9)):
        image = read(data / f"case{case}.nii.gz")
        volume = Volume(image.array.astype(np.int16), image.geometry, VolumeMetadata(modality=modality))
        write_dicom_series(volume, root / modality)
        series[modality] = root / modality
    return {"package": root / "package", **series}


@pytest.fixture(scope="session")
def classifier(tmp_path_factory) -> dict[str, Path]:
    """A 2D classifier package (ONNX), and one of its test images as a DX chest film in DICOM."""
    pytest.importorskip("onnxruntime", reason="the serve extra is not installed (pip install 'medsight[serve]')")

    from medsight.core import Volume, VolumeMetadata
    from medsight.export import export_package
    from medsight.io import read, write_dicom_image
    from tests.export.runs import trained

    root = tmp_path_factory.mktemp("classifier")
    run, data, _ = trained(root, "binary")
    export_package(run, root / "package", format="onnx")
    png = read(data / "img030.png")
    (root / "DX").mkdir()
    film = Volume(np.asarray(png.array).astype(np.uint16), png.geometry, VolumeMetadata(modality="DX"))
    write_dicom_image(film, root / "DX" / "film.dcm")  # PatientOrientation L F, as a DX image must say
    return {"package": root / "package", "DX": root / "DX"}


@pytest.fixture
def tokens(monkeypatch):
    """Two API tokens in the environment: alice's and bob's."""
    monkeypatch.setenv("MEDSIGHT_API_TOKENS", f"alice={TOKEN},bob=bob-token-0123456789")


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server (initdb in a temporary folder, a Unix socket there, trust auth)
    for this session; skips where PostgreSQL or psycopg is not installed."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="medsight-pg-"))  # not under pytest's folder: the postgres user must reach it
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the postgres user, in folders it owns
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        run_as = ["runuser", "-u", "postgres", "--"]
        for folder in (root, sockets):
            shutil.chown(folder, "postgres")
    log = root / "server.log"
    subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "medsight",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)  # fmt: skip
    options = f"-c listen_addresses='' -c unix_socket_directories={sockets} -c fsync=off -p 5432"
    started = subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                              "-w", "-t", "60", "start"], capture_output=True, text=True, timeout=120)  # fmt: skip
    if started.returncode != 0:
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log.read_text() if log.exists() else ''}")
    try:
        yield f"postgresql+psycopg://medsight@/postgres?host={sockets}&port=5432"
    finally:
        subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _dicomweb_plugin() -> Path | None:
    """Debian's orthanc-dicomweb plugin, where it is installed."""
    for folder in (Path("/usr/lib/orthanc"), Path("/usr/share/orthanc/plugins")):
        found = sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []
        if found:
            return found[-1]
    return None


@pytest.fixture
def orthanc(tmp_path) -> Iterator[dict]:
    """A real Orthanc on loopback ports (TCP_NODELAY on; a study is stable 1 s after its last
    instance), with its DICOMweb plugin where that is installed; skips where Orthanc is not."""
    binary = shutil.which("Orthanc")
    if binary is None:
        pytest.skip("Orthanc is not installed (apt install orthanc)")
    import httpx2 as httpx

    plugin = _dicomweb_plugin()
    http_port, dicom_port = free_port(), free_port()
    settings = {"Name": "medsight-test", "StorageDirectory": str(tmp_path / "orthanc"),
                "IndexDirectory": str(tmp_path / "orthanc"), "HttpPort": http_port, "DicomPort": dicom_port,
                "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                "DicomCheckCalledAet": True, "TcpNoDelay": True, "StableAge": 1,
                "Plugins": [str(plugin)] if plugin else [],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}  # fmt: skip
    (tmp_path / "orthanc.json").write_text(json.dumps(settings))
    log = (tmp_path / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(tmp_path / "orthanc.json")], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{http_port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/system", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"Orthanc did not start: {(tmp_path / 'orthanc.log').read_text()[-2000:]}")
    try:
        yield {"base": base, "dicom_port": dicom_port, "dicomweb": f"{base}/dicom-web" if plugin else None}
    finally:
        process.terminate()
        process.wait(30)
        log.close()
