"""Results sent back: a done job's DICOM results arrive at the destinations its route names (a
pynetdicom PACS here, and a real Orthanc where it is installed); a dead or refusing PACS leads to
bounded retries and then a dead letter, listed and retried on demand, with nothing lost."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'medsight[serve]')")
pytest.importorskip("pynetdicom", reason="the serve extra is not installed (pip install 'medsight[serve]')")

import pydicom
from fastapi.testclient import TestClient
from pynetdicom import AE, AllStoragePresentationContexts, evt

from medsight.core.errors import ConfigError
from medsight.service import load_serve_config
from medsight.service.app import create_app
from medsight.service.node import Node
from medsight.service.send import Sender
from tests.service.common import AUTH, config_file, files, free_port


class Pacs:
    """A C-STORE SCP standing in for a PACS: keeps what it is sent, or answers ``status``."""

    def __init__(self, port: int, status: int = 0x0000) -> None:
        self.port, self.status, self.received = port, status, []
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])  # fmt: skip

    def _store(self, event) -> int:
        if self.status == 0:
            self.received.append(event.dataset)
        return self.status

    def stop(self) -> None:
        self.server.shutdown()


def _app(tmp_path: Path, made, port: int, **destination):
    pacs = {"ae_title": "PACS", "host": "127.0.0.1", "port": port, "retry_s": 0.05, "max_attempts": 3,
            "timeout_s": 5, **destination}  # fmt: skip
    routes = [{"name": "mr", "model": "seg", "match": {"modality": ["MR"]}, "send_to": ["pacs"]}]
    config = load_serve_config(config_file(tmp_path, made["package"], destinations={"pacs": pacs}, routes=routes))
    return config, create_app(config, worker=False)


def _done_job(client: TestClient, node: Node, made) -> dict:
    (job,) = client.post("/studies", files=files(made["MR"]), headers=AUTH).json()["jobs"]
    assert node.process_next()
    return client.get(f"/jobs/{job['id']}", headers=AUTH).json()


def _send_until(sender: Sender, client: TestClient, job_id: str, status: str) -> dict:
    for _ in range(200):
        sender.send_due()
        (delivery,) = client.get(f"/deliveries?job={job_id}", headers=AUTH).json()
        if delivery["status"] == status:
            return delivery
        time.sleep(0.05)
    raise AssertionError(f"delivery never became {status}: {delivery}")


def test_results_arrive_at_the_pacs(tmp_path, made, tokens):
    port = free_port()
    pacs = Pacs(port)
    _, app = _app(tmp_path, made, port)
    node: Node = app.state.node
    try:
        with TestClient(app) as client:
            done = _done_job(client, node, made)
            assert [d["status"] for d in done["deliveries"]] == ["pending"]
            delivery = _send_until(Sender(node), client, done["id"], "sent")
            assert delivery["attempts"] == 1 and delivery["error"] == ""
            assert sorted(str(ds.SOPInstanceUID) for ds in pacs.received) == sorted(done["outputs"])
            assert {str(ds.StudyInstanceUID) for ds in pacs.received} == {done["study_uid"]}
            sent = [e for e in client.get(f"/audit?job={done['id']}", headers=AUTH).json() if e["action"] == "sent"]
            assert sent[0]["detail"] == {"destination": "pacs", "attempts": 1, "instances": 3}
    finally:
        pacs.stop()


def test_a_dead_pacs_gets_bounded_retries_then_a_dead_letter_and_nothing_is_lost(tmp_path, made, tokens):
    port = free_port()  # nothing listens there yet
    _, app = _app(tmp_path, made, port)
    node: Node = app.state.node
    sender = Sender(node)
    with TestClient(app) as client:
        done = _done_job(client, node, made)
        dead = _send_until(sender, client, done["id"], "dead")
        assert dead["attempts"] == 3 and "cannot be reached" in dead["error"]
        assert [d["id"] for d in client.get("/deliveries?status=dead", headers=AUTH).json()] == [dead["id"]]
        actions = [e["action"] for e in client.get(f"/audit?job={done['id']}", headers=AUTH).json()]
        assert actions.count("dead_letter") == 1
        assert 'medsight_deliveries{status="dead"} 1.0' in client.get("/metrics", headers=AUTH).text
        time.sleep(0.3)
        assert sender.send_due() == 0  # a dead letter is not tried again by itself
        pacs = Pacs(port)
        try:
            retried = client.post(f"/deliveries/{dead['id']}/retry", headers=AUTH)
            assert retried.status_code == 200 and retried.json()["status"] == "pending"
            assert _send_until(sender, client, done["id"], "sent")["attempts"] == 1
            assert sorted(str(ds.SOPInstanceUID) for ds in pacs.received) == sorted(done["outputs"])
            assert client.post(f"/deliveries/{dead['id']}/retry", headers=AUTH).status_code == 409  # sent already
            assert client.post("/deliveries/999/retry", headers=AUTH).status_code == 404
        finally:
            pacs.stop()


def test_a_refusing_pacs_is_named_with_its_status(tmp_path, made, tokens):
    port = free_port()
    pacs = Pacs(port, status=0xA700)  # out of resources
    _, app = _app(tmp_path, made, port, max_attempts=2)
    node: Node = app.state.node
    try:
        with TestClient(app) as client:
            done = _done_job(client, node, made)
            dead = _send_until(Sender(node), client, done["id"], "dead")
            assert dead["attempts"] == 2 and "refused" in dead["error"] and "0xA700" in dead["error"]
    finally:
        pacs.stop()


def test_a_route_sending_to_an_unknown_destination_is_named(tmp_path, made, tokens):
    routes = [{"name": "mr", "model": "seg", "send_to": ["pacs"]}]
    with pytest.raises(ConfigError, match="sends to 'pacs', which is not under destinations"):
        load_serve_config(config_file(tmp_path, made["package"], routes=routes))
    bad = {"pacs": {"ae_title": "A\\B", "host": "h", "port": 104}}
    with pytest.raises(ConfigError, match="not an AE title"):
        load_serve_config(config_file(tmp_path, made["package"], destinations=bad))


def test_results_arrive_in_orthanc_and_read_back(tmp_path, made, tokens, orthanc):
    import httpx2 as httpx

    _, app = _app(tmp_path, made, orthanc["dicom_port"], ae_title="ORTHANC")
    node: Node = app.state.node
    with TestClient(app) as client:
        done = _done_job(client, node, made)
        _send_until(Sender(node), client, done["id"], "sent")
    stored = httpx.get(f"{orthanc['base']}/instances", params={"expand": 1}, timeout=10).json()
    uids = sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in stored)
    assert uids == sorted(done["outputs"])
    results = tmp_path / "store" / "results" / done["id"] / "dicom"
    for instance in stored:  # each reads back equal to what the service wrote
        data = httpx.get(f"{orthanc['base']}/instances/{instance['ID']}/file", timeout=10).content
        back = pydicom.dcmread(io.BytesIO(data))
        (mine,) = [p for p in results.iterdir() if pydicom.dcmread(p).SOPInstanceUID == back.SOPInstanceUID]
        assert pydicom.dcmread(mine) == back


def test_the_running_service_sends_each_result_as_soon_as_its_job_is_done(tmp_path, made, tokens):
    """With the worker and sender threads running (poll every 30 s): the sender is woken by the
    finished job, not by its poll."""
    port = free_port()
    pacs = Pacs(port)
    pacs_config = {"ae_title": "PACS", "host": "127.0.0.1", "port": port}
    routes = [{"name": "mr", "model": "seg", "match": {"modality": ["MR"]}, "send_to": ["pacs"]}]
    config = load_serve_config(config_file(tmp_path, made["package"], destinations={"pacs": pacs_config},
                                           routes=routes, poll_s=30))  # fmt: skip
    try:
        with TestClient(create_app(config)) as client:
            (job,) = client.post("/studies", files=files(made["MR"]), headers=AUTH).json()["jobs"]
            started, status = time.monotonic(), None
            while status != "sent" and time.monotonic() - started < 25:  # well before the 30 s poll
                time.sleep(0.05)
                status = (client.get(f"/deliveries?job={job['id']}", headers=AUTH).json() or [{}])[0].get("status")
            assert status == "sent" and len(pacs.received) == 3
    finally:
        pacs.stop()


def test_a_black_holed_destination_delays_only_its_own_deliveries(tmp_path, made, tokens):
    """One destination accepts connections and never answers (each try waits out its timeout);
    the other gets the results at once: each destination has its own sending thread."""
    import socket

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # connections complete in the backlog; nothing ever reads or answers them
    port = free_port()
    pacs = Pacs(port)
    destinations = {"hole": {"ae_title": "HOLE", "host": "127.0.0.1", "port": hole.getsockname()[1], "timeout_s": 20},
                    "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": port}}  # fmt: skip
    routes = [{"name": "mr", "model": "seg", "match": {"modality": ["MR"]}, "send_to": ["hole", "pacs"]}]
    config = load_serve_config(config_file(tmp_path, made["package"], destinations=destinations, routes=routes,
                                           poll_s=0.2))  # fmt: skip
    try:
        with TestClient(create_app(config)) as client:
            (job,) = client.post("/studies", files=files(made["MR"]), headers=AUTH).json()["jobs"]
            started, statuses = time.monotonic(), {}
            while statuses.get("pacs") != "sent" and time.monotonic() - started < 15:  # before the hole's timeout
                time.sleep(0.05)
                found = client.get(f"/deliveries?job={job['id']}", headers=AUTH).json()
                statuses = {d["destination"]: d["status"] for d in found}
            assert statuses == {"hole": "pending", "pacs": "sent"} and len(pacs.received) == 3
    finally:
        pacs.stop()
        hole.close()


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed (apt install dcmtk)")
def test_a_ct_series_from_storescu_comes_back_into_orthanc(tmp_path, made, tokens, orthanc):
    """The whole path with independent peers: dcmtk sends a CT series to the listener, the service
    routes and predicts it, and its SEG and SR arrive in a real Orthanc, reading back as written."""
    import subprocess

    import httpx2 as httpx

    routes = [{"name": "ct", "model": "seg", "match": {"modality": ["CT"]}, "send_to": ["orthanc"]}]
    destinations = {"orthanc": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc["dicom_port"]}}
    dicom = {"ae_title": "MEDSIGHT", "port": 0, "release_s": 0.2}
    config = load_serve_config(config_file(tmp_path, made["package"], routes=routes, destinations=destinations,
                                           dicom=dicom, poll_s=0.2))  # fmt: skip
    paths = sorted(made["CT"].iterdir())
    study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    with TestClient(create_app(config)) as client:
        port = client.app.state.listener.port
        sent = subprocess.run(["storescu", "-aet", "CT01", "-aec", "MEDSIGHT", "127.0.0.1", str(port),
                               *map(str, paths)], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        started, delivered = time.monotonic(), []
        while not delivered and time.monotonic() - started < 90:
            time.sleep(0.2)
            delivered = client.get("/deliveries?status=sent", headers=AUTH).json()
        assert delivered, client.get("/jobs", headers=AUTH).json()
        (job,) = client.get("/jobs", headers=AUTH).json()
        assert job["study_uid"] == study and job["submitted_by"] == "dicom:CT01" and job["instances"] == len(paths)
    stored = httpx.get(f"{orthanc['base']}/instances", params={"expand": 1}, timeout=10).json()
    assert sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in stored) == sorted(job["outputs"])
    results = tmp_path / "store" / "results" / job["id"] / "dicom"
    kinds = set()
    for instance in stored:
        back = pydicom.dcmread(io.BytesIO(httpx.get(f"{orthanc['base']}/instances/{instance['ID']}/file",
                                                    timeout=10).content))  # fmt: skip
        (mine,) = [p for p in results.iterdir() if pydicom.dcmread(p).SOPInstanceUID == back.SOPInstanceUID]
        assert pydicom.dcmread(mine) == back and back.StudyInstanceUID == study
        kinds.add(str(back.Modality))
    assert {"SEG", "SR"} <= kinds
