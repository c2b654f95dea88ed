"""`medsight serve` from the command line: --check says what would run and exits; a busy port, a
missing token or a typo in serve.yaml is one clear line with the fix, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'medsight[serve]')")

from tests.service.common import TOKEN, config_file


def _serve(*args: str, token: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEDSIGHT_API_TOKENS"}
    if token:
        env["MEDSIGHT_API_TOKENS"] = f"alice={TOKEN}"
    return subprocess.run([sys.executable, "-m", "medsight", "serve", *args], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


def test_check_and_the_errors_a_careless_user_meets(tmp_path, made):
    dicom = {"ae_title": "MEDSIGHT", "host": "127.0.0.1", "port": 0}
    config = config_file(tmp_path, made["package"], dicom=dicom)
    checked = _serve("--config", str(config), "--check")
    assert checked.returncode == 0, checked.stderr
    assert "model seg: conformance-segmentation" in checked.stdout and "route mr-lesions -> seg" in checked.stdout
    assert "DICOM listener MEDSIGHT" in checked.stdout and "the configuration is valid" in checked.stdout

    no_token = _serve("--config", str(config), "--check", token=False)
    assert no_token.returncode == 1 and "needs at least one API token" in no_token.stderr
    assert "Traceback" not in no_token.stderr

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = config_file(tmp_path, made["package"], dicom={**dicom, "port": port})
        refused = _serve("--config", str(taken), "--port", "0")
        assert refused.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in refused.stderr
        assert "dicom.port" in refused.stderr and "Traceback" not in refused.stderr
        http_busy = _serve("--config", str(config), "--port", str(port))
        assert http_busy.returncode == 1 and "the HTTP API cannot listen" in http_busy.stderr
        assert "Traceback" not in http_busy.stderr

    typo = config_file(tmp_path, made["package"], dicom={**dicom, "ae_titel": "X"})
    wrong = _serve("--config", str(typo), "--check")
    assert wrong.returncode == 1 and "did you mean 'ae_title'" in wrong.stderr
