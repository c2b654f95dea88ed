"""The service over HTTP: a DICOM study submitted comes back as DICOM results equal to what the
package predicts on its own; tokens on every endpoint but health; hostile uploads refused with
nothing spooled; routing, triage and the worklist's order; an append-only audit log; a restart
finishes every received study exactly once; our own results sent back are not processed."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'medsight[serve]')")
pytest.importorskip("highdicom", reason="the serve extra is not installed (pip install 'medsight[serve]')")

from fastapi.testclient import TestClient

from medsight.core.errors import ConfigError
from medsight.inference import Predictor
from medsight.service import load_serve_config
from medsight.service.app import create_app
from medsight.service.node import Node
from tests.service.common import AUTH, TOKEN, config_file, files, free_port, serve_process


def _app(tmp_path: Path, made, **changes):
    config = load_serve_config(config_file(tmp_path, made["package"], **changes))
    return config, create_app(config, worker=False)


def test_a_study_comes_back_as_the_packages_dicom_results(tmp_path, made, tokens):
    import highdicom as hd

    config, app = _app(tmp_path, made)
    node: Node = app.state.node
    with TestClient(app) as client:
        sent = client.post("/studies", files=files(made["MR"]), headers=AUTH)
        assert sent.status_code == 202, sent.text
        (job,) = sent.json()["jobs"]
        assert job["instances"] == len(list(made["MR"].iterdir())) and job["status"] == "queued"
        spooled = list((config.storage / "spool" / job["id"]).rglob("*.dcm"))
        assert sorted(p.read_bytes() for p in spooled) == sorted(p.read_bytes() for p in made["MR"].iterdir())
        assert list((config.storage / "uploads").iterdir()) == []  # staged on disk, then moved into the spool
        assert node.process_next() and not node.process_next()
        done = client.get(f"/jobs/{job['id']}", headers=AUTH).json()
        assert done["status"] == "done", done["note"]
        assert (done["route"], done["model"], done["submitted_by"]) == ("mr-lesions", "seg", "alice")
        # the same figures as the package predicts on its own
        alone = Predictor.from_run(made["package"]).predict_files([made["MR"]], masks=tmp_path / "masks").table()
        (row,) = done["predictions"]
        assert row["volume_ml_lesion"] == pytest.approx(float(alone["volume_ml_lesion"][0]))
        assert done["score"] == pytest.approx(row["volume_ml_lesion"]) and done["flagged"] is True  # threshold 0
        kinds = sorted(name.rsplit("_", 1)[-1] for name in done["files"] if name.endswith(".dcm"))
        assert kinds == ["overlay.dcm", "seg.dcm", "sr.dcm"] and "predictions.csv" in done["files"]
        seg_name = next(n for n in done["files"] if n.endswith("_seg.dcm"))
        got = client.get(f"/jobs/{job['id']}/files/{seg_name}", headers=AUTH)
        assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
        (tmp_path / "seg.dcm").write_bytes(got.content)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(tmp_path / "seg.dcm")
        assert seg.StudyInstanceUID == done["study_uid"] and seg.SOPInstanceUID in done["outputs"]
        assert len(done["outputs"]) == 3
        assert client.get(f"/jobs/{job['id']}/files/../serve.yaml", headers=AUTH).status_code == 404
        assert client.get(f"/jobs/{job['id']}/files/result.json", headers=AUTH).status_code == 404
        events = client.get(f"/audit?job={job['id']}", headers=AUTH).json()
        assert [e["action"] for e in events] == ["downloaded", "viewed", "processed", "received"]  # newest first
        processed = events[2]
        assert (processed["actor"], processed["model"], processed["model_version"]) == (
            "medsight",
            "seg",
            done["model_version"],
        )
        assert processed["detail"]["outputs"] == done["outputs"] and 0 < processed["detail"]["seconds"] < 600
        assert events[3]["actor"] == "alice" and events[3]["detail"]["instances"] == job["instances"]
        metrics = client.get("/metrics", headers=AUTH).text
        assert f"medsight_instances_received_total {float(job['instances'])}" in metrics
        assert 'medsight_jobs_finished_total{status="done"} 1.0' in metrics
        assert 'medsight_jobs{status="done"} 1.0' in metrics
        (model,) = client.get("/models", headers=AUTH).json()
        assert model["routes"] == ["mr-lesions"] and model["version"] == done["model_version"]
        assert "conformance-segmentation" in client.get("/models/seg/card", headers=AUTH).text


def test_a_model_with_fractional_seg_sends_its_probabilities(tmp_path, made, tokens):
    import highdicom as hd

    models = {"seg": {"package": str(made["package"]), "dicom_seg": "fractional"}}
    config, app = _app(tmp_path, made, models=models)
    node: Node = app.state.node
    with TestClient(app) as client:
        (job,) = client.post("/studies", files=files(made["MR"]), headers=AUTH).json()["jobs"]
        assert node.process_next()
        done = client.get(f"/jobs/{job['id']}", headers=AUTH).json()
        assert done["status"] == "done", done["note"]
        (row,) = done["predictions"]
        assert row["probabilities"].startswith("masks/") and row["probabilities"].endswith("_prob.nii.gz")
        assert (config.storage / "results" / job["id"] / row["probabilities"]).is_file()
        seg_name = next(n for n in done["files"] if n.endswith("_seg.dcm"))  # the package finds a lesion here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(config.storage / "results" / job["id"] / seg_name)
        assert seg.SegmentationType == "FRACTIONAL"
    with pytest.raises(ConfigError, match=r"models\.seg\.dicom_seg"):
        load_serve_config(
            config_file(tmp_path, made["package"], models={"seg": {**models["seg"], "dicom_seg": "soft"}})
        )


def test_a_classifier_with_dicom_overlay_sends_its_heat_map(tmp_path, made, classifier, tokens):
    import pydicom

    models = {"cxr": {"package": str(classifier["package"]), "dicom_overlay": True}}
    routes = [{"name": "films", "model": "cxr", "match": {"modality": ["DX"]}, "score": "prob", "threshold": 0.0}]
    config, app = _app(tmp_path, made, models=models, routes=routes)
    node: Node = app.state.node
    with TestClient(app) as client:
        (job,) = client.post("/studies", files=files(classifier["DX"]), headers=AUTH).json()["jobs"]
        assert node.process_next()
        done = client.get(f"/jobs/{job['id']}", headers=AUTH).json()
        assert done["status"] == "done", done["note"]
        kinds = sorted(name.rsplit("_", 1)[-1] for name in done["files"] if name.endswith(".dcm"))
        assert kinds == ["heatmap.dcm", "sr.dcm"] and len(done["outputs"]) == 2 and done["note"] == ""
        heat = next(n for n in done["files"] if n.endswith("_heatmap.dcm"))
        sc = pydicom.dcmread(config.storage / "results" / job["id"] / heat)
        assert sc.SOPInstanceUID in done["outputs"] and "heat map: " in sc.SeriesDescription
        assert sc.StudyInstanceUID == done["study_uid"] and sc.pixel_array.shape[-1] == 3
        thumbnail = client.get(f"/ui/jobs/{job['id']}/overlay.png", headers=AUTH)  # the study page shows it
        assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\x89PNG")
        # sent back to the service (a PACS forwarding everything): recognised as its own, not processed
        again = client.post("/studies", headers=AUTH,
                            files=[("files", (heat, (config.storage / "results" / job["id"] / heat).read_bytes(),
                                              "application/dicom"))])  # fmt: skip
        assert again.status_code == 202 and again.json()["jobs"] == []


def test_the_worker_thread_processes_what_arrives(tmp_path, made, tokens):
    config = load_serve_config(config_file(tmp_path, made["package"], poll_s=0.2))
    with TestClient(create_app(config)) as client:
        (job,) = client.post("/studies", files=files(made["MR"]), headers=AUTH).json()["jobs"]
        import time

        for _ in range(200):
            status = client.get(f"/jobs/{job['id']}", headers=AUTH).json()["status"]
            if status not in ("queued", "running"):
                break
            time.sleep(0.1)
        assert status == "done"


def test_every_endpoint_but_health_needs_a_token(tmp_path, made, tokens):
    _, app = _app(tmp_path, made)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        for method, path in [("get", "/jobs"), ("get", "/jobs/x"), ("get", "/worklist"), ("get", "/models"),
                             ("get", "/models/seg/card"), ("get", "/audit"), ("get", "/metrics"),
                             ("get", "/openapi.json"), ("post", "/studies")]:  # fmt: skip
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"X-API-Key": TOKEN[:-1]}):
                answer = getattr(client, method)(path, headers=headers)
                assert answer.status_code == 401, (path, headers)
                assert "API token" in answer.json()["detail"]
        assert client.get("/jobs", headers={"X-API-Key": "bob-token-0123456789"}).status_code == 200
        assert "/studies" in client.get("/openapi.json", headers=AUTH).json()["paths"]


def test_hostile_uploads_are_refused_and_nothing_is_spooled(tmp_path, made, tokens):
    import pydicom

    config, app = _app(tmp_path, made, http={"max_upload_mb": 0.05})
    first = sorted(made["MR"].iterdir())[0]
    bad_uid = pydicom.dcmread(first)
    bad_uid.SOPInstanceUID = "../../../etc/passwd"
    bad_uid.save_as(tmp_path / "bad.dcm")
    with TestClient(app) as client:
        answer = client.post("/studies", headers=AUTH, files=[*files(made["MR"])[:2],
                             ("files", ("notes.txt", b"not an image", "text/plain"))])  # fmt: skip
        assert answer.status_code == 415 and "notes.txt is not a DICOM file" in answer.json()["detail"]
        answer = client.post(
            "/studies", headers=AUTH, files=[("files", ("bad.dcm", (tmp_path / "bad.dcm").read_bytes()))]
        )
        assert answer.status_code == 400 and "SOPInstanceUID" in answer.json()["detail"]
        big = [("files", (f"{i}.dcm", first.read_bytes())) for i in range(60)]  # > 50 KB
        answer = client.post("/studies", headers=AUTH, files=big)
        assert answer.status_code == 413 and "max_upload_mb" in answer.json()["detail"]

        def chunks():  # no Content-Length: counted while read
            for _ in range(100):
                yield b"x" * 1024

        answer = client.post("/studies", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
                             content=chunks())  # fmt: skip
        assert answer.status_code == 413
        assert client.post("/studies", headers=AUTH, files=[]).status_code in (400, 422)
        assert client.get("/jobs", headers=AUTH).json() == []
    assert list((config.storage / "spool").iterdir()) == []
    assert list((config.storage / "uploads").iterdir()) == []  # the staged uploads are gone too


def test_routes_triage_and_the_worklist_order(tmp_path, made, tokens):
    routes = [
        {"name": "mr", "model": "seg", "match": {"modality": ["mr"], "series_description": "^MEDSIGHT$"}}
    ]  # any case
    _, app = _app(tmp_path, made, routes=routes)
    node: Node = app.state.node
    with TestClient(app) as client:
        mr = client.post("/studies", files=files(made["MR"]), headers=AUTH).json()["jobs"][0]
        ct = client.post("/studies", files=files(made["CT"]), headers=AUTH).json()["jobs"][0]
        while node.process_next():
            pass
        jobs = {j["id"]: j for j in client.get("/jobs", headers=AUTH).json()}
        assert jobs[mr["id"]]["status"] == "done" and jobs[mr["id"]]["flagged"] is False  # no score, no flag
        assert jobs[mr["id"]]["score"] is None
        assert jobs[ct["id"]]["status"] == "no_route"
        assert "no route takes this study: CT" in jobs[ct["id"]]["note"]
        assert [j["id"] for j in client.get("/worklist", headers=AUTH).json()] == [mr["id"], ct["id"]]  # oldest first


def _set_running(config, job_id: str) -> None:
    """The job left running by an instance that is gone (a process of a version before leases: none named)."""
    with sqlite3.connect(config.storage / "service.db") as db:
        db.execute("UPDATE jobs SET status = 'running', finished_at = NULL, worker = NULL WHERE id = ?", (job_id,))


def test_a_restart_finishes_each_received_study_exactly_once(tmp_path, made, tokens):
    config, app = _app(tmp_path, made)
    node: Node = app.state.node
    first = node.receive([(p.name, p.read_bytes()) for p in sorted(made["MR"].iterdir())], actor="alice")[0]
    second = node.receive([(p.name, p.read_bytes()) for p in sorted(made["MR"].iterdir())], actor="alice")[0]
    assert node.process_next()  # the first study's results are whole...
    outputs = node.store.job(first.id).outputs
    _set_running(config, first.id)  # ...but the service died before it marked the job done
    assert node.store.claim().id == second.id  # the second was being processed when it died
    (config.storage / "results" / f".{second.id}.partial").mkdir()  # with half its results written
    cut_off = config.storage / "uploads" / "0123abcd"  # and an HTTP upload was being staged (never acknowledged)
    cut_off.mkdir(parents=True)
    (cut_off / "000000.dcm").write_bytes(b"half a file")
    restarted = Node(config, models=node.models)
    assert not cut_off.exists()
    assert restarted.store.job(first.id).status == "done" and restarted.store.job(first.id).outputs == outputs
    assert "after a restart" in restarted.store.job(first.id).note
    assert restarted.store.job(second.id).status == "queued"
    assert restarted.process_next() and not restarted.process_next()
    assert restarted.store.job(second.id).status == "done"
    assert not (config.storage / "results" / f".{second.id}.partial").exists()
    processed = [e.job_id for e in restarted.store.events() if e.action == "processed"]
    assert processed.count(second.id) == 1 and processed.count(first.id) == 2  # once run, once recorded
    assert [e.action for e in restarted.store.events(second.id)] == ["processed", "requeued", "received"]


def test_a_second_instance_leaves_a_live_instances_job_and_takes_over_a_gone_ones(tmp_path, made, tokens):
    """Two instances on one database and storage: starting the second does not requeue what the
    first is running; a job whose process died, or whose instance went quiet past lease_s, is
    queued again (and its study processed once)."""
    import time

    config = load_serve_config(config_file(tmp_path, made["package"], lease_s=1))
    first = Node(config, models=None)
    (job,) = first.receive([(p.name, p.read_bytes()) for p in sorted(made["MR"].iterdir())], actor="alice")
    assert first.store.claim(first.worker_id).id == job.id  # the first instance is processing it
    second = Node(config, models=first.models)  # starts while the first is alive and its lease fresh
    assert second.store.job(job.id).status == "running" and second.worker_id != first.worker_id
    time.sleep(1.5)  # the first goes quiet (no heartbeat) past lease_s
    second.recover_running()
    assert second.store.job(job.id).status == "queued"
    assert second.process_next() and second.store.job(job.id).status == "done"
    # a job whose process on this machine is gone is taken over at once, lease or not
    (other,) = second.receive([(p.name, p.read_bytes()) for p in sorted(made["MR"].iterdir())], actor="alice")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = f"{socket.gethostname()}:{int(dead.stdout)}:0000"
    second.store.claim(gone)
    Node(load_serve_config(config_file(tmp_path, made["package"], lease_s=3600)), models=first.models)
    assert second.store.job(other.id).status == "queued"


def test_our_own_results_sent_back_are_not_processed(tmp_path, made, tokens):
    config, app = _app(tmp_path, made)
    node: Node = app.state.node
    with TestClient(app) as client:
        (job,) = client.post("/studies", files=files(made["MR"]), headers=AUTH).json()["jobs"]
        node.process_next()
        results = config.storage / "results" / job["id"] / "dicom"
        back = client.post("/studies", files=files(results), headers=AUTH)
        assert back.status_code == 202 and back.json()["jobs"] == []
        assert client.get("/audit", headers=AUTH).json()[0]["action"] == "ignored_own_output"


def test_a_study_that_fails_is_recorded_and_the_next_goes_on(tmp_path, made, tokens):
    _, app = _app(tmp_path, made)
    node: Node = app.state.node
    broken = tmp_path / "broken"
    shutil.copytree(made["MR"], broken)
    for path in sorted(broken.iterdir())[::2]:  # every other slice's pixels cut short
        path.write_bytes(path.read_bytes()[:-200])
    bad = node.receive([(p.name, p.read_bytes()) for p in sorted(broken.iterdir())], actor="alice")[0]
    good = node.receive([(p.name, p.read_bytes()) for p in sorted(made["MR"].iterdir())], actor="alice")[0]
    while node.process_next():
        pass
    assert node.store.job(bad.id).status == "failed" and node.store.job(bad.id).note
    assert node.store.job(good.id).status == "done"


def test_bad_configurations_are_named_with_the_fix(tmp_path, made, monkeypatch):
    monkeypatch.delenv("MEDSIGHT_API_TOKENS", raising=False)
    with pytest.raises(ConfigError, match="needs at least one API token"):
        create_app(load_serve_config(config_file(tmp_path, made["package"])), worker=False)
    monkeypatch.setenv("MEDSIGHT_API_TOKENS", "short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        create_app(load_serve_config(config_file(tmp_path, made["package"])), worker=False)
    monkeypatch.setenv("MEDSIGHT_API_TOKENS", TOKEN)
    with pytest.raises(ConfigError, match="unknown key 'routs' \\(did you mean 'routes'"):
        load_serve_config(config_file(tmp_path, made["package"], routs=[]))
    nested = [{"name": "r", "model": "seg", "match": {"modaltiy": ["MR"]}, "treshold": 1}]
    with pytest.raises(ConfigError, match=r"'routes\.0\.match\.modaltiy' \(did you mean 'modality'.*'threshold'"):
        load_serve_config(config_file(tmp_path, made["package"], routes=nested))
    bad_model = [{"name": "r", "model": "sge"}]
    with pytest.raises(ConfigError, match="names the model 'sge'"):
        load_serve_config(config_file(tmp_path, made["package"], routes=bad_model))
    bad_regex = [{"name": "r", "model": "seg", "match": {"series_description": "(flair"}}]
    with pytest.raises(ConfigError, match="not a regular expression"):
        load_serve_config(config_file(tmp_path, made["package"], routes=bad_regex))
    with pytest.raises(ConfigError, match=r"models\.seg: .*(does not exist|package)"):
        create_app(load_serve_config(config_file(tmp_path, tmp_path / "no-package")), worker=False)
    with pytest.raises(ConfigError, match="does not exist"):
        load_serve_config(tmp_path / "missing.yaml")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"# who may call\ncarol {TOKEN}x\n")
    config = load_serve_config(config_file(tmp_path, made["package"], auth={"tokens_file": "tokens.txt",
                                                                        "tokens_env": None}))  # fmt: skip
    assert config.auth.tokens() == {f"{TOKEN}x": "carol"}
    assert json.loads(config.model_dump_json())["storage"] == str(tmp_path / "store")


def test_kill_9_then_restart_processes_every_acknowledged_study_once(tmp_path, made):
    """A real `medsight serve` process killed with SIGKILL while studies are queued and one is
    being processed: after a restart every study it acknowledged is done, each processed once."""
    import signal
    import time

    import httpx2 as httpx

    config = config_file(tmp_path, made["package"], poll_s=0.1)
    port, log = free_port(), tmp_path / "serve.log"
    process = serve_process(config, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        acknowledged = []
        for _ in range(4):
            answer = httpx.post(f"{base}/studies", files=files(made["MR"]), headers=AUTH, timeout=60)
            assert answer.status_code == 202, answer.text
            acknowledged += [job["id"] for job in answer.json()["jobs"]]
        process.send_signal(signal.SIGKILL)  # mid-work: the worker has had at most a moment
        process.wait(timeout=30)
        with sqlite3.connect(tmp_path / "store" / "service.db") as db:
            left = dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
        assert left.get("queued", 0) + left.get("running", 0) > 0, left  # the restart has work to recover
        process = serve_process(config, port, log)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            jobs = {j["id"]: j for j in httpx.get(f"{base}/jobs", headers=AUTH, timeout=10).json()}
            if all(jobs[i]["status"] not in ("queued", "running") for i in acknowledged):
                break
            time.sleep(0.2)
        assert [jobs[i]["status"] for i in acknowledged] == ["done"] * 4, log.read_text()[-3000:]
        audit = httpx.get(f"{base}/audit", params={"limit": 1000}, headers=AUTH, timeout=10).json()
        for job_id in acknowledged:
            processed = [e for e in audit if e["job_id"] == job_id and e["action"] == "processed"]
            assert len(processed) == 1, (job_id, processed)  # a job finished after the restart too
            assert len(jobs[job_id]["outputs"]) == 3
            assert (tmp_path / "store" / "results" / job_id / "result.json").is_file()
        assert not list((tmp_path / "store" / "results").glob(".*.partial"))
    finally:
        process.kill()
        process.wait(timeout=30)


def test_the_service_runs_on_postgresql(tmp_path, made, tokens, postgres_url):
    _, app = _app(tmp_path, made, database=postgres_url)
    node: Node = app.state.node
    assert node.store.engine.dialect.name == "postgresql"
    with TestClient(app) as client:
        (job,) = client.post("/studies", files=files(made["MR"]), headers=AUTH).json()["jobs"]
        assert node.process_next()
        done = client.get(f"/jobs/{job['id']}", headers=AUTH).json()
        assert done["status"] == "done" and len(done["outputs"]) == 3 and done["received_at"].endswith("+00:00")
        events = client.get(f"/audit?job={job['id']}", headers=AUTH).json()
        assert [e["action"] for e in events] == ["viewed", "processed", "received"]
        assert job["id"] in [j["id"] for j in client.get("/worklist", headers=AUTH).json()]
