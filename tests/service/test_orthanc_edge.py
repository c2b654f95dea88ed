"""Orthanc as the edge: studies stored into a real Orthanc (with its DICOMweb plugin) are pulled
once stable, processed once, and their results stored back into it by STOW-RS; the results coming
back, a later series and a re-read of Orthanc's whole history never make an instance run twice; a
dead Orthanc or an unreadable study stops nothing and passes nothing over unrecorded."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'medsight[serve]')")
pytest.importorskip("dicomweb_client", reason="the serve extra is not installed (pip install 'medsight[serve]')")

import pydicom
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from medsight.core.errors import ConfigError
from medsight.service import load_serve_config
from medsight.service.app import create_app
from medsight.service.node import Node
from medsight.service.orthanc import CURSOR, OrthancEdge, OrthancError
from medsight.service.send import Sender, SendError, stow
from tests.service.common import AUTH, config_file, free_port

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def _config(tmp_path: Path, made, base: str, dicomweb: str, **edge):
    destinations = {"orthanc": {"url": dicomweb, "retry_s": 0.05, "max_attempts": 3, "timeout_s": 10}}
    routes = [{"name": "mr", "model": "seg", "match": {"modality": ["MR"]}, "send_to": ["orthanc"]}]
    return load_serve_config(config_file(tmp_path, made["package"], orthanc={"url": base, "poll_s": 0.2, **edge},
                                         destinations=destinations, routes=routes, poll_s=0.2))  # fmt: skip


def _wait(what: str, found: Callable[[], object], timeout: float = 90.0) -> object:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        value = found()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _upload(base: str, paths: list[Path] | list[bytes]) -> None:
    import httpx2 as httpx

    for item in paths:
        data = item if isinstance(item, bytes) else item.read_bytes()
        httpx.post(f"{base}/instances", content=data, timeout=30).raise_for_status()


def _stable_changes(base: str) -> list[dict]:
    import httpx2 as httpx

    changes = httpx.get(f"{base}/changes", params={"limit": 1000}, timeout=10).json()["Changes"]
    return [c for c in changes if c["ChangeType"] == "StableStudy"]


def _instances(dicomweb: str, study_uid: str) -> list[dict]:
    return DICOMwebClient(dicomweb).search_for_instances(study_instance_uid=study_uid)


def _new_series(folder: Path) -> list[bytes]:
    """The folder's series again as a new series of the same study (new series and instance UIDs)."""
    series_uid, out = generate_uid(), []
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def test_stable_studies_are_pulled_once_and_their_results_stored_back(tmp_path, made, tokens, orthanc):
    if orthanc["dicomweb"] is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt install orthanc-dicomweb)")
    base, dicomweb = orthanc["base"], orthanc["dicomweb"]
    ct_uid = str(pydicom.dcmread(next(made["CT"].iterdir())).StudyInstanceUID)
    mr_uid = str(pydicom.dcmread(next(made["MR"].iterdir())).StudyInstanceUID)
    _upload(base, sorted(made["CT"].iterdir()))  # stable before the service's first start: left alone
    _wait("the CT study to be stable", lambda: _stable_changes(base))
    config = _config(tmp_path, made, base, dicomweb)
    with TestClient(create_app(config)) as client:
        node: Node = client.app.state.node
        _wait("the edge's first poll", lambda: node.store.state(CURSOR))
        _upload(base, sorted(made["MR"].iterdir()))
        jobs = _wait("the MR study's job", lambda: client.get("/jobs", headers=AUTH).json())
        (job,) = jobs
        assert job["study_uid"] == mr_uid and job["source"] == "orthanc" and job["submitted_by"] == "orthanc"
        assert job["instances"] == len(list(made["MR"].iterdir()))
        sent = _wait("the results delivered", lambda: client.get("/deliveries?status=sent", headers=AUTH).json())
        assert sent[0]["destination"] == "orthanc" and sent[0]["attempts"] == 1
        done = client.get(f"/jobs/{job['id']}", headers=AUTH).json()
        stored = {i["00080018"]["Value"][0]: i["00080016"]["Value"][0] for i in _instances(dicomweb, mr_uid)}
        assert set(done["outputs"]) <= set(stored) and {SEG, SR} <= set(stored.values())
        web = DICOMwebClient(dicomweb)
        for path in (tmp_path / "store" / "results" / job["id"] / "dicom").glob("*.dcm"):  # each reads back equal
            mine = pydicom.dcmread(path)
            back = web.retrieve_instance(mr_uid, str(mine.SeriesInstanceUID), str(mine.SOPInstanceUID),
                                         media_types=(("application/dicom", "*"),))  # fmt: skip
            assert back == mine
        # the results stored back make the study stable again: seen, audited, not processed
        _wait("the study stable again with its results", lambda: len(_stable_changes(base)) >= 3)
        last = _stable_changes(base)[-1]["Seq"]
        _wait("the edge past that change", lambda: int(node.store.state(CURSOR) or 0) >= last)
        ignored = [e for e in client.get("/audit", headers=AUTH).json() if e["action"] == "ignored_own_output"]
        assert sorted(ignored[0]["detail"]["instances"]) == sorted(done["outputs"])
        # a later series of the same study: pulled alone
        extra = _new_series(made["MR"])
        _upload(base, extra)
        jobs = _wait("the new series' job", lambda: len(client.get("/jobs", headers=AUTH).json()) == 2 and
                     client.get("/jobs", headers=AUTH).json())  # fmt: skip
        assert {j["study_uid"] for j in jobs} == {mr_uid} and jobs[0]["instances"] == len(extra)
        assert ct_uid not in {j["study_uid"] for j in jobs}
    # Orthanc's whole history read again (the position lost): only what was never pulled is taken
    node = Node(config)
    node.store.set_state(CURSOR, "0")
    edge = OrthancEdge(node, config.orthanc)
    while edge.poll():
        pass
    new = [j for j in node.store.jobs(limit=10) if j.study_uid != mr_uid]
    assert [j.study_uid for j in new] == [ct_uid] and len(node.store.jobs(limit=10)) == 3


