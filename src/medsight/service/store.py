"""The service's database: one row per received study (its job: status, route, model, score, where
its results are) and an append-only audit log (who did what to which study, when, with which
model version). A SQLite file by default, any SQLAlchemy URL (PostgreSQL) otherwise."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    DDL,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    case,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from medsight.core.errors import ConfigError

__all__ = ["AuditEvent", "Delivery", "Job", "Pulled", "Setting", "Store", "as_utc", "utcnow"]

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "no_route", "failed")


def utcnow() -> datetime:
    """Now, in UTC (what every time in the database is)."""
    return datetime.now(timezone.utc)


class _Base(DeclarativeBase):
    pass


class Job(_Base):
    """One received study and what became of it."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    accession: Mapped[str] = mapped_column(String(64), default="")
    modalities: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(128), default="")
    study_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # http, dicom or orthanc
    submitted_by: Mapped[str] = mapped_column(String(64))
    instances: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    route: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    outputs: Mapped[str] = mapped_column(Text, default="[]")  # JSON: the SOP Instance UIDs we wrote
    worker: Mapped[str | None] = mapped_column(String(96), nullable=True)  # the instance running it
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def as_dict(self) -> dict[str, Any]:
        """The job as the API returns it."""
        times = ("study_time", "received_at", "started_at", "finished_at")
        row = {c.name: getattr(self, c.name) for c in self.__table__.columns if c.name != "outputs"}
        row.update({t: _iso(row[t]) for t in times})
        row["outputs"] = json.loads(self.outputs or "[]")
        return row


class Delivery(_Base):
    """A job's results to be sent to one destination: pending (with the time of its next try),
    sent, or dead (every try failed; kept until retried by hand)."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending, sent, dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def as_dict(self) -> dict[str, Any]:
        """The delivery as the API returns it."""
        row = {c.name: getattr(self, c.name) for c in self.__table__.columns}
        row.update(next_at=_iso(self.next_at), sent_at=_iso(self.sent_at))
        return row


class AuditEvent(_Base):
    """One line of the audit log. Rows are only ever added (the database refuses changes where it can)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32), index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    study_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")

    def as_dict(self) -> dict[str, Any]:
        """The event as the API returns it."""
        row = {c.name: getattr(self, c.name) for c in self.__table__.columns}
        row["at"] = _iso(self.at)
        row["detail"] = json.loads(self.detail or "{}")
        return row


class Setting(_Base):
    """A value the service keeps between runs (e.g. how far it read Orthanc's changes)."""

    __tablename__ = "state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Pulled(_Base):
    """An instance the service pulled from an edge (Orthanc), or saw there and left as its own
    result: never pulled again, whatever its study does later."""

    __tablename__ = "pulled"

    sop_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


