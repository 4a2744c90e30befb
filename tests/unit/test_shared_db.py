"""shared.db: SQLite write transactions begin IMMEDIATE so concurrent read-then-write never
loses an update; reads do not block on writers (WAL); UtcDateTime is always aware."""
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text, update
from sqlalchemy.exc import StatementError

from shared.db import Database, UtcDateTime, is_postgres

metadata = MetaData()
counters = Table("counters", metadata, Column("id", Integer, primary_key=True),
                 Column("n", Integer, nullable=False))
stamps = Table("stamps", metadata, Column("id", Integer, primary_key=True),
               Column("at", UtcDateTime(), nullable=True))


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'kernel.db'}", metadata)
    database.create_all()
    with database.write() as s:
        s.execute(insert(counters).values(id=1, n=0))
    yield database
    database.dispose()


def counter(db) -> int:
    with db.read() as s:
        return s.scalar(select(counters.c.n).where(counters.c.id == 1))


def test_concurrent_read_then_increment_never_loses_an_update(db):
    threads, rounds = 4, 25
    barrier = threading.Barrier(threads)
    errors = []

    def work():
        try:
            barrier.wait()
            for _ in range(rounds):
                with db.write() as s:
                    n = s.scalar(select(counters.c.n).where(counters.c.id == 1))
                    time.sleep(0.0005)  # widen the window between the read and the write
                    s.execute(update(counters).where(counters.c.id == 1).values(n=n + 1))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert errors == []
    assert counter(db) == threads * rounds


def test_write_commits_on_success_and_rolls_back_on_error(db):
    with db.write() as s:
        s.execute(update(counters).values(n=5))
    with pytest.raises(ZeroDivisionError):
        with db.write() as s:
            s.execute(update(counters).values(n=99))
            1 / 0
    assert counter(db) == 5


def test_read_sessions_never_commit(db):
    with db.read() as s:
        s.execute(update(counters).values(n=42))
    assert counter(db) == 0


def test_sqlite_runs_in_wal_and_readers_do_not_wait_for_a_writer(db):
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with db.write() as w:
        w.execute(update(counters).values(n=7))  # uncommitted, holding the write lock
        started = time.monotonic()
        assert counter(db) == 0  # the committed value, read without blocking
        assert time.monotonic() - started < 1
    assert counter(db) == 7


def test_utc_datetime_is_aware_utc_on_sqlite(db):
    shanghai = timezone(timedelta(hours=8))
    local = datetime(2024, 5, 1, 18, 30, 15, 123456, tzinfo=shanghai)
    with db.write() as s:
        s.execute(insert(stamps).values(id=1, at=local))
        s.execute(insert(stamps).values(id=2, at=None))
    with db.read() as s:
        got = s.scalar(select(stamps.c.at).where(stamps.c.id == 1))
        assert s.scalar(select(stamps.c.at).where(stamps.c.id == 2)) is None
        assert not is_postgres(s)
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)
    assert got == local  # the same instant
    assert got == datetime(2024, 5, 1, 10, 30, 15, 123456, tzinfo=timezone.utc)


def test_utc_datetime_refuses_naive_values(db):
    with pytest.raises(StatementError) as info:
        with db.write() as s:
            s.execute(insert(stamps).values(id=3, at=datetime(2024, 5, 1, 10, 0)))
    assert isinstance(info.value.orig, ValueError)


def test_ping(db, tmp_path):
    assert db.ping()
    broken = Database(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", MetaData())
    assert not broken.ping()