def test_a_dead_orthanc_passes_nothing_over(tmp_path, made, tokens, caplog):
    port = free_port()  # nothing listens there
    config = _config(tmp_path, made, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/dicom-web")
    node = Node(config)
    edge = OrthancEdge(node, config.orthanc)
    with pytest.raises(OrthancError, match=r"cannot be reached .*is it running, and is orthanc.url right"):
        edge.poll()
    assert node.store.state(CURSOR) is None
    edge.start()  # the thread outlives the outage, and says so once
    time.sleep(1.0)
    edge.stop()
    assert sum("cannot be reached" in r.getMessage() for r in caplog.records) == 1
    assert "cannot be reached" in edge.status  # what /health says
    with TestClient(create_app(config, worker=False)) as client:
        time.sleep(0.5)
        assert client.get("/health").json()["orthanc"] == "down"  # the reason is in the log, not told to anyone


def test_an_unreadable_study_is_passed_over_and_audited(tmp_path, made, tokens, monkeypatch):
    config = _config(tmp_path, made, "http://127.0.0.1:9", "http://127.0.0.1:9/dicom-web")
    node = Node(config)
    node.store.set_state(CURSOR, "10")
    edge = OrthancEdge(node, config.orthanc)
    listed = [{"sop": "1.2.3.4", "sop_class": "1.2.840.10008.5.1.4.1.1.4", "series": "1.2.3", "manufacturer": ""}]
    monkeypatch.setattr(edge, "_get", lambda path, **_: {"MainDicomTags": {"StudyInstanceUID": "1.2"}})
    monkeypatch.setattr(edge, "_search", lambda study_uid: listed)
    monkeypatch.setattr(edge, "_retrieve", lambda study_uid, wanted: [("1.2.3.4.dcm", b"not DICOM at all")])
    edge.take("orthanc-id", 12)
    assert node.store.jobs() == [] and node.store.state(CURSOR) == "12"
    (refused,) = [e for e in node.store.events() if e.action == "refused"]
    assert refused.actor == "orthanc" and "1.2" in refused.detail
    assert node.store.pulled(["1.2.3.4"]) == {"1.2.3.4"}  # not pulled again at the next change of its study


def test_stow_to_a_dead_server_is_named_and_dead_lettered(tmp_path, made, tokens):
    port = free_port()
    config = _config(tmp_path, made, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/dicom-web")
    some = sorted(made["MR"].iterdir())[:1]
    with pytest.raises(SendError, match="cannot be reached"):
        stow(config.destinations["orthanc"], some)
    node = Node(config, models=None)
    (job,) = node.receive([(p.name, p.read_bytes()) for p in sorted(made["MR"].iterdir())], actor="alice")
    assert node.process_next()
    sender = Sender(node)
    for _ in range(100):
        sender.send_due()
        (delivery,) = node.store.deliveries(job.id)
        if delivery.status == "dead":
            break
        time.sleep(0.05)
    assert delivery.status == "dead" and delivery.attempts == 3 and "cannot be reached" in delivery.error


def test_dicomweb_settings_are_checked(tmp_path, made, tokens, monkeypatch):
    both = {"pacs": {"url": "http://pacs/dicom-web", "ae_title": "PACS"}}
    with pytest.raises(ConfigError, match=r"either url .* or ae_title, host and port"):
        load_serve_config(config_file(tmp_path, made["package"], destinations=both))
    with pytest.raises(ConfigError, match="is not an http:// or https:// URL"):
        load_serve_config(config_file(tmp_path, made["package"], orthanc={"url": "pacs:8042"}))
    with pytest.raises(ConfigError, match=r"orthanc\.pol_s.*poll_s"):
        load_serve_config(config_file(tmp_path, made["package"], orthanc={"url": "http://pacs", "pol_s": 1}))
    secret = {"url": "http://127.0.0.1:9", "username": "medsight", "password_env": "ORTHANC_PASSWORD"}
    monkeypatch.delenv("ORTHANC_PASSWORD", raising=False)
    config = load_serve_config(config_file(tmp_path, made["package"], orthanc=secret))
    with pytest.raises(ConfigError, match=r"set orthanc\.password_env to an environment variable"):
        create_app(config, worker=False)
    monkeypatch.setenv("ORTHANC_PASSWORD", "s3cret")
    app = create_app(config, worker=False)
    assert app.state.edge.http.auth == ("medsight", "s3cret")


def _new_study(folder: Path) -> list[bytes]:
    """The folder's series again as another study (new study, series and instance UIDs)."""
    study, series, out = generate_uid(), generate_uid(), []
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def test_kill_9_while_pulling_then_restart_takes_each_study_once(tmp_path, made, orthanc):
    """A real `medsight serve` on the Orthanc edge, killed with SIGKILL while it pulls: after a
    restart each of Orthanc's studies has exactly one job, processed once."""
    import signal
    import sqlite3

    import httpx2 as httpx

    from tests.service.common import serve_process

    if orthanc["dicomweb"] is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt install orthanc-dicomweb)")
    studies = [_new_study(made["MR"]) for _ in range(4)]
    uids = {str(pydicom.dcmread(io.BytesIO(s[0])).StudyInstanceUID) for s in studies}
    for study in studies:
        _upload(orthanc["base"], study)
    _wait("Orthanc to find the four studies stable", lambda: len(_stable_changes(orthanc["base"])) >= 4)
    config = config_file(tmp_path, made["package"], orthanc={"url": orthanc["base"], "poll_s": 0.1, "history": True},
                         poll_s=0.1)  # fmt: skip
    database = tmp_path / "store" / "service.db"

    def jobs() -> list[tuple[str, str]]:
        try:
            with sqlite3.connect(database) as db:
                return db.execute("SELECT study_uid, status FROM jobs").fetchall()
        except sqlite3.Error:  # not made yet
            return []

    port, log = free_port(), tmp_path / "serve.log"
    process = serve_process(config, port, log)
    try:
        _wait("the first pulled study", jobs, timeout=120)
        process.send_signal(signal.SIGKILL)  # while it pulls the others (or processes the first)
        process.wait(timeout=30)
        assert len(jobs()) < 4 or any(status in ("queued", "running") for _, status in jobs()), jobs()
        process = serve_process(config, port, log)
        base = f"http://127.0.0.1:{port}"
        _wait("every study done", lambda: len(jobs()) >= 4 and all(s == "done" for _, s in jobs()), timeout=240)
        time.sleep(2)  # a few more polls: nothing is pulled again
        found = jobs()
        assert sorted(uid for uid, _ in found) == sorted(uids), (found, log.read_text()[-3000:])
        audit = httpx.get(f"{base}/audit", params={"limit": 1000}, headers=AUTH, timeout=10).json()
        processed = {e["study_uid"] for e in audit if e["action"] == "processed"}
        assert processed == uids  # each study's one job processed (a kill between its results and its
        # record leaves it recorded again at the restart, from the same results: not run twice)
        pulled = [e for e in audit if e["action"] == "received"]
        assert sorted(e["study_uid"] for e in pulled) == sorted(uids)  # each pulled once
    finally:
        process.kill()
        process.wait(timeout=30)
