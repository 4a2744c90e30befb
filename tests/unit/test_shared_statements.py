"""shared.db's statement helpers on both backends: a DriverStatement run on a session sees the
ORM objects the session has not flushed yet (it flushes them itself, as an ORM query would),
and ``run`` compiles a statement once and keeps it in the kernel."""
from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy import Integer, String, bindparam, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared import db as kernel
from shared.db import Database, DriverStatement, run
from tests.kit.backends import PG_URL, postgres_unreachable, require_server


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


COUNT = select(func.count()).select_from(Item.__table__).where(Item.__table__.c.name == bindparam("name"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'statements.db'}", Base.metadata)
        database.create_all()
        yield database
        database.dispose()
        return
    require_server("tests.unit: ", postgres_unreachable(), "PostgreSQL")
    admin = make_url(PG_URL + "/postgres")
    name = f"ls_statements_{uuid.uuid4().hex[:10]}"
    conninfo = dict(host=admin.host, port=admin.port or 5432, user=admin.username, dbname="postgres",
                    autocommit=True)
    with psycopg.connect(**conninfo) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = Database(f"{PG_URL}/{name}", Base.metadata)
    database.create_all()
    try:
        yield database
    finally:
        database.dispose()
        with psycopg.connect(**conninfo) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_driver_statement_sees_what_the_session_has_not_flushed(db):
    count = DriverStatement(COUNT)
    with db.write() as s:
        s.add(Item(name="new"))  # pending: not flushed by hand
        assert count.execute(s, {"name": "new"}).scalar() == 1
    with db.read() as s:
        assert count.execute(s, {"name": "new"}).scalar() == 1


def test_run_compiles_a_statement_once_and_flushes_too(db):
    with db.write() as s:
        s.add(Item(name="run"))
        assert run(s, COUNT, {"name": "run"}).scalar() == 1
        cached = kernel._driven[COUNT]
        s.add(Item(name="run"))
        assert run(s, COUNT, {"name": "run"}).scalar() == 2
        assert kernel._driven[COUNT] is cached
