"""Orthanc as the service's edge: a thread reads Orthanc's change log (``/changes``), and for each
study Orthanc reports stable pulls the instances it has not pulled before with WADO-RS (the
DICOMweb plugin), leaving out the results this service wrote, and queues them as a job.

Exactly once: the position in Orthanc's change log and the pulled instances are recorded in the
transaction that queues the job, so after a crash at any point a restart neither loses a study
nor pulls one twice; a study that becomes stable again (our results stored into it, or a new
series) is pulled for its new instances alone."""

from __future__ import annotations

import io
import logging
import threading
from collections import defaultdict
from typing import Any

from medsight.core.errors import InputError
from medsight.service.config import Orthanc
from medsight.service.intake import parse_instance
from medsight.service.node import Node

__all__ = ["OrthancEdge", "OrthancError"]

log = logging.getLogger(__name__)

CURSOR = "orthanc.changes"  # the last change of Orthanc's log that was dealt with
_TAGS = {"sop": "00080018", "sop_class": "00080016", "series": "0020000E", "manufacturer": "00080070"}


class OrthancError(Exception):
    """Pulling from Orthanc cannot go on now: Orthanc cannot be reached or answered with an error, or
    the storage refused (the message says which and what to check); the next poll starts again at
    the same change, so nothing is passed over."""


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(_TAGS[tag], {}).get("Value") or [""]
    return str(values[0])


