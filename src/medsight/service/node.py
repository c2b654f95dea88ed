"""The service's core, whatever receives the studies: spool a received study and queue it (one
transaction with its audit line), and a worker thread that routes each queued study to its model,
predicts, writes the DICOM results (SEG, TID 1500 SR, optional overlay) and records the outcome.

Crash safety: a study is acknowledged only once spooled and queued; a job's results are written to
a hidden folder and renamed into place before the job is marked done, so after a kill at any point
a restart finishes each received study exactly once (a job found running with its results in place
is marked done from them; one without is queued again)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import uid

from medsight.core.errors import ConfigError, InputError, MedsightError
from medsight.service.config import ModelEntry, Route, ServeConfig
from medsight.service.intake import Instance, parse_instance, spool, studies, sync_folder
from medsight.service.routing import Series, describe, route_study
from medsight.service.store import Job, Store, as_utc, utcnow

__all__ = ["LoadedModel", "Node"]

log = logging.getLogger(__name__)

# What the results writers make (SEG, Comprehensive 3D SR, secondary captures): with manufacturer medsight,
# such an object is a result coming back, never a study to process (the loop guard; images medsight
# wrote, e.g. a converted NIfTI, are studies like any other)
_OUR_CLASSES = frozenset(
    map(
        str,
        (
            uid.SegmentationStorage,
            uid.Comprehensive3DSRStorage,
            uid.SecondaryCaptureImageStorage,
            uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
        ),
    )
)
_STAGED = ".staged.json"  # in a staged study moved into the spool: its job, caller and source
RESULT = "result.json"  # written last into a job's results: its presence means the results are whole


@dataclass
class LoadedModel:
    """A model of serve.yaml, loaded: its predictor, version and card."""

    name: str
    entry: ModelEntry
    predictor: Any
    version: str
    device_uid: str
    algorithm: Any = None  # as the DICOM objects name it
    explainer: Any = None  # the PyTorch predictor heat maps are drawn with (made at the first)

    @property
    def heat_maps(self) -> bool:
        """Whether its results get heat-map overlays: a 2D model without label maps, with dicom_overlay."""
        task = self.predictor.task
        return self.entry.dicom_overlay and task.spatial_dims == 2 and not task.label_classes()

    def card(self) -> str:
        """The package's MODEL_CARD.md ('' for a run folder, which has none)."""
        path = Path(self.predictor.run_dir) / "MODEL_CARD.md"
        return path.read_text() if path.is_file() else ""

    def summary(self) -> dict[str, Any]:
        """What ``GET /models`` says of it."""
        package = self.predictor.package
        return {"name": self.name, "recipe": package.recipe, "task": self.predictor.package.task.kind,
                "version": self.version, "device_uid": self.device_uid, "backend": self.predictor.backend,
                "package": str(self.entry.package), "card": bool(self.card())}  # fmt: skip


def load_models(config: ServeConfig) -> dict[str, LoadedModel]:
    """Every model of the configuration, loaded (a missing or broken package is named with its key).

    Raises:
        ConfigError: a package cannot be loaded, or it reads tables (the service receives images).
    """
    from medsight.export.dicom_results import algorithm_of
    from medsight.inference import Predictor

    loaded = {}
    for name, entry in config.models.items():
        try:
            predictor = Predictor.from_run(entry.package, backend=entry.backend)
        except MedsightError as exc:
            raise ConfigError(f"models.{name}: {exc}") from exc
        if predictor.task.spatial_dims == 0:
            raise ConfigError(f"models.{name}: {entry.package} is a model of tables; the service predicts images")
        if entry.dicom_seg == "fractional" and not predictor.task.probability_structures():
            raise ConfigError(f"models.{name}.dicom_seg: fractional is for segmentation models; "
                              f"{predictor.package.recipe} makes no probability maps (use binary)")  # fmt: skip
        algorithm = algorithm_of(predictor)
        loaded[name] = LoadedModel(name, entry, predictor, algorithm.version, algorithm.device_uid, algorithm)
        log.info("model %s: %s (%s, version %s, %s)", name, predictor.package.recipe, predictor.package.task.kind,
                 algorithm.version, predictor.backend)  # fmt: skip
    return loaded


