"""The DICOM listener: a C-STORE SCP (pynetdicom) that PACS and modalities send studies to.

Each instance is checked, written to ``storage/incoming/<study UID>/`` and flushed to disk before
the sender is told it arrived (status Success). A study is complete once the associations that
sent it are closed and nothing of it arrived for ``dicom.release_s`` seconds (a chest X-ray's
result need not wait), or once nothing of it arrived for ``dicom.idle_s`` seconds (a sender that
keeps its association open); it is then moved into the spool and queued like a study received
over HTTP. After a stop or crash, studies still staged are completed ``release_s`` after the next
start: an acknowledged instance is never lost. TCP_NODELAY is set on every connection (DIMSE
exchanges many small PDUs; Nagle's algorithm would delay each by tens of milliseconds)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from medsight.core.errors import InputError, MedsightError
from medsight.service.config import Dicom
from medsight.service.intake import parse_instance, spool
from medsight.service.node import Node

__all__ = ["DicomListener", "nodelay"]

log = logging.getLogger(__name__)

_SUCCESS, _OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
_CALLER = ".caller"  # in a staged study: the AE title that sent its first instance


def nodelay(event: Any) -> None:
    """pynetdicom EVT_CONN_OPEN handler: TCP_NODELAY on the connection's socket."""
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if raw is not None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # a socket already closed by the peer
            log.debug("TCP_NODELAY not set: %s", exc)


class DicomListener:
    """A C-STORE SCP feeding ``node``.

    Args:
        node: The service core that queues and processes complete studies.
        settings: serve.yaml's ``dicom`` section.
    """

    def __init__(self, node: Node, settings: Dicom) -> None:
        self.node, self.settings = node, settings
        self.incoming = node.config.storage / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        now = time.monotonic()  # studies staged before a restart complete idle_s from now
        self._last: dict[str, float] = {p.name: now for p in self.incoming.iterdir() if p.is_dir()}
        self._open: dict[str, set[int]] = {}  # study UID -> the open associations that sent some of it
        if self._last:
            log.info("%d study(ies) staged before the restart will be completed", len(self._last))
        self._stop = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- the SCP -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen (non-blocking) and start completing idle studies (idempotent).

        Raises:
            ConfigError: the port cannot be bound (in use, or not allowed).
        """
        if self._server is not None:  # started already (e.g. by the CLI, to name a busy port cleanly)
            return
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        from medsight.core.errors import ConfigError

        ae = AE(ae_title=self.settings.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True  # a sender configured for another AE title is told so
        ae.maximum_associations = self.settings.max_associations  # pynetdicom's default is 10
        if self.settings.allowed_callers:
            ae.require_calling_aet = list(self.settings.allowed_callers)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda _: _SUCCESS),
                    (evt.EVT_CONN_OPEN, nodelay), (evt.EVT_CONN_CLOSE, self._on_close)]  # fmt: skip
        try:
            self._server = ae.start_server((self.settings.host, self.settings.port), block=False,
                                           evt_handlers=handlers)  # fmt: skip
        except OSError as exc:
            where = f"{self.settings.host}:{self.settings.port}"
            raise ConfigError(f"the DICOM listener cannot listen on {where} ({exc.strerror}); free the port "
                              "or change dicom.port in serve.yaml") from exc  # fmt: skip
        self.port = self._server.server_address[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._complete_loop, name="medsight-dicom-complete", daemon=True)
        self._thread.start()
        log.info("DICOM listener %s on %s:%d", self.settings.ae_title, self.settings.host, self.port)

    def stop(self) -> None:
        """Stop listening; studies still staged stay on disk and are completed after the next start."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(30)

    def _lock(self, study_uid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(study_uid, threading.Lock())

    def _on_store(self, event: Any) -> int:
        caller = str(event.assoc.requestor.ae_title).strip()
        try:
            instance = parse_instance(event.encoded_dataset(include_meta=True), f"C-STORE from {caller}")
        except MedsightError as exc:
            log.warning("refused an instance from %s: %s", caller, exc)
            return _CANNOT_UNDERSTAND
        if self.node.is_own(instance):
            self.node.ignore_own([instance.sop_uid], f"dicom:{caller}")
            return _SUCCESS  # taken (and dropped): the sender must not retry it
        folder = self.incoming / instance.study_uid
        with self._lock(instance.study_uid):
            try:
                spool(folder, [instance])
                if instance.study_uid not in self._last:  # its first instance (since a restart: kept)
                    (folder / _CALLER).write_text(caller)
            except (InputError, OSError) as exc:
                log.error("could not stage an instance from %s: %s", caller, exc)
                return _OUT_OF_RESOURCES
            self._last[instance.study_uid] = time.monotonic()
            with self._guard:
                self._open.setdefault(instance.study_uid, set()).add(id(event.assoc))
        if self.node.metrics is not None:
            self.node.metrics.instances(1)
        return _SUCCESS

    def _on_close(self, event: Any) -> None:
        closed = id(event.assoc)
        with self._guard:
            for senders in self._open.values():
                senders.discard(closed)

    # -- completing studies --------------------------------------------------------------------------
    def complete_idle(self, now: float | None = None) -> int:
        """Queue every staged study that is complete: idle for ``idle_s``, or for ``release_s`` with
        the associations that sent it closed; how many were queued."""
        now = time.monotonic() if now is None else now
        done = 0
        for study_uid, last in list(self._last.items()):
            released = not self._open.get(study_uid)
            if now - last < (self.settings.release_s if released else self.settings.idle_s):
                continue
            with self._lock(study_uid):
                if self._last.get(study_uid) != last:  # an instance arrived meanwhile
                    continue
                self._last.pop(study_uid)
                with self._guard:
                    self._open.pop(study_uid, None)
                done += self._complete(self.incoming / study_uid)
        return done

    def _complete(self, folder: Path) -> int:
        caller = (folder / _CALLER).read_text().strip() if (folder / _CALLER).is_file() else "?"
        try:
            job = self.node.enqueue_staged(folder, actor=f"dicom:{caller}", source="dicom")
        except (MedsightError, OSError) as exc:  # left staged for the admin: never deleted
            log.error("the staged study %s could not be queued (%s); it stays there", folder, exc)
            return 0
        if job is not None:
            log.info("study %s from %s complete: job %s (%d instances)", job.study_uid, caller, job.id, job.instances)
        return int(job is not None)

    def _complete_loop(self) -> None:
        step = min(0.25, self.settings.idle_s / 4, max(self.settings.release_s / 4, 0.02))
        while not self._stop.wait(step):
            try:
                self.complete_idle()
            except Exception:  # the loop must survive anything one study does
                log.exception("completing staged studies failed")
