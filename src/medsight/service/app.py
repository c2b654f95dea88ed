"""The HTTP API (FastAPI): submit DICOM studies, follow their jobs, fetch results, read the triage
worklist, the models and their cards, the audit log, Prometheus metrics. Every endpoint but
``/health`` needs an API token (``Authorization: Bearer <token>`` or ``X-API-Key: <token>``); a
request body larger than ``http.max_upload_mb`` is refused before it is read whole."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.concurrency import run_in_threadpool

from medsight import __version__
from medsight.core.errors import ConfigError, InputError, UnsupportedFormatError
from medsight.service.config import ServeConfig
from medsight.service.dimse import DicomListener
from medsight.service.node import Node
from medsight.service.orthanc import OrthancEdge
from medsight.service.send import Sender
from medsight.service.ui import register_pages

__all__ = ["Metrics", "create_app"]

log = logging.getLogger(__name__)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._instances = Counter("medsight_instances_received", "DICOM instances received and spooled",
                                  registry=self.registry)  # fmt: skip
        self._jobs = Counter("medsight_jobs_finished", "Studies processed, by outcome", ["status"],
                             registry=self.registry)  # fmt: skip
        buckets = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)
        self._seconds = Histogram("medsight_job_seconds", "Time to process one study (route, predict, write)",
                                  buckets=buckets, registry=self.registry)  # fmt: skip
        self.node: Node | None = None
        self.registry.register(self)  # type: ignore[arg-type]  # collect() below: jobs by status now

    def instances(self, count: int) -> None:
        """Count received instances."""
        self._instances.inc(count)

    def job(self, status: str, seconds: float) -> None:
        """Count a finished job and its time."""
        self._jobs.labels(status=status).inc()
        self._seconds.observe(seconds)

    def collect(self) -> list[GaugeMetricFamily]:
        """The jobs in each status now (read from the database at scrape time)."""
        jobs, deliveries = self.describe()
        if self.node is not None:
            for status, count in self.node.store.counts().items():
                jobs.add_metric([status], count)
            for status, count in self.node.store.delivery_counts().items():
                deliveries.add_metric([status], count)
        return [jobs, deliveries]

    def describe(self) -> list[GaugeMetricFamily]:
        """What collect() yields (without reading the database)."""
        return [GaugeMetricFamily("medsight_jobs", "Jobs in each status", labels=["status"]),
                GaugeMetricFamily("medsight_deliveries", "Result deliveries in each status (dead: every try "
                                  "failed)", labels=["status"])]  # fmt: skip


async def _answer(send: Callable[[dict], Awaitable[None]], status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyLimit:
    """ASGI middleware: answer 413 to a request whose body exceeds ``limit`` bytes, by its
    Content-Length before reading, or while reading when it has none; and 401 to a request with a
    body (an upload) whose token is not valid, before any of the body is read."""

    def __init__(self, app: Any, limit: int, authorized: Callable[[dict[bytes, bytes]], bool]) -> None:
        self.app, self.limit, self.authorized = app, limit, authorized

    async def _refuse(self, send: Callable[[dict], Awaitable[None]]) -> None:
        await _answer(send, 413, f"the request is larger than the service accepts ({self.limit / 2**20:g} MiB): "
                                 "raise http.max_upload_mb in serve.yaml to take larger studies")  # fmt: skip

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and not self.authorized(dict(scope["headers"])):
            await _answer(send, 401, "an API token is needed: Authorization: Bearer <token> or X-API-Key: <token>")
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen, over, answered = 0, False, False

        async def counted() -> dict:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is replaced below
            return message

        async def guarded(message: dict) -> None:
            nonlocal answered
            if over:
                if not answered:
                    answered = True
                    await self._refuse(send)
                return
            await send(message)

        await self.app(scope, counted, guarded)
        if over and not answered:
            await self._refuse(send)


def _stage(files: list[UploadFile], folder: Path) -> list[tuple[str, Path]]:
    """The uploaded files copied into ``folder`` a chunk at a time, with the names they were sent as.

    Raises:
        InputError: the disk refused (full, read-only).
    """
    staged = []
    try:
        folder.mkdir(parents=True)
        for i, upload in enumerate(files):
            target = folder / f"{i:06d}.dcm"
            upload.file.seek(0)
            with open(target, "wb") as handle:
                shutil.copyfileobj(upload.file, handle, 1 << 20)
            staged.append((upload.filename or f"file {i + 1}", target))
    except OSError as exc:
        raise InputError(f"cannot stage the upload in {folder.parent} ({exc.strerror}); free space there or move "
                         "storage in serve.yaml") from exc  # fmt: skip
    return staged


def _basic_password(encoded: str) -> str:
    """The password of an HTTP Basic credential ('' if it does not decode)."""
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return ""


def create_app(config: ServeConfig, *, node: Node | None = None, worker: bool = True, listen: bool = True) -> FastAPI:
    """The service's FastAPI application. ``node`` (default: made from ``config``, loading its
    models) does the work; ``worker`` starts its processing thread with the application, ``listen``
    the front doors serve.yaml names: the DICOM listener (``dicom``) and the Orthanc edge (``orthanc``).

    Raises:
        ConfigError: no API token configured, a model cannot be loaded, the storage or database refused,
            the DICOM port cannot be bound, DICOMweb configured without dicomweb-client or its password.
    """
    tokens = config.auth.tokens()
    if config.orthanc is not None or any(d.url is not None for d in config.destinations.values()):
        try:
            import dicomweb_client  # noqa: F401
        except ImportError as exc:
            raise ConfigError("DICOMweb (orthanc, or a destination with a url) needs dicomweb-client: "
                              "pip install 'medsight[serve]'") from exc  # fmt: skip
    metrics = Metrics()
    node = node if node is not None else Node(config, metrics=metrics)
    node.metrics = metrics
    metrics.node = node
    listener = DicomListener(node, config.dicom) if config.dicom is not None and listen else None
    sender = Sender(node, poll_s=config.poll_s) if config.destinations and worker else None
    edge = OrthancEdge(node, config.orthanc) if config.orthanc is not None and listen else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if listener is not None:
            listener.start()
        if worker:
            node.start()
        if sender is not None:
            sender.start()
        if edge is not None:
            edge.start()
        yield
        if listener is not None:
            listener.stop()
        if edge is not None:
            edge.stop()
        node.stop()
        if sender is not None:
            sender.stop()

    def identify(api_key: str, authorization: str, method: str) -> str | None:
        given = api_key
        if not given and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        elif not given and authorization.lower().startswith("basic ") and method in ("GET", "HEAD"):
            given = _basic_password(authorization[6:])  # a browser on the web pages: reading only
        for token, name in tokens.items():
            if given and hmac.compare_digest(given.encode(), token.encode()):
                return name
        return None

    def uploader(headers: dict[bytes, bytes]) -> bool:
        found = identify(headers.get(b"x-api-key", b"").decode("latin-1"),
                         headers.get(b"authorization", b"").decode("latin-1"), "POST")  # fmt: skip
        return found is not None

    def caller(request: Request) -> str:
        name = identify(request.headers.get("x-api-key") or "", request.headers.get("authorization") or "",
                        request.method)  # fmt: skip
        if name is not None:
            return name
        page = request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", "")
        raise HTTPException(401, "an API token is needed: Authorization: Bearer <token> or X-API-Key: <token>"
                            + (" (in a browser: any user name, the token as password)" if page else ""),
                            headers={"WWW-Authenticate": 'Basic realm="medsight"' if page else "Bearer"})  # fmt: skip

    app = FastAPI(title="medsight", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, description=__doc__)  # fmt: skip
    app.add_middleware(_BodyLimit, limit=int(config.http.max_upload_mb * 2**20), authorized=uploader)  # type: ignore[arg-type]
    app.state.node = node
    app.state.listener = listener
    app.state.sender = sender
    app.state.edge = edge

    register_pages(app, node, caller)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Whether the service is up (no token needed): its version, models and queue."""
        counts = node.store.counts()
        port = listener.port if listener is not None else None
        return {"status": "ok", "version": __version__, "models": sorted(node.models), "queued": counts["queued"],
                "running": counts["running"], "dicom_port": port,
                "orthanc": None if edge is None else "ok" if edge.status == "ok" else "down"}  # fmt: skip

    @app.get("/openapi.json", tags=["service"], include_in_schema=False)
    def openapi(_: str = Depends(caller)) -> dict[str, Any]:
        """The API's OpenAPI description."""
        return app.openapi()

    @app.post("/studies", status_code=202, tags=["studies"])
    async def submit(files: list[UploadFile] = File(...), actor: str = Depends(caller)) -> dict[str, Any]:  # noqa: B008
        """Submit DICOM files (multipart form fields named ``files``); they are grouped into studies,
        spooled and queued before this answers. A file that is not DICOM refuses the request (415)."""
        staging = node.upload_folder()  # on disk, not in memory; moved into the spool
        try:
            sent = await run_in_threadpool(_stage, files, staging)
            jobs = await run_in_threadpool(node.receive, sent, actor=actor, source="http")
        except UnsupportedFormatError as exc:
            raise HTTPException(415, str(exc)) from exc
        except InputError as exc:
            raise HTTPException(400, str(exc)) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {"jobs": [{"id": j.id, "study_uid": j.study_uid, "instances": j.instances, "status": j.status,
                          "url": f"/jobs/{j.id}"} for j in jobs], "received": len(sent)}  # fmt: skip

    def job_or_404(job_id: str) -> Any:
        job = node.store.job(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}; GET /jobs lists them")
        return job

    @app.get("/jobs", tags=["studies"])
    def jobs(status: list[str] = Query(default=[]), limit: int = Query(200, ge=1, le=10_000),  # noqa: B008
             offset: int = Query(0, ge=0), _: str = Depends(caller)) -> list[dict[str, Any]]:  # fmt: skip
        """Jobs, newest first (optionally of some statuses: queued, running, done, no_route, failed);
        page with ``offset``."""
        return [j.as_dict() for j in node.store.jobs(status, limit, offset)]

    @app.get("/jobs/{job_id}", tags=["studies"])
    def job(job_id: str, actor: str = Depends(caller)) -> dict[str, Any]:
        """One job: its status and, once done, its predictions and result files."""
        job = job_or_404(job_id)
        found = job.as_dict()
        result = node.result(job_id)
        if result is not None:
            found.update(predictions=result["predictions"], files=result["downloads"],
                         deliveries=[d.as_dict() for d in node.store.deliveries(job_id)])  # fmt: skip
            node.store.audit(actor, "viewed", job)
        return found

    @app.get("/jobs/{job_id}/files/{name:path}", tags=["studies"])
    def result_file(job_id: str, name: str, actor: str = Depends(caller)) -> FileResponse:
        """One result file of a done job (a DICOM object, or predictions.csv)."""
        found = job_or_404(job_id)
        result = node.result(job_id)
        folder = node.results_folder(job_id)
        if result is None or folder is None or name not in result["downloads"] or ".." in PurePosixPath(name).parts:
            raise HTTPException(404, f"job {job_id} has no result file {name!r}; GET /jobs/{job_id} lists them")
        node.store.audit(actor, "downloaded", found, file=name)
        kind = "application/dicom" if name.endswith(".dcm") else "text/csv"
        return FileResponse(folder / name, media_type=kind, filename=PurePosixPath(name).name)

    @app.get("/deliveries", tags=["studies"])
    def deliveries(status: str | None = Query(None, pattern="^(pending|sent|dead)$"), job: str | None = None,
                   limit: int = Query(500, ge=1, le=100_000),
                   _: str = Depends(caller)) -> list[dict[str, Any]]:  # fmt: skip
        """Results sent or to be sent to destinations, newest first: ``status=dead`` lists those
        whose every try failed (kept; retry them with POST /deliveries/{id}/retry)."""
        return [d.as_dict() for d in node.store.deliveries(job, status, limit)]

    @app.post("/deliveries/{delivery_id}/retry", tags=["studies"])
    def retry(delivery_id: int, actor: str = Depends(caller)) -> dict[str, Any]:
        """Send a dead-lettered (or waiting) delivery again now, its tries counted afresh."""
        try:
            rearmed = node.store.rearm(delivery_id, actor).as_dict()
        except KeyError:
            raise HTTPException(404, f"no delivery {delivery_id}; GET /deliveries lists them") from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        if sender is not None:
            sender.wake()  # sent now, not at the next poll
        return rearmed

    @app.get("/worklist", tags=["triage"])
    def worklist(limit: int = Query(500, ge=1, le=10_000), offset: int = Query(0, ge=0),
                 _: str = Depends(caller)) -> list[dict[str, Any]]:  # fmt: skip
        """Every study, flagged ones first (highest score first), then the rest in the order they
        arrived: a flag only moves a study up, it never hides one. Page with ``offset``."""
        return [j.as_dict() for j in node.store.worklist(limit, offset)]

    @app.get("/models", tags=["models"])
    def models(_: str = Depends(caller)) -> list[dict[str, Any]]:
        """The models the service runs, with their versions and the routes that use them."""
        return [{**m.summary(), "routes": [r.name for r in config.routes if r.model == name]}
                for name, m in node.models.items()]  # fmt: skip

    @app.get("/models/{name}/card", tags=["models"], response_class=PlainTextResponse)
    def card(name: str, _: str = Depends(caller)) -> Response:
        """A model's card (Markdown)."""
        if name not in node.models:
            raise HTTPException(404, f"no model {name!r}; the models are {', '.join(sorted(node.models))}")
        text = node.models[name].card()
        if not text:
            raise HTTPException(404, f"model {name!r} is a run folder, not a package: it has no card "
                                "(medsight export makes one)")  # fmt: skip
        return PlainTextResponse(text, media_type="text/markdown")

    @app.get("/audit", tags=["service"])
    def audit(job: str | None = None, limit: int = Query(500, ge=1, le=100_000),
              _: str = Depends(caller)) -> list[dict[str, Any]]:  # fmt: skip
        """The audit log, newest first (of one job with ``job=``)."""
        return [e.as_dict() for e in node.store.events(job, limit)]

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def prometheus(_: str = Depends(caller)) -> Response:
        """Prometheus metrics: instances received, jobs by status, processing time."""
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    return app
