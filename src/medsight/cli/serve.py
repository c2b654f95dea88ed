"""``medsight serve``: the clinical service (HTTP API; worker writing DICOM results)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from medsight.cli.common import friendly, out, state

# FastAPI, uvicorn, SQLAlchemy and the models are imported inside the command: `--help` stays instant


def serve_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="The service's serve.yaml (see docs/service.md).")],
    host: Annotated[str | None, typer.Option("--host", help="Listen address (default: http.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Listen port (default: http.port).")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Load the configuration, tokens and models, say what would run, and exit.")
    ] = False,
) -> None:
    """Run the service: studies submitted over HTTP are spooled, routed to a model by serve.yaml's
    routes, predicted, and answered with DICOM results (SEG, TID 1500 SR, optional overlay); a triage
    worklist, the models' cards, an append-only audit log and Prometheus metrics are served beside
    them. Every endpoint but /health needs an API token."""
    from medsight.core.errors import ConfigError
    from medsight.service import load_serve_config

    if not check:  # a service's log: every line timed, medsight's at INFO (DEBUG with --debug)
        debug = bool(state.get("debug"))
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
        for noisy in ("pynetdicom", "pydicom", "highdicom", "multipart", "python_multipart"):
            logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)

    settings = load_serve_config(config)
    try:
        import uvicorn

        from medsight.service.app import create_app
    except ImportError as exc:
        raise ConfigError(f"medsight serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'medsight[serve]'") from exc  # fmt: skip
    app = create_app(settings, worker=not check)
    node = app.state.node
    for name, model in node.models.items():
        summary = model.summary()
        out.print(f"model {name}: {summary['recipe']} ({summary['task']}, version {summary['version']}, "
                  f"{summary['backend']})")  # fmt: skip
    for route in settings.routes:
        flag = f" (flag {route.score} >= {route.threshold})" if route.threshold is not None else ""
        send = f"; results to {', '.join(route.send_to)}" if route.send_to else ""
        out.print(f"route {route.name} -> {route.model}{flag}{send}")
    for name, d in settings.destinations.items():
        out.print(f"destination {name}: {d.describe()} ({d.max_attempts} tries, first wait {d.retry_s:g} s)")
    if settings.orthanc is not None:
        o = settings.orthanc
        out.print(f"Orthanc edge {o.url} (DICOMweb {o.dicomweb_url}; polled every {o.poll_s:g} s; "
                  f"{'its whole history' if o.history else 'studies stable from now on'})")  # fmt: skip
    if settings.dicom is not None:
        d = settings.dicom
        callers = ", ".join(d.allowed_callers) or "any caller"
        out.print(f"DICOM listener {d.ae_title} on {d.host}:{d.port} ({callers}; a study is complete {d.release_s:g} s "
                  f"after its last instance once its associations close, else {d.idle_s:g} s)")  # fmt: skip
    out.print(f"storage {settings.storage}; database {node.store.engine.url.render_as_string(hide_password=True)}")
    if check:
        out.print("the configuration is valid")
        return
    host = host if host is not None else settings.http.host
    port = port if port is not None else settings.http.port
    _check_port(host, port)
    if app.state.listener is not None:
        app.state.listener.start()  # here, so that a busy DICOM port is named without a traceback
    uvicorn.run(app, host=host, port=port, log_level="info")


def _check_port(host: str, port: int) -> None:
    """Fail with the fix when the HTTP port cannot be bound (uvicorn would say less)."""
    import socket

    from medsight.core.errors import ConfigError

    try:
        with socket.create_server((host, port), reuse_port=False):
            pass
    except OSError as exc:
        raise ConfigError(f"the HTTP API cannot listen on {host}:{port} ({exc.strerror}); free the port, or give "
                          "another with --port or http.port in serve.yaml") from exc  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the command to the main app."""
    app.command("serve")(friendly(serve_command))