def as_utc(value: datetime) -> datetime:
    """A time from the database, aware (SQLite hands back naive datetimes; they were stored in UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat()


# The audit log is append-only in the database itself, not only in this code.
for _verb in ("UPDATE", "DELETE"):
    event.listen(
        AuditEvent.__table__,
        "after_create",
        DDL(
            f"CREATE TRIGGER audit_no_{_verb.lower()} BEFORE {_verb} ON audit "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
        ).execute_if(dialect="sqlite"),
    )
for _statement in (
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$ BEGIN "
    "RAISE EXCEPTION 'the audit log is append-only'; END; $$ LANGUAGE plpgsql",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
):
    event.listen(AuditEvent.__table__, "after_create", DDL(_statement).execute_if(dialect="postgresql"))


class Store:
    """The jobs and the audit log in one database (tables made on first use)."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"database {url!r} is not a SQLAlchemy URL (e.g. sqlite:////var/lib/medsight/service.db, "
                              "postgresql+psycopg://user:password@host/db)") from exc  # fmt: skip
        shown = parsed.render_as_string(hide_password=True)
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
        try:
            self.engine = create_engine(parsed, **options)
            _Base.metadata.create_all(self.engine)
        except ImportError as exc:
            raise ConfigError(f"the database {shown} needs its Python driver ({exc.name} is missing): e.g. "
                              "pip install 'psycopg[binary]' for postgresql+psycopg://") from exc  # fmt: skip
        except SQLAlchemyError as exc:
            raise ConfigError(f"cannot open the service database {shown}: {str(exc).splitlines()[0]}; "
                              "check database (a SQLAlchemy URL) and storage in serve.yaml") from exc  # fmt: skip
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since a database was made (``create_all`` makes only missing tables)."""
        from sqlalchemy import inspect, text

        present = {c["name"] for c in inspect(self.engine).get_columns("jobs")}
        added = {"worker": "VARCHAR(96)", "heartbeat_at": "TIMESTAMP WITH TIME ZONE"
                 if self.engine.dialect.name == "postgresql" else "DATETIME"}  # fmt: skip
        with self.engine.begin() as connection:
            for name, kind in added.items():
                if name not in present:
                    connection.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} {kind}"))
                    log.info("database: added the column jobs.%s", name)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def add_job(self, job: Job, *, actor: str, detail: dict[str, Any], state: dict[str, str] | None = None,
                pulled: Sequence[str] = ()) -> None:  # fmt: skip
        """Record a received study as queued, with its audit line, in one transaction; with it, set
        ``state`` and mark the ``pulled`` instances (an edge's progress moves with its jobs)."""
        with self.session() as s:
            s.add(job)
            s.add(_event(actor, "received", job, detail))
            s.add_all(Pulled(sop_uid=uid, job_id=job.id) for uid in pulled)
            for key, value in (state or {}).items():
                s.merge(Setting(key=key, value=value))

    def state(self, key: str) -> str | None:
        """A value kept between runs (None when never set)."""
        with self.session() as s:
            found = s.get(Setting, key)
            return None if found is None else found.value

    def set_state(self, key: str, value: str, *, pulled: Sequence[str] = ()) -> None:
        """Keep a value between runs; with it, mark ``pulled`` instances seen (no job)."""
        with self.session() as s:
            s.merge(Setting(key=key, value=value))
            s.add_all(Pulled(sop_uid=uid, job_id=None) for uid in pulled)

    def pulled(self, sop_uids: Sequence[str]) -> set[str]:
        """Which of these instances were pulled (or seen) before."""
        found: set[str] = set()
        with self.session() as s:
            for start in range(0, len(sop_uids), 500):
                chunk = list(sop_uids[start : start + 500])
                found.update(s.scalars(select(Pulled.sop_uid).where(Pulled.sop_uid.in_(chunk))))
        return found

    def audit(self, actor: str, action: str, job: Job | None = None, **detail: Any) -> None:
        """Append one line to the audit log."""
        with self.session() as s:
            s.add(_event(actor, action, job, detail))

    def job(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        with self.session() as s:
            return s.get(Job, job_id)

    def jobs(self, statuses: Sequence[str] = (), limit: int = 200, offset: int = 0) -> list[Job]:
        """Jobs newest first (of the given statuses), ``limit`` of them from ``offset``."""
        query = select(Job).order_by(Job.received_at.desc()).offset(offset).limit(limit)
        if statuses:
            query = query.where(Job.status.in_(statuses))
        with self.session() as s:
            return list(s.scalars(query))

    def worklist(self, limit: int = 500, offset: int = 0) -> list[Job]:
        """Every study: flagged ones first, highest score first; then the others in the order they arrived."""
        flagged_score = case((Job.flagged.is_(True), Job.score), else_=None)  # the others' scores do not reorder them
        query = (
            select(Job)
            .order_by(Job.flagged.desc(), flagged_score.desc().nulls_last(), Job.received_at.asc())
            .offset(offset)
            .limit(limit)
        )
        with self.session() as s:
            return list(s.scalars(query))

    def claim(self, worker: str | None = None) -> Job | None:
        """The oldest queued job, now marked running by ``worker`` (None when there is none)."""
        with self.session() as s:
            for job_id in s.scalars(select(Job.id).where(Job.status == "queued").order_by(Job.received_at).limit(5)):
                now = utcnow()
                claimed = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                                    .values(status="running", started_at=now, worker=worker,
                                            heartbeat_at=now))  # fmt: skip
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    return s.get(Job, job_id)
        return None

    def finish(self, job_id: str, *, action: str, send_to: Sequence[str] = (), **values: Any) -> Job:
        """Set a job's final fields, add its audit line and its deliveries (to ``send_to``) in one
        transaction."""
        with self.session() as s:
            for destination in send_to:
                s.add(Delivery(job_id=job_id, destination=destination, status="pending", attempts=0,
                               next_at=utcnow()))  # fmt: skip
            job = _get(s, Job, job_id)
            for key, value in values.items():
                setattr(job, key, value)
            job.finished_at = utcnow()
            detail = {"status": job.status, "note": job.note, "outputs": json.loads(job.outputs or "[]")}
            if job.started_at is not None:
                detail["seconds"] = round((job.finished_at - as_utc(job.started_at)).total_seconds(), 3)
            s.add(_event("medsight", action, job, detail))
            return job

    def due(self, limit: int = 20, *, destination: str | None = None,
            other_than: Sequence[str] = ()) -> list[Delivery]:  # fmt: skip
        """Pending deliveries whose next try is due, oldest first (to ``destination`` alone; or to
        destinations other than those named)."""
        query = (select(Delivery).where(Delivery.status == "pending", Delivery.next_at <= utcnow())
                 .order_by(Delivery.next_at).limit(limit))  # fmt: skip
        if destination is not None:
            query = query.where(Delivery.destination == destination)
        if other_than:
            query = query.where(Delivery.destination.not_in(list(other_than)))
        with self.session() as s:
            return list(s.scalars(query))

    def deliveries(self, job_id: str | None = None, status: str | None = None, limit: int = 500) -> list[Delivery]:
        """Deliveries newest first (of one job, of one status)."""
        query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(Delivery.job_id == job_id)
        if status is not None:
            query = query.where(Delivery.status == status)
        with self.session() as s:
            return list(s.scalars(query))

    def delivered(self, delivery_id: int, *, actor: str = "medsight", **detail: Any) -> Delivery:
        """Mark a delivery sent, with its audit line."""
        with self.session() as s:
            delivery = _get(s, Delivery, delivery_id)
            delivery.status, delivery.sent_at, delivery.error = "sent", utcnow(), ""
            delivery.attempts += 1
            job = s.get(Job, delivery.job_id)
            s.add(_event(actor, "sent", job, {"destination": delivery.destination, "attempts": delivery.attempts,
                                              **detail}))  # fmt: skip
            return delivery

    def attempt_failed(self, delivery_id: int, error: str, *, max_attempts: int, retry_s: float) -> Delivery:
        """Count a failed try: pending again after a wait doubling with each try (at most an hour), or
        dead after ``max_attempts`` (audited as ``dead_letter``)."""
        with self.session() as s:
            delivery = _get(s, Delivery, delivery_id)
            delivery.attempts += 1
            delivery.error = error[:2000]
            if delivery.attempts >= max_attempts:
                delivery.status = "dead"
                job = s.get(Job, delivery.job_id)
                s.add(_event("medsight", "dead_letter", job, {"destination": delivery.destination,
                             "attempts": delivery.attempts, "error": delivery.error}))  # fmt: skip
            else:
                wait = min(retry_s * 2 ** (delivery.attempts - 1), 3600.0)
                delivery.next_at = utcnow() + timedelta(seconds=wait)
            return delivery

    def rearm(self, delivery_id: int, actor: str) -> Delivery:
        """Send a dead (or pending) delivery again now, its tries counted afresh.

        Raises:
            KeyError: no such delivery.
            ValueError: it was sent already.
        """
        with self.session() as s:
            delivery = _get(s, Delivery, delivery_id)
            if delivery.status == "sent":
                raise ValueError(f"delivery {delivery_id} was sent already")
            delivery.status, delivery.attempts, delivery.next_at = "pending", 0, utcnow()
            job = s.get(Job, delivery.job_id)
            s.add(_event(actor, "retry", job, {"destination": delivery.destination, "delivery": delivery_id}))
            return delivery

    def requeue(self, job_id: str) -> bool:
        """Put a job that a stopped service left running back in the queue; whether it still was
        running (another instance may have requeued or finished it meanwhile)."""
        with self.session() as s:
            done = s.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                             .values(status="queued", started_at=None, worker=None, heartbeat_at=None))  # fmt: skip
            return done.rowcount == 1  # type: ignore[attr-defined]

    def beat(self, worker: str) -> None:
        """Mark the jobs ``worker`` is running as still in hand (its lease renewed)."""
        with self.session() as s:
            s.execute(update(Job).where(Job.status == "running", Job.worker == worker).values(heartbeat_at=utcnow()))

    def our_outputs(self) -> set[str]:
        """The SOP Instance UIDs of every object the service wrote (the loop guard)."""
        with self.session() as s:
            return {uid for outputs in s.scalars(select(Job.outputs)) for uid in json.loads(outputs or "[]")}

    def events(self, job_id: str | None = None, limit: int = 500) -> list[AuditEvent]:
        """The audit log, newest first (of one job)."""
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(AuditEvent.job_id == job_id)
        with self.session() as s:
            return list(s.scalars(query))

    def delivery_counts(self) -> dict[str, int]:
        """How many deliveries are in each status (pending, sent, dead)."""
        return self._count_by(Delivery.status, ("pending", "sent", "dead"))

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        return self._count_by(Job.status, STATUSES)

    def _count_by(self, status: Any, statuses: Sequence[str]) -> dict[str, int]:
        with self.session() as s:
            found = dict(s.execute(select(status, func.count()).group_by(status)).all())
        return {name: int(found.get(name, 0)) for name in statuses}

    def job_ids(self) -> set[str]:
        """The id of every job."""
        with self.session() as s:
            return set(s.scalars(select(Job.id)))


def _get(session: Session, model: Any, key: Any) -> Any:
    """The row ``key`` of ``model``.

    Raises:
        KeyError: there is none.
    """
    found = session.get(model, key)
    if found is None:
        raise KeyError(key)
    return found


def _event(actor: str, action: str, job: Job | None, detail: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        at=utcnow(),
        actor=actor,
        action=action,
        job_id=job.id if job else None,
        study_uid=job.study_uid if job else None,
        model=job.model if job else None,
        model_version=job.model_version if job else None,
        detail=json.dumps(detail, default=str),
    )