class OrthancEdge:
    """Pull the studies Orthanc reports stable into the service.

    Args:
        node: The service core (its store, loop guard and queue).
        settings: serve.yaml's ``orthanc`` section.

    Raises:
        ConfigError: credentials named but missing from the environment.
    """

    def __init__(self, node: Node, settings: Orthanc) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.node, self.settings = node, settings
        self.http = settings.session("orthanc")
        self.web = DICOMwebClient(settings.dicomweb_url, session=self.http, timeout=settings.timeout_s)
        self.web.set_http_retry_params(retry=False)  # the next poll is the retry: nothing blocks for minutes
        self._stop, self._thread = threading.Event(), None
        self._down: str | None = None  # the last outage reported (logged once, not at every poll)

    @property
    def status(self) -> str:
        """``ok``, or why Orthanc could not be read at the last poll (what ``/health`` says)."""
        return "ok" if self._down is None else self._down

    # -- the thread -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start polling (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="medsight-orthanc", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the study in hand."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def _loop(self) -> None:
        wait = self.settings.poll_s
        while not self._stop.is_set():
            try:
                busy = self.poll()
                if self._down is not None:
                    log.info("Orthanc %s answers again", self.settings.url)
                self._down, wait = None, self.settings.poll_s
            except OrthancError as exc:
                if str(exc) != self._down:
                    log.warning("%s (trying again, the waits doubling up to a minute)", exc)
                self._down, busy = str(exc), False
                wait = min(wait * 2, 60.0)
            except Exception:  # the edge must outlive any one study
                log.exception("reading Orthanc's changes failed")
                busy = False
            if not busy:
                self._stop.wait(wait)

    # -- one poll -------------------------------------------------------------------------------
    def _get(self, path: str, **params: Any) -> Any:
        import requests

        url = f"{self.settings.url}/{path}"
        try:
            answer = self.http.get(url, params=params, timeout=self.settings.timeout_s)
        except requests.RequestException as exc:
            raise OrthancError(f"Orthanc at {self.settings.url} cannot be reached ({type(exc).__name__}); is it "
                                     "running, and is orthanc.url right?") from exc  # fmt: skip
        if answer.status_code == 404:
            return None
        if answer.status_code in (401, 403):
            raise OrthancError(f"Orthanc at {self.settings.url} refused the credentials (HTTP "
                                     f"{answer.status_code}); check orthanc.username and the password in "
                                     f"{self.settings.password_env or 'orthanc.password_env'}")  # fmt: skip
        if answer.status_code >= 400:
            raise OrthancError(f"Orthanc at {self.settings.url} answered HTTP {answer.status_code} to {path}")
        return answer.json()

    def cursor(self) -> int:
        """Where in Orthanc's change log the service is (set at the very first poll: Orthanc's last
        change, or 0 with ``history``)."""
        kept = self.node.store.state(CURSOR)
        if kept is not None:
            return int(kept)
        start = 0 if self.settings.history else int((self._get("changes", last="") or {}).get("Last", 0))
        self.node.store.set_state(CURSOR, str(start))
        log.info("reading Orthanc's changes from %d (%s)", start, "its whole history" if start == 0 else "now on")
        return start

    def poll(self) -> bool:
        """Read Orthanc's changes once and take each newly stable study; whether there may be more.

        Raises:
            OrthancError: Orthanc cannot be reached or answered with an error (nothing was
                skipped: the next poll starts at the same change).
        """
        since = self.cursor()
        changes = self._get("changes", since=since, limit=100) or {}
        for change in changes.get("Changes", []):
            if change.get("ChangeType") == "StableStudy":
                self.take(str(change["ID"]), int(change["Seq"]))
        last = int(changes.get("Last", since))
        if last > since:
            self.node.store.set_state(CURSOR, str(max(last, int(self.node.store.state(CURSOR) or 0))))
        return not changes.get("Done", True)

    def take(self, orthanc_id: str, seq: int) -> None:
        """Pull a stable study's instances not pulled before, and queue them (the change ``seq`` is
        recorded with the job). A study gone from Orthanc, or one that cannot be read, is logged,
        audited and passed over; an unreachable Orthanc raises and nothing is passed over.

        Raises:
            OrthancError: Orthanc cannot be reached or answered with an error.
        """
        state = {CURSOR: str(seq)}
        study = self._get(f"studies/{orthanc_id}")
        if study is None:
            log.info("Orthanc study %s was deleted before it could be pulled", orthanc_id)
            self.node.store.set_state(CURSOR, str(seq))
            return
        study_uid = str(study.get("MainDicomTags", {}).get("StudyInstanceUID", ""))
        listed = self._search(study_uid)
        own = [i["sop"] for i in listed if self.node.is_own_uid(i["sop"], i["sop_class"], i["manufacturer"])]
        seen = self.node.store.pulled([i["sop"] for i in listed])
        new_own = [uid for uid in own if uid not in seen]
        if new_own:
            self.node.ignore_own(new_own, "orthanc")
        fresh = [i for i in listed if i["sop"] not in seen and i["sop"] not in own]
        if not fresh:
            self.node.store.set_state(CURSOR, str(seq), pulled=new_own)
            return
        files = self._retrieve(study_uid, fresh)
        if not files:  # gone from Orthanc between the search and the pull
            self.node.store.set_state(CURSOR, str(seq), pulled=new_own)
            return
        try:
            for name, data in files:
                parse_instance(data, name)
        except InputError as exc:  # one unreadable study must not stop the edge: passed over, audited
            log.error("the Orthanc study %s cannot be processed (%s); passed over", study_uid, exc)
            self.node.store.audit("orthanc", "refused", None, study_uid=study_uid, reason=str(exc))
            self.node.store.set_state(CURSOR, str(seq), pulled=[i["sop"] for i in fresh])
            return
        try:
            jobs = self.node.receive(files, actor="orthanc", source="orthanc", state=state, pulled=True)
        except InputError as exc:  # the storage refused (full, read-only): tried again at the next poll
            raise OrthancError(str(exc)) from exc
        if new_own or not jobs:
            self.node.store.set_state(CURSOR, str(seq), pulled=new_own)
        for job in jobs:
            log.info("job %s: %d instance(s) of study %s pulled from Orthanc", job.id, job.instances, study_uid)

    def _search(self, study_uid: str) -> list[dict[str, str]]:
        import requests

        try:
            found = self.web.search_for_instances(study_instance_uid=study_uid, fields=["Manufacturer"],
                                                  get_remaining=True)  # fmt: skip
        except requests.RequestException as exc:
            raise OrthancError(f"Orthanc's DICOMweb search at {self.settings.dicomweb_url} failed ({exc}); "
                                     "is the DICOMweb plugin on, and orthanc.dicomweb its root?") from exc  # fmt: skip
        return [{tag: _value(item, tag) for tag in _TAGS} for item in found]

    def _retrieve(self, study_uid: str, wanted: list[dict[str, str]]) -> list[tuple[str, bytes]]:
        """The wanted instances as files, pulled series by series in their stored transfer syntax."""
        import requests

        by_series: dict[str, set[str]] = defaultdict(set)
        for item in wanted:
            by_series[item["series"]].add(item["sop"])
        files = []
        for series_uid, sops in by_series.items():
            try:
                datasets = self.web.retrieve_series(study_uid, series_uid, media_types=(("application/dicom", "*"),))
            except requests.RequestException as exc:
                raise OrthancError(f"pulling series {series_uid} from {self.settings.dicomweb_url} failed "
                                         f"({exc})") from exc  # fmt: skip
            for dataset in datasets:
                if str(dataset.get("SOPInstanceUID", "")) in sops:
                    buffer = io.BytesIO()
                    dataset.save_as(buffer, enforce_file_format=True)
                    files.append((f"{dataset.SOPInstanceUID}.dcm", buffer.getvalue()))
        return files