class Node:
    """The service without its front doors: receive, queue, process, record.

    Args:
        config: The validated serve.yaml.
        models: The loaded models (default: loaded from the configuration).
        metrics: Callbacks the HTTP layer counts with (``instances``, ``job``), or None.
    """

    def __init__(self, config: ServeConfig, models: dict[str, LoadedModel] | None = None,
                 metrics: Any | None = None) -> None:  # fmt: skip
        self.config = config
        try:
            for sub in ("spool", "results"):
                (config.storage / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot make the service storage {config.storage} ({exc.strerror}); "
                              "give another storage in serve.yaml") from exc  # fmt: skip
        self.store = Store(config.database_url)
        self.models = models if models is not None else load_models(config)
        self.metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ours: set[str] | None = None  # the output UIDs of every job (the loop guard), read once
        self.on_finished: list[Callable[[Job], None]] = []  # called with each job the worker finished
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this instance
        self._beat: threading.Thread | None = None
        self.recover()

    # -- receiving ------------------------------------------------------------------------------
    def receive(self, files: Sequence[tuple[str, bytes | Path]], *, actor: str, source: str = "http",
                state: dict[str, str] | None = None, pulled: bool = False) -> list[Job]:  # fmt: skip
        """Check, spool and queue the studies the files make (all or none: one bad file refuses them
        all, naming it). Instances this service wrote itself are recognised and not queued again.
        ``state`` is kept, and with ``pulled`` the instances are marked pulled, in the transaction
        that queues the last study (an edge's progress moves with its jobs). A file given as a path
        (an upload staged on disk) is moved into the spool, not read into memory.

        Raises:
            InputError: a file is not DICOM or lacks valid UIDs; nothing usable was sent; the disk refused.
        """
        if not files:
            raise InputError("no files were sent; send DICOM files as multipart form fields named 'files'")
        instances = [parse_instance(data, name) for name, data in files]
        own = {i.sop_uid for i in instances if self.is_own(i)}
        if own:
            self.ignore_own(sorted(own), actor)
        jobs = []
        grouped = studies(i for i in instances if i.sop_uid not in own)
        for number, (study_uid, items) in enumerate(grouped.items(), 1):
            job_id = uuid.uuid4().hex
            spool(self.config.storage / "spool" / job_id, items)
            last = number == len(grouped)
            jobs.append(self._queue(job_id, study_uid, items, actor=actor, source=source, state=state if last else None,
                                    pulled=[i.sop_uid for i in items] if pulled else ()))  # fmt: skip
        if self.metrics is not None:
            self.metrics.instances(len(instances) - len(own))
        return jobs

    def is_own(self, instance: Instance) -> bool:
        """Whether the instance is a result this service wrote (the loop guard): one of its output
        UIDs, or a SEG, SR or secondary capture made by medsight."""
        return self.is_own_uid(instance.sop_uid, instance.sop_class, instance.manufacturer)

    def is_own_uid(self, sop_uid: str, sop_class: str, manufacturer: str) -> bool:
        """:meth:`is_own` from an instance's UIDs and manufacturer (e.g. as a DICOMweb search lists them)."""
        if manufacturer == "medsight" and sop_class in _OUR_CLASSES:
            return True
        with self._lock:
            if self._ours is None:
                self._ours = self.store.our_outputs()
            return sop_uid in self._ours

    def ignore_own(self, sop_uids: Sequence[str], actor: str) -> None:
        """Record instances the loop guard turned away."""
        log.info("ignored %d instance(s) this service wrote (loop guard)", len(sop_uids))
        self.store.audit(actor, "ignored_own_output", None, instances=list(sop_uids))

    def enqueue_staged(self, staged: Path, *, actor: str, source: str) -> Job | None:
        """Queue a study whose instances were staged on disk as they arrived (``staged/<series
        UID>/<SOP instance UID>.dcm``, all of one study, e.g. by the DICOM listener): the folder is
        moved into the spool, and a crash at any point loses nothing (a moved folder without its job
        is adopted on the next start). None when the folder holds no instance.

        Raises:
            InputError: a staged file is no longer readable DICOM.
        """
        files = sorted(p for p in staged.glob("*/*.dcm") if not p.name.startswith("."))
        if not files:
            shutil.rmtree(staged, ignore_errors=True)
            return None
        job_id = uuid.uuid4().hex
        marker = {"job": job_id, "actor": actor, "source": source}
        (staged / _STAGED).write_text(json.dumps(marker))
        target = self.config.storage / "spool" / job_id
        os.replace(staged, target)
        sync_folder(target.parent)
        sync_folder(staged.parent)
        return self._adopt(target, marker)

    def _adopt(self, folder: Path, marker: dict[str, str]) -> Job:
        """The job of a staged study moved into the spool."""
        items = [parse_instance(p, p.name) for p in sorted(folder.glob("*/*.dcm")) if not p.name.startswith(".")]
        grouped = studies(items)
        if len(grouped) != 1:
            raise InputError(f"{folder} holds {len(grouped)} studies; a staged folder holds one")
        ((study_uid, items),) = grouped.items()
        return self._queue(marker["job"], study_uid, items, actor=marker["actor"], source=marker["source"])

    def _queue(self, job_id: str, study_uid: str, items: Sequence[Instance], *, actor: str, source: str,
               state: dict[str, str] | None = None, pulled: Sequence[str] = ()) -> Job:  # fmt: skip
        first = items[0]
        job = Job(
            id=job_id, study_uid=study_uid, accession=first.accession,
            modalities=",".join(sorted({i.modality for i in items if i.modality}))[:64],
            description=first.study_description, study_time=first.study_time, source=source,
            submitted_by=actor[:64], instances=len(items), status="queued", received_at=utcnow(), flagged=False,
        )  # fmt: skip
        self.store.add_job(job, actor=actor, detail={"source": source, "instances": len(items),
                           "series": len({i.series_uid for i in items})}, state=state, pulled=pulled)  # fmt: skip
        self._wake.set()
        return job

    # -- the worker -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread, and the one renewing its lease and taking over the jobs of
        instances gone quiet (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="medsight-worker", daemon=True)
            self._thread.start()
        if self._beat is None or not self._beat.is_alive():
            self._beat = threading.Thread(target=self._keep_lease, name="medsight-lease", daemon=True)
            self._beat.start()

    def _keep_lease(self) -> None:
        while not self._stop.wait(self.config.lease_s / 3):
            try:
                self.store.beat(self.worker_id)
                self.recover_running()
            except Exception:  # the lease must outlive a database hiccup
                log.exception("renewing the lease failed")

    def stop(self, timeout: float = 60.0) -> None:
        """Let the worker finish the study in hand, then stop it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.process_next():
                self._wake.wait(self.config.poll_s)
                self._wake.clear()

    def process_next(self) -> bool:
        """Process the oldest queued study, if any; whether there was one."""
        job = self.store.claim(self.worker_id)
        if job is None:
            return False
        started = time.perf_counter()
        try:
            self._process(job)
        except Exception as exc:  # one study's failure must not stop the others; it is recorded
            known = isinstance(exc, MedsightError)
            if not known:
                log.exception("study %s (job %s) failed", job.study_uid, job.id)
            note = str(exc) if known else f"internal error ({type(exc).__name__}: {exc}); see the service log"
            self.store.finish(job.id, action="failed", status="failed", note=note[:2000])
        seconds = time.perf_counter() - started
        done = self.store.job(job.id)
        if done is not None:
            log.info("job %s (study %s): %s in %.1f s%s%s", job.id, job.study_uid, done.status, seconds,
                     f", {done.route} score {done.score}" if done.route else "",
                     " FLAGGED" if done.flagged else "")  # fmt: skip
        if self.metrics is not None:
            self.metrics.job(done.status if done else "failed", seconds)
        for hook in self.on_finished if done is not None else ():
            hook(done)
        return True

    def _series(self, folder: Path) -> list[Series]:
        found = []
        for series in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = sorted(series.glob("*.dcm"))
            if files:
                first = parse_instance(files[0].read_bytes(), files[0].name)
                found.append(Series.of([first] * len(files)))
        return found

    def _process(self, job: Job) -> None:
        folder = self.config.storage / "spool" / job.id
        if not folder.is_dir():
            raise InputError(f"the spooled study {folder} is gone (removed by hand?); send the study again")
        series = self._series(folder)
        chosen = route_study(self.config.routes, series)
        if chosen is None:
            self.store.finish(job.id, action="no_route", status="no_route",
                              note=f"no route takes this study: {describe(series)}")  # fmt: skip
            return
        route, taken = chosen
        model = self.models[route.model]
        self._record_route(job.id, route, model)
        final = self.config.storage / "results" / job.id
        work = final.with_name(f".{job.id}.partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        result = self._predict(job, route, model, [folder / s.uid for s in taken], work)
        os.replace(work, final)
        self._finish_from(job.id, result)

    def _record_route(self, job_id: str, route: Route, model: LoadedModel) -> None:
        with self.store.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.route, job.model, job.model_version = route.name, model.name, model.version

    def _predict(self, job: Job, route: Route, model: LoadedModel, inputs: list[Path], work: Path) -> dict:
        from medsight.export.dicom_results import write_dicom_results
        from medsight.tasks.results import json_ready

        predictor = model.predictor
        fractional = model.entry.dicom_seg == "fractional"
        table = predictor.predict_files(inputs, masks=work / "masks", probabilities=fractional).table()
        written = write_dicom_results(predictor, table, work / "dicom", overlay=model.entry.dicom_overlay,
                                      fractional=fractional)  # fmt: skip
        heat_notes = self._heat_overlays(model, written, work / "dicom") if model.heat_maps else []
        files = sorted(p.relative_to(work).as_posix() for p in (work / "dicom").glob("*.dcm"))
        outputs = [_sop_uid(work / f) for f in files]
        table["input"] = [Path(str(p)).name for p in table["input"]]  # the series UID, not a spool path
        for column in ("output", "probabilities"):
            if column in table:
                table[column] = [f"masks/{Path(str(p)).name}" if p else "" for p in table[column]]
        table.to_csv(work / "predictions.csv", index=False)
        score, note = _score(route, table)
        notes = [f"{w.input and Path(w.input).name}: {w.reason}" for w in written if w.reason] + heat_notes
        result = {
            "job": job.id, "study_uid": job.study_uid, "route": route.name, "model": model.name,
            "model_version": model.version, "device_uid": model.device_uid, "score": score,
            "flagged": bool(score is not None and route.threshold is not None and score >= route.threshold),
            "note": "; ".join([note, *notes]).strip("; "), "files": files, "outputs": outputs,
            "predictions": json_ready(table.to_dict(orient="records")),
        }  # fmt: skip
        (work / RESULT).write_text(json.dumps(result, indent=1))  # last: its presence means whole
        return result

    @staticmethod
    def _heat_overlays(model: LoadedModel, written: Sequence[Any], folder: Path) -> list[str]:
        """A 2D classifier's heat map over each DICOM image with a report (``dicom_overlay``); the notes
        of those that could have none."""
        from medsight.explain import explainer_of, image_heat_map
        from medsight.export.dicom_results import write_heat_overlays

        if model.explainer is None:
            model.explainer = explainer_of(model.predictor)
        skipped = write_heat_overlays(written, folder, algorithm=model.algorithm,
                                      heat_map=lambda path: image_heat_map(model.explainer, path))  # fmt: skip
        return [f"{Path(source).name}: no heat map ({reason})" for source, reason in skipped]

    def _finish_from(self, job_id: str, result: dict, *, recovered: bool = False) -> None:
        with self._lock:
            if self._ours is not None:
                self._ours.update(result["outputs"])
        route = next((r for r in self.config.routes if r.name == result["route"]), None)
        send_to = route.send_to if route is not None and result["outputs"] else []
        self.store.finish(job_id, action="processed", send_to=send_to, status="done", route=result["route"],
                          model=result["model"],
                          model_version=result["model_version"], score=result["score"], flagged=result["flagged"],
                          note=result["note"] + (" (completed after a restart)" if recovered else ""),
                          outputs=json.dumps(result["outputs"]))  # fmt: skip

    def _abandoned(self, job: Job) -> bool:
        """Whether a running job's instance is gone: none recorded, a process of this machine that is
        no longer alive, or no heartbeat for ``lease_s`` (another machine, or a hung process)."""
        if job.worker == self.worker_id:
            return False
        if not job.worker or _process_gone(job.worker):
            return True
        beat = job.heartbeat_at
        return beat is None or (utcnow() - as_utc(beat)).total_seconds() > self.config.lease_s

    def upload_folder(self) -> Path:
        """A new folder for one HTTP upload, named after this instance (a later start removes it
        once this process is gone)."""
        return self.config.storage / "uploads" / f"{self.worker_id}-{uuid.uuid4().hex}"

    def recover_running(self) -> None:
        """Finish each running job whose instance is gone (:meth:`_abandoned`) from its results where
        they are whole, else queue it again; jobs of live instances are left to them."""
        for job in self.store.jobs(statuses=("running",), limit=100_000):
            if not self._abandoned(job):
                continue
            result = self.config.storage / "results" / job.id / RESULT
            if result.is_file():
                self._finish_from(job.id, json.loads(result.read_text()), recovered=True)
                log.info("job %s: results were whole; marked done after its instance stopped", job.id)
            elif self.store.requeue(job.id):
                self.store.audit("medsight", "requeued", job, reason="the service stopped while processing it",
                                 worker=job.worker)  # fmt: skip
                log.info("job %s: queued again (its instance %s stopped while processing it)", job.id, job.worker)

    def recover(self) -> None:
        """After a stop or crash: finish each job its stopped instance left running whose results are
        whole, queue the others again (:meth:`recover_running`); remove HTTP uploads whose instance
        is gone; adopt staged studies; name spooled folders that no job owns (never acknowledged;
        left for the admin)."""
        self.recover_running()
        uploads = self.config.storage / "uploads"  # HTTP uploads staged before a stop: never acknowledged
        cut_off = [f for f in uploads.iterdir() if _process_gone(f.name.rpartition("-")[0])] if uploads.is_dir() else []
        if cut_off:
            log.info("removing %d HTTP upload(s) cut off by a stop (never acknowledged)", len(cut_off))
            for folder in cut_off:
                shutil.rmtree(folder, ignore_errors=True)
        known = self.store.job_ids()
        orphans = []
        for folder in (self.config.storage / "spool").iterdir():
            if folder.name in known:
                continue
            marker = folder / _STAGED
            if marker.is_file():  # acknowledged instances moved in just before a stop: queue them
                try:
                    job = self._adopt(folder, json.loads(marker.read_text()))
                except (MedsightError, ValueError, KeyError) as exc:
                    log.error("the staged study %s cannot be queued (%s); it is left there for the admin", folder, exc)
                    continue
                log.info("job %s: a staged study moved into the spool before the stop, queued now", job.id)
            else:
                orphans.append(folder.name)
        if orphans:
            log.warning("%d spooled folder(s) belong to no job (a receipt cut off before it was acknowledged; "
                        "the sender will send again): %s", len(orphans), ", ".join(orphans[:5]))  # fmt: skip

    def results_folder(self, job_id: str) -> Path | None:
        """The job's results folder, when it is whole."""
        folder = self.config.storage / "results" / job_id
        return folder if (folder / RESULT).is_file() else None

    def result(self, job_id: str) -> dict[str, Any] | None:
        """The job's whole results as ``result.json`` records them, with ``downloads``: the files a
        caller may fetch (the DICOM objects and predictions.csv); None until they are whole."""
        folder = self.results_folder(job_id)
        if folder is None:
            return None
        result = json.loads((folder / RESULT).read_text())
        return {**result, "downloads": [*result["files"], "predictions.csv"]}


def _alive(pid: int) -> bool:
    """Whether a process of this machine is alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _process_gone(owner: str) -> bool:
    """Whether the process an instance id names (``host:pid:tag``) is gone: a process of this
    machine no longer alive, or no id at all (an older version's); another machine's is not known
    gone (its lease says)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if not pid.isdigit():
        return True
    return host == socket.gethostname() and not _alive(int(pid))


def _sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _score(route: Route, table: Any) -> tuple[float | None, str]:
    """The route's score of a study (its column's largest value over the inputs) and a note where it has none."""
    if route.score is None:
        return None, ""
    if route.score not in table:
        columns = ", ".join(c for c in table.columns if c not in ("input", "output"))
        return None, f"the route's score {route.score!r} is not a column of the predictions ({columns})"
    values = [float(v) for v in table[route.score] if v is not None and not math.isnan(float(v))]
    return (max(values), "") if values else (None, f"the score {route.score!r} is undefined for this study")
