"""shared.db.DriverStatement on real PostgreSQL: the hot paths' statements skip SQLAlchemy's
execution machinery, and must still behave as SQLAlchemy would — the session's transaction,
the column types' bind processing, SQLAlchemy's exceptions."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, bindparam, insert, select, text
from sqlalchemy.exc import IntegrityError

from shared.db import Database, DriverStatement, InsertIgnoringConflicts, UtcDateTime


@pytest.fixture
def probe(stack):
    metadata = MetaData()
    table = Table(f"it_driver_{uuid.uuid4().hex[:8]}", metadata,
                  Column("id", Integer, primary_key=True), Column("code", String(20), unique=True),
                  Column("at", UtcDateTime()), Column("doc", JSON))
    db = Database(stack.env["DELIVERY_DATABASE_URL"], metadata)
    metadata.create_all(db.engine)
    try:
        yield db, table
    finally:
        metadata.drop_all(db.engine)
        db.dispose()


def test_rows_types_and_the_sessions_transaction(probe):
    db, table = probe
    add = DriverStatement(insert(table).values(code=bindparam("code"), at=bindparam("at"), doc=bindparam("doc")))
    read = DriverStatement(select(table.c.code, table.c.at, table.c.doc.label("document"))
                           .where(table.c.code == bindparam("code")))
    at = datetime(2026, 11, 22, 8, 0, tzinfo=timezone.utc)
    with db.write() as s:
        assert add.execute(s, {"code": "a", "at": at, "doc": {"levels_bps": [500, 200]}}).rowcount == 1
        row = read.execute(s, {"code": "a"}).first()  # the same transaction sees its own write
        assert (row.code, row.at, row.document) == ("a", at, {"levels_bps": [500, 200]})
    with pytest.raises(RuntimeError), db.write() as s:
        add.execute(s, {"code": "b", "at": at, "doc": None})
        raise RuntimeError("roll back")
    with db.read() as s:
        assert read.execute(s, {"code": "b"}).first() is None
        assert s.scalar(select(table.c.doc).where(table.c.code == "a")) == {"levels_bps": [500, 200]}
    with pytest.raises(ValueError, match="naive"), db.write() as s:  # UtcDateTime's bind processing ran
        add.execute(s, {"code": "c", "at": datetime(2026, 11, 22), "doc": None})


def test_errors_are_sqlalchemys_and_the_connection_stays_usable(probe):
    db, table = probe
    add = DriverStatement(text(f"INSERT INTO {table.name} (code) VALUES (:code)"))
    with db.write() as s:
        add.execute(s, {"code": "same"})
    with pytest.raises(IntegrityError), db.write() as s:
        add.execute(s, {"code": "same"})
    # the unique key, not a look-up, decides; RETURNING gives only the new rows
    insert_new = InsertIgnoringConflicts(table, ["code"], key=["code"], returning=["code"])
    for _ in range(3):  # the failed transaction's connection was rolled back and serves again
        with db.write() as s:
            assert insert_new.execute(s.connection(), [{"code": "same"}, {"code": "new"}]).scalars() == ["new"]
            s.rollback()


def test_autocommit_statements_commit_alone_and_a_dropped_connection_is_replaced(probe):
    from sqlalchemy.exc import DBAPIError, NoResultFound
    db, table = probe
    add = DriverStatement(text(f"INSERT INTO {table.name} (code) VALUES (:code)"))
    backend = DriverStatement(text("SELECT pg_backend_pid()"))
    with db.autocommit() as conn:
        add.execute(conn, {"code": "alone"})
        pid = backend.execute(conn, {}).scalar()
    with db.read() as s:  # committed by itself, no COMMIT sent
        assert s.scalar(select(table.c.code).where(table.c.code == "alone")) == "alone"
    with db.autocommit() as conn:  # the thread keeps its connection
        assert backend.execute(conn, {}).one()[0] == pid
        with pytest.raises(NoResultFound):  # as SQLAlchemy's Result.one()
            DriverStatement(text(f"SELECT code FROM {table.name} WHERE code = 'none'")).execute(conn, {}).one()
    with db.write() as s:
        s.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(DBAPIError), db.autocommit() as conn:
        backend.execute(conn, {})
    with db.autocommit() as conn:
        assert backend.execute(conn, {}).scalar() not in (None, pid)
