"""Sending results back: each done job's DICOM results go to the destinations its route names, by
C-STORE (pynetdicom, TCP_NODELAY on) or STOW-RS (dicomweb-client), with bounded retries and a
dead-letter state. A delivery is recorded with the job in one transaction, so a stop or crash
loses none; one cut short by a crash is sent again whole (a PACS stores an instance sent twice
once: same SOP Instance UID)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from medsight.core.errors import ConfigError
from medsight.service.config import Destination
from medsight.service.node import Node

__all__ = ["SendError", "Sender", "c_store", "stow"]

log = logging.getLogger(__name__)


class SendError(Exception):
    """A destination refused or could not be reached (the message says which and why)."""


def c_store(destination: Destination, paths: list[Path]) -> int:
    """Send DICOM files to ``destination`` in one association; how many were stored.

    Raises:
        SendError: no association (the node is down, or refuses our AE title), or an instance refused.
    """
    import pydicom
    from pynetdicom import AE, evt
    from pynetdicom.presentation import build_context

    from medsight.service.dimse import nodelay

    ae = AE(ae_title=destination.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    ae.connection_timeout = destination.timeout_s
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    for sop_class in sorted({str(h.SOPClassUID) for h in heads}):
        syntaxes = sorted({str(h.file_meta.TransferSyntaxUID) for h in heads if str(h.SOPClassUID) == sop_class})
        ae.requested_contexts = [*ae.requested_contexts, build_context(sop_class, syntaxes)]
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])  # fmt: skip
    if not assoc.is_established:
        reason = "rejected the association" if assoc.is_rejected else "cannot be reached"
        raise SendError(f"{where} {reason} (is it up, and does it know the AE title "
                        f"{destination.calling_ae_title}?)")  # fmt: skip
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code != 0 and not 0xB000 <= code <= 0xBFFF:  # success, or a warning (stored, coerced)
                raise SendError(f"{where} refused {path.name} (status 0x{code & 0xFFFF:04X})"
                                if code >= 0 else f"{where} did not answer for {path.name}")  # fmt: skip
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
    return len(paths)


def stow(destination: Destination, paths: list[Path]) -> int:
    """Store DICOM files on a DICOMweb server (``destination.url``) in one STOW-RS request; how many
    were stored.

    Raises:
        SendError: the server cannot be reached, refused the request, or refused an instance.
        ConfigError: the destination's credentials are named but missing from the environment.
    """
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(str(destination.url), session=destination.session("destinations"),
                            timeout=destination.timeout_s)  # fmt: skip
    client.set_http_retry_params(retry=False)  # the sender's own retries (doubling waits, a dead letter) apply
    datasets = [pydicom.dcmread(p) for p in paths]
    try:
        answer = client.store_instances(datasets)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        hint = " (check username and password_env)" if code in (401, 403) else ""
        raise SendError(f"{destination.url} refused the results (HTTP {code}){hint}") from exc
    except requests.RequestException as exc:
        raise SendError(f"{destination.url} cannot be reached ({type(exc).__name__}); is it up, and is the url "
                        "its DICOMweb root?") from exc  # fmt: skip
    failed = list(answer.get("FailedSOPSequence", [])) if answer is not None else []
    if failed:
        reasons = sorted({f"0x{int(getattr(f, 'FailureReason', 0)):04X}" for f in failed})
        raise SendError(f"{destination.url} refused {len(failed)} of {len(paths)} result(s) (failure reason "
                        f"{', '.join(reasons)})")  # fmt: skip
    return len(paths)


class Sender:
    """Threads sending due deliveries: one per destination, so that a destination that is slow or
    black-holed (each try waiting out its timeout) delays only its own deliveries; and one for
    deliveries to destinations no longer in serve.yaml (dead-lettered at once, with the reason).

    Args:
        node: The service core (its store, configuration and results).
        poll_s: How often to look for due deliveries.
    """

    def __init__(self, node: Node, poll_s: float = 1.0) -> None:
        self.node, self.poll_s = node, poll_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lanes = [*node.config.destinations, None]  # None: destinations no longer configured
        self._woken = {lane: threading.Event() for lane in self._lanes}
        node.on_finished.append(lambda _job: self.wake())  # a job just done: its results go at once

    def wake(self) -> None:
        """Look for due deliveries now (a job finished, a delivery was re-armed)."""
        for event in self._woken.values():
            event.set()

    def start(self) -> None:
        """Start sending (idempotent)."""
        if any(t.is_alive() for t in self._threads):
            return
        self._stop.clear()
        self._threads = [threading.Thread(target=self._loop, args=(lane,), daemon=True,
                                          name=f"medsight-sender-{lane or 'unconfigured'}")
                         for lane in self._lanes]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop after the deliveries in hand."""
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(120)

    def _loop(self, lane: str | None) -> None:
        store, configured = self.node.store, list(self.node.config.destinations)
        while not self._stop.is_set():
            try:  # a destination's own deliveries; None: those to destinations no longer configured
                while not self._stop.is_set() and self._send_all(
                    store.due(destination=lane) if lane is not None else store.due(other_than=configured)
                ):
                    pass
            except Exception:  # the loop must outlive any one delivery
                log.exception("sending results to %s failed", lane or "unconfigured destinations")
            self._woken[lane].wait(self.poll_s)
            self._woken[lane].clear()

    def send_due(self, destination: str | None = None) -> int:
        """Try every due delivery once (to ``destination`` alone where given); how many were tried."""
        return self._send_all(self.node.store.due(destination=destination))

    def _send_all(self, due: list[Any]) -> int:
        for delivery in due:
            self._send(delivery)
        return len(due)

    def _send(self, delivery: Any) -> None:
        store = self.node.store
        destination = self.node.config.destinations.get(delivery.destination)
        if destination is None:  # removed from serve.yaml since: dead at once, listed for the admin
            store.attempt_failed(delivery.id, f"destination {delivery.destination!r} is no longer in serve.yaml",
                                 max_attempts=1, retry_s=1)  # fmt: skip
            return
        folder = self.node.results_folder(delivery.job_id)
        paths = sorted((folder / "dicom").glob("*.dcm")) if folder is not None else []
        if not paths:
            store.attempt_failed(delivery.id, "the job's results are gone from storage", max_attempts=1, retry_s=1)
            return
        try:
            sent = (stow if destination.url is not None else c_store)(destination, paths)
        except (SendError, ConfigError, OSError, ValueError, RuntimeError) as exc:
            after = store.attempt_failed(delivery.id, str(exc), max_attempts=destination.max_attempts,
                                         retry_s=destination.retry_s)  # fmt: skip
            level = logging.ERROR if after.status == "dead" else logging.WARNING
            log.log(level, "job %s to %s: try %d of %d failed: %s", delivery.job_id, delivery.destination,
                    after.attempts, destination.max_attempts, exc)  # fmt: skip
            return
        store.delivered(delivery.id, instances=sent)
        log.info("job %s: %d result(s) sent to %s", delivery.job_id, sent, delivery.destination)
