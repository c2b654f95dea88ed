"""What the service tests share: the token, serve.yaml, uploads, and `medsight serve` as a process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

TOKEN = "alice-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config_file(root: Path, package: Path, **changes) -> Path:
    """A serve.yaml under ``root``: the package as model ``seg``, MR studies routed to it and flagged
    by lesion volume; ``changes`` replace or add top-level keys."""
    spec = {
        "storage": "store",
        "models": {"seg": {"package": str(package), "dicom_overlay": True}},
        "routes": [
            {
                "name": "mr-lesions",
                "model": "seg",
                "match": {"modality": ["MR"]},
                "score": "volume_ml_lesion",
                "threshold": 0.0,
            }
        ],
        **changes,
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def files(folder: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """A folder's files as the multipart ``files`` fields of POST /studies."""
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(folder.iterdir())]


def free_port() -> int:
    """A TCP port free on the loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_process(config: Path, port: int, log: Path) -> subprocess.Popen:
    """`medsight serve` in a process of its own, once its /health answers."""
    import httpx2 as httpx

    env = {**os.environ, "MEDSIGHT_API_TOKENS": f"alice={TOKEN}"}
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "medsight", "serve", "--config", str(config), "--host",
                                    "127.0.0.1", "--port", str(port)], env=env, stdout=sink, stderr=sink)  # fmt: skip
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"medsight serve did not start:\n{log.read_text()[-3000:]}")
