"""The web pages: the worklist, a study's results with its overlay thumbnail, the audit log and the
models; a browser signs in with Basic (token as password) and may only read; what a study brings
(its description) is escaped; and the pages render in headless Chromium from a running service,
following the worklist's link into a study."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'medsight[serve]')")

import pydicom
from fastapi.testclient import TestClient

from medsight.service import load_serve_config
from medsight.service.app import create_app
from medsight.service.node import Node
from tests.service.common import AUTH, TOKEN, config_file, files, free_port, serve_process

BASIC = {"Authorization": "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()}
HTML = {"Accept": "text/html"}


def _hostile_copy(source: Path, target: Path) -> Path:
    """The series with a study description that is markup."""
    target.mkdir()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyDescription = "<script>alert(1)</script>"
        ds.save_as(target / path.name)
    return target


def test_the_pages_show_the_worklist_a_study_and_the_logs(tmp_path, made, tokens):
    config = load_serve_config(config_file(tmp_path, made["package"]))
    app = create_app(config, worker=False)
    node: Node = app.state.node
    with TestClient(app) as client:
        hostile = _hostile_copy(made["MR"], tmp_path / "hostile")
        (job,) = client.post("/studies", files=files(hostile), headers=AUTH).json()["jobs"]
        (routine,) = client.post("/studies", files=files(made["CT"]), headers=AUTH).json()["jobs"]  # no route
        while node.process_next():
            pass
        # signing in: Basic with the token, for reading only
        refused = client.get("/", headers=HTML)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert client.get("/", headers={**HTML, "Authorization": "Basic " + base64.b64encode(b"x:wrong").decode()
                                        }).status_code == 401  # fmt: skip
        assert client.post("/studies", files=files(made["MR"]), headers=BASIC).status_code == 401  # no writes
        worklist = client.get("/", headers=BASIC)
        assert worklist.status_code == 200 and worklist.headers["content-type"].startswith("text/html")
        text = worklist.text
        assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert text.index(f"/ui/jobs/{job['id']}") < text.index(f"/ui/jobs/{routine['id']}")  # flagged first
        assert "FLAGGED" in text and "no_route" in text and "signed in as alice" in text
        study = client.get(f"/ui/jobs/{job['id']}", headers=BASIC).text
        done = client.get(f"/jobs/{job['id']}", headers=AUTH).json()
        assert 'id="measurements"' in study and "volume_ml_lesion" in study
        assert f"{done['predictions'][0]['volume_ml_lesion']:.4g}" in study
        assert all(name in study for name in done["files"]) and "Audit trail" in study
        png = client.get(f"/ui/jobs/{job['id']}/overlay.png", headers=BASIC)
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get(f"/ui/jobs/{routine['id']}/overlay.png", headers=BASIC).status_code == 404
        assert "no route takes this study" in client.get(f"/ui/jobs/{routine['id']}", headers=BASIC).text
        audit = client.get("/ui/audit", headers=BASIC).text
        assert audit.count("<tr>") >= 6 and "received" in audit and "processed" in audit
        models = client.get("/ui/models", headers=BASIC).text
        assert "conformance-segmentation" in models and "mr-lesions" in models
        assert client.get("/ui/jobs/nope", headers=BASIC).status_code == 404


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt install chromium)")
def test_the_pages_render_in_headless_chromium(tmp_path, made):
    """A running `medsight serve`: Chromium loads the worklist, follows its link into the study and
    draws it, overlay thumbnail included."""
    import httpx2 as httpx
    from PIL import Image

    port, log = free_port(), tmp_path / "serve.log"
    process = serve_process(config_file(tmp_path, made["package"], poll_s=0.1), port, log)
    try:
        (job,) = httpx.post(f"http://127.0.0.1:{port}/studies", files=files(made["MR"]), headers=AUTH,
                            timeout=60).json()["jobs"]  # fmt: skip
        for _ in range(300):
            if httpx.get(f"http://127.0.0.1:{port}/jobs/{job['id']}", headers=AUTH).json()["status"] == "done":
                break
            time.sleep(0.1)
        base = f"http://reader:{TOKEN}@127.0.0.1:{port}"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,900",
                 f"--user-data-dir={tmp_path / 'chromium'}"]  # fmt: skip

        def chromium(*args: str) -> str:
            done = subprocess.run(["chromium", *flags, *args], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            return done.stdout

        worklist = chromium("--dump-dom", f"{base}/")
        links = re.findall(r'href="(/ui/jobs/[0-9a-f]+)"', worklist)
        assert links == [f"/ui/jobs/{job['id']}"], worklist[-2000:]
        study = chromium("--dump-dom", f"{base}{links[0]}")  # the click into the study
        assert 'id="measurements"' in study and "overlay.png" in study
        shot = tmp_path / "study.png"
        chromium(f"--screenshot={shot}", f"{base}{links[0]}")
        pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        assert pixels.shape == (900, 1100, 3) and pixels.std() > 10  # drawn, not blank
    finally:
        process.kill()
        process.wait(30)
