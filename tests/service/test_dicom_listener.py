"""The DICOM listener (C-STORE SCP): a series sent by a DICOM peer becomes one job once the study
is idle, and comes back as DICOM results; each instance is on disk before it is acknowledged, so a
stop or kill -9 loses none; callers and AE titles are checked; bad instances are refused one by one;
our own results sent back are taken and dropped; TCP_NODELAY is on."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'medsight[serve]')")
pytest.importorskip("pynetdicom", reason="the serve extra is not installed (pip install 'medsight[serve]')")

import pydicom
from fastapi.testclient import TestClient
from pynetdicom import AE

from medsight.service import load_serve_config
from medsight.service.app import create_app
from medsight.service.dimse import DicomListener
from medsight.service.node import Node
from tests.service.common import AUTH, config_file, free_port, serve_process

CALLER = "MODALITY"


def _dicom(**changes) -> dict:
    return {"ae_title": "MEDSIGHT", "host": "127.0.0.1", "port": 0, "idle_s": 30.0, "release_s": 30.0, **changes}


def _send(port: int, paths: list[Path], *, caller: str = CALLER, called: str = "MEDSIGHT", check=None) -> list:
    """C-STORE ``paths`` to the listener with pynetdicom; the status of each (None: no association)."""
    ae = AE(ae_title=caller)
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    for context in {(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in heads}:
        ae.add_requested_context(*context)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return [None] * len(paths)
    try:
        statuses = [int(assoc.send_c_store(p).Status) for p in paths]
        if check is not None:  # with the association still open
            check()
        return statuses
    finally:
        assoc.release()


def _app(tmp_path: Path, made, **dicom):
    config = load_serve_config(config_file(tmp_path, made["package"], dicom=_dicom(**dicom)))
    return config, create_app(config, worker=False)


def test_a_series_sent_by_c_store_comes_back_as_dicom_results(tmp_path, made, tokens):
    config, app = _app(tmp_path, made)
    node: Node = app.state.node
    listener: DicomListener = app.state.listener
    paths = sorted(made["MR"].iterdir())
    with TestClient(app) as client:
        assert client.get("/health").json()["dicom_port"] == listener.port

        def nodelay_is_on() -> None:
            for _ in range(50):  # the acceptor's side of the association, once it is up
                if listener._server.active_associations:
                    break
                time.sleep(0.05)
            raw = listener._server.active_associations[0].dul.socket.socket
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

        assert _send(listener.port, paths, check=nodelay_is_on) == [0] * len(paths)
        staged = {p.stem: pydicom.dcmread(p) for p in (config.storage / "incoming").rglob("*.dcm")}
        sent = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, paths)}
        assert staged.keys() == sent.keys()
        assert all(staged[k] == sent[k] for k in sent)  # the data sets as sent (the file meta is the receiver's)
        assert listener.complete_idle() == 0 and client.get("/jobs", headers=AUTH).json() == []  # not idle yet
        assert listener.complete_idle(time.monotonic() + 31) == 1
        (job,) = client.get("/jobs", headers=AUTH).json()
        assert (job["source"], job["submitted_by"], job["instances"]) == ("dicom", f"dicom:{CALLER}", len(paths))
        assert list((config.storage / "incoming").iterdir()) == []
        assert node.process_next()
        done = client.get(f"/jobs/{job['id']}", headers=AUTH).json()
        assert done["status"] == "done", done["note"]
        assert done["study_uid"] == str(pydicom.dcmread(paths[0]).StudyInstanceUID) and len(done["outputs"]) == 3
        metrics = client.get("/metrics", headers=AUTH).text
        assert f"medsight_instances_received_total {float(len(paths))}" in metrics

        # the results sent back to the listener are taken (so the sender does not retry) and dropped
        results = sorted((config.storage / "results" / job["id"] / "dicom").iterdir())
        assert _send(listener.port, results) == [0] * len(results)
        assert list((config.storage / "incoming").iterdir()) == []
        assert client.get("/audit", headers=AUTH).json()[0]["action"] == "ignored_own_output"


def test_a_study_is_complete_soon_after_its_association_closes(tmp_path, made, tokens):
    """A sender that closes its association: the study is queued ``release_s`` after its last
    instance; one that keeps it open: only after ``idle_s``."""
    _, app = _app(tmp_path, made, release_s=0.2)
    node: Node = app.state.node
    listener: DicomListener = app.state.listener
    paths = sorted(made["MR"].iterdir())

    def still_open() -> None:
        later = time.monotonic() + 5
        assert listener.complete_idle(later) == 0  # released? no: idle_s (30) applies
        assert not node.store.jobs()

    with TestClient(app):
        sent = time.monotonic()
        assert _send(listener.port, paths, check=still_open) == [0] * len(paths)
        while not node.store.jobs() and time.monotonic() - sent < 20:  # the completer thread queues it
            time.sleep(0.05)
        (job,) = node.store.jobs()
        assert job.instances == len(paths)


def test_callers_titles_and_bad_instances_are_refused(tmp_path, made, tokens):
    config, app = _app(tmp_path, made, allowed_callers=["PACS"])
    listener: DicomListener = app.state.listener
    paths = sorted(made["MR"].iterdir())[:3]
    bad = pydicom.dcmread(paths[0])
    bad.SOPInstanceUID = "1.2.x"
    bad.save_as(tmp_path / "bad.dcm")
    with TestClient(app):
        assert _send(listener.port, paths, caller="STRANGER") == [None] * 3  # not an allowed caller
        assert _send(listener.port, paths, caller="PACS", called="OTHER") == [None] * 3  # not our AE title
        statuses = _send(listener.port, [paths[0], tmp_path / "bad.dcm", paths[1]], caller="PACS")
        assert statuses[0] == 0 and statuses[2] == 0 and statuses[1] == 0xC000
    staged = sorted(p.name for p in (config.storage / "incoming").rglob("*.dcm"))
    assert len(staged) == 2 and all(p.endswith(".dcm") and "x" not in p for p in staged)


def test_the_port_in_use_is_named_with_the_fix(tmp_path, made, tokens):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        _, app = _app(tmp_path, made, port=taken.getsockname()[1])
        from medsight.core.errors import ConfigError

        with pytest.raises(ConfigError, match=r"dicom\.port"), TestClient(app):
            pass


def test_staged_studies_survive_a_stop_and_a_move_cut_short(tmp_path, made, tokens):
    config, app = _app(tmp_path, made)
    node: Node = app.state.node
    paths = sorted(made["MR"].iterdir())
    with TestClient(app):
        listener: DicomListener = app.state.listener
        assert _send(listener.port, paths) == [0] * len(paths)
    # stopped before the study was idle: a new listener completes it idle_s after it starts
    restarted = DicomListener(node, config.dicom)
    assert restarted.complete_idle() == 0 and restarted.complete_idle(time.monotonic() + 31) == 1
    (job,) = node.store.jobs()
    assert job.instances == len(paths) and job.submitted_by == f"dicom:{CALLER}"
    # a study moved into the spool by a service killed before it recorded the job: adopted on start
    spool = config.storage / "spool"
    moved = spool / "0123456789abcdef0123456789abcdef"
    shutil.copytree(spool / job.id, moved)
    (moved / ".staged.json").write_text(json.dumps({"job": moved.name, "actor": "dicom:PACS", "source": "dicom"}))
    (spool / "never-acknowledged").mkdir()  # an HTTP receipt cut short: left alone
    again = Node(config, models=node.models)
    adopted = again.store.job(moved.name)
    assert adopted is not None and adopted.status == "queued" and adopted.instances == len(paths)
    assert again.store.job("never-acknowledged") is None and (spool / "never-acknowledged").is_dir()


def test_kill_9_with_a_study_staged_loses_nothing(tmp_path, made):
    """A real `medsight serve` with the listener, killed with SIGKILL after the instances were
    acknowledged but before the study was idle: after a restart the study is processed, once."""
    import httpx2 as httpx

    dicom_port, http_port, log = free_port(), free_port(), tmp_path / "serve.log"
    config = config_file(tmp_path, made["package"], poll_s=0.1, dicom=_dicom(port=dicom_port, idle_s=1.0))
    process = serve_process(config, http_port, log)
    base = f"http://127.0.0.1:{http_port}"
    paths = sorted(made["MR"].iterdir())
    try:
        assert _send(dicom_port, paths) == [0] * len(paths)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert len(list((tmp_path / "store" / "incoming").rglob("*.dcm"))) == len(paths)  # staged, not queued
        process = serve_process(config, http_port, log)
        deadline, jobs = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            jobs = httpx.get(f"{base}/jobs", headers=AUTH, timeout=10).json()
            if jobs and all(j["status"] not in ("queued", "running") for j in jobs):
                break
            time.sleep(0.2)
        assert [(j["status"], j["instances"]) for j in jobs] == [("done", len(paths))], log.read_text()[-3000:]
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed (apt install dcmtk)")
def test_dcmtk_storescu_is_understood(tmp_path, made, tokens):
    """An independent DICOM implementation (dcmtk) sends the series."""
    _, app = _app(tmp_path, made)
    paths = sorted(made["MR"].iterdir())
    with TestClient(app):
        listener: DicomListener = app.state.listener
        sent = subprocess.run(["storescu", "-aet", "DCMTK", "-aec", "MEDSIGHT", "127.0.0.1", str(listener.port),
                               *map(str, paths)], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert listener.complete_idle(time.monotonic() + 31) == 1
    (job,) = app.state.node.store.jobs()
    assert job.instances == len(paths) and job.submitted_by == "dicom:DCMTK"


def _copies(source: Path, target: Path, count: int) -> list[list[Path]]:
    """``count`` copies of a series as different studies (new study, series and instance UIDs)."""
    studies = []
    for i in range(count):
        study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        folder = target / f"study{i}"
        folder.mkdir(parents=True)
        for path in sorted(source.iterdir()):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(folder / path.name)
        studies.append(sorted(folder.iterdir()))
    return studies


def test_twenty_studies_sent_at_once_all_complete(tmp_path, made, tokens):
    """Twenty senders at the same time, each its own study in its own association: twenty jobs,
    every instance in them, all processed."""
    config = load_serve_config(config_file(tmp_path, made["package"], poll_s=0.1,
                                           dicom=_dicom(release_s=0.3)))  # fmt: skip
    studies = _copies(made["MR"], tmp_path / "copies", 20)
    with TestClient(create_app(config)) as client:
        listener: DicomListener = client.app.state.listener
        statuses: list[list] = [[] for _ in studies]
        threads = [threading.Thread(target=lambda i=i: statuses[i].extend(_send(listener.port, studies[i])))
                   for i in range(len(studies))]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert all(s == [0] * len(studies[0]) for s in statuses), statuses
        deadline, jobs = time.monotonic() + 300, []
        while time.monotonic() < deadline:
            jobs = client.get("/jobs", headers=AUTH).json()
            if len(jobs) == 20 and all(j["status"] == "done" for j in jobs):
                break
            time.sleep(0.2)
        sent = {str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID) for paths in studies}
        assert sorted(j["status"] for j in jobs) == ["done"] * 20
        assert {j["study_uid"] for j in jobs} == sent and {j["instances"] for j in jobs} == {len(studies[0])}
