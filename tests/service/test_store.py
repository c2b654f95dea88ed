"""The jobs and the audit log, on SQLite and on a real PostgreSQL: the worklist's order hides no
study, the audit log refuses changes in the database itself, a job is claimed by one worker only,
and a bad database URL is named with the fix."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

pytest.importorskip("sqlalchemy", reason="the serve extra is not installed (pip install 'medsight[serve]')")

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from medsight.core.errors import ConfigError
from medsight.service.store import Job, Store, utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Store:
    """An empty store on each database."""
    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    made = Store(request.getfixturevalue("postgres_url"))
    with made.engine.begin() as db:  # one server for the session: each test starts from empty tables
        db.execute(text("ALTER TABLE audit DISABLE TRIGGER USER"))
        db.execute(text("DELETE FROM audit"))
        db.execute(text("ALTER TABLE audit ENABLE TRIGGER USER"))
        db.execute(text("DELETE FROM jobs"))
    return made


def _job(name: str, i: int, **values) -> Job:
    fields = {"study_uid": f"1.2.{i}", "source": "http", "submitted_by": "t", "instances": 1, "status": "done",
              "received_at": utcnow() + timedelta(seconds=i), "flagged": False, **values}  # fmt: skip
    return Job(id=name, **fields)


def test_the_worklist_puts_flagged_studies_first_and_hides_none(store):
    rows = [("old-plain", False, None), ("flag-low", True, 0.6), ("new-plain", False, 0.9), ("flag-high", True, 0.95),
            ("failed", False, None)]  # fmt: skip
    for i, (name, flagged, score) in enumerate(rows):
        store.add_job(_job(name, i, flagged=flagged, score=score), actor="t", detail={})
    assert [j.id for j in store.worklist()] == ["flag-high", "flag-low", "old-plain", "new-plain", "failed"]
    assert [j.id for j in store.worklist(limit=2, offset=3)] == ["new-plain", "failed"]  # every one reachable
    assert store.counts()["done"] == 5 and store.counts()["queued"] == 0


def test_the_audit_log_is_append_only(store):
    store.audit("alice", "viewed", None, note="a line")
    for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as db:
            db.execute(text(statement))
    if store.engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as db:
            db.execute(text("TRUNCATE audit"))
    store.audit("bob", "viewed", None)
    assert [e.actor for e in store.events()] == ["bob", "alice"]
    assert store.events()[1].as_dict()["detail"] == {"note": "a line"}


def test_a_queued_job_is_claimed_by_one_worker_and_finished_with_its_audit_line(store):
    for i in range(6):
        store.add_job(_job(f"job{i}", i, status="queued"), actor="alice", detail={"instances": 1})
    claimed: list[str] = []

    def worker() -> None:
        while (job := store.claim()) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == [f"job{i}" for i in range(6)]  # each once
    finished = store.finish("job0", action="processed", status="done", outputs='["1.2.3"]', score=0.5)
    assert finished.status == "done" and store.job("job0").score == 0.5
    (line,) = [e for e in store.events("job0") if e.action == "processed"]
    assert line.detail and line.as_dict()["detail"]["outputs"] == ["1.2.3"] and line.as_dict()["detail"]["seconds"] >= 0
    store.requeue("job1")
    assert store.job("job1").status == "queued" and store.our_outputs() == {"1.2.3"}


def test_bad_database_urls_are_named_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        Store("not a url")
    with pytest.raises(ConfigError, match=r"cannot open the service database postgresql\+psycopg://me:\*\*\*@"):
        Store("postgresql+psycopg://me:secret@127.0.0.1:1/x?connect_timeout=2")  # the password never shown
    with pytest.raises(ConfigError, match="Can't load plugin"):
        Store("postgresql+pg9000://me@localhost/x")
    try:
        import pymysql  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"needs its Python driver \(pymysql is missing\)"):
            Store("mysql+pymysql://me@localhost/x")


def test_a_lease_is_renewed_by_its_worker_and_a_database_made_before_leases_gains_them(store, tmp_path):
    store.add_job(_job("lease", 0, status="queued"), actor="alice", detail={})
    job = store.claim("host-a:123:abcd")
    assert job.worker == "host-a:123:abcd" and job.heartbeat_at is not None
    with store.session() as s:  # a long silence
        s.execute(text("UPDATE jobs SET heartbeat_at = :t"), {"t": utcnow() - timedelta(hours=1)})
    store.beat("host-a:123:abcd")
    assert (utcnow() - store.job(job.id).heartbeat_at.replace(tzinfo=utcnow().tzinfo)).total_seconds() < 60
    assert store.requeue(job.id) and not store.requeue(job.id)  # only a running job is queued again
    assert store.job(job.id).worker is None
    if store.engine.dialect.name == "sqlite":  # an older database: the columns are added on opening
        path = tmp_path / "old.db"
        Store(f"sqlite:///{path}")
        import sqlite3

        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE jobs DROP COLUMN worker")
            db.execute("ALTER TABLE jobs DROP COLUMN heartbeat_at")
        reopened = Store(f"sqlite:///{path}")
        reopened.add_job(_job("old", 1, status="queued"), actor="alice", detail={})
        assert reopened.claim("me:1:x").worker == "me:1:x"
