"""Where a test's embedded system keeps its data: the backend.

- ``SQLiteBackend``: embedded mode as ``make run`` runs it, one SQLite file per service in
  the test's own directory, tables created from the models.
- ``PostgresBackend``: what production runs. Once per test session ``PostgresCluster`` makes
  one throwaway database per service (``lsut_<pid>_<token>_<svc>``, migrated to head with the
  services' own migrations, dropped at the end) and keeps one connection to each. A test's
  services are bound to those connections (``Database.bind_for_tests``) inside a transaction
  the test begins and rolls back at its end (Warehouse's pattern: every session in a
  SAVEPOINT), so nothing a test writes outlives it. A test marked ``commits`` (threads, each
  on its own connection) is not bound: it commits for real, and its end truncates every
  service table.

A backend's data is named by the directory it is given (``LINKSHOP_VAR_DIR``): on SQLite the
files there, on PostgreSQL the state of the one transaction per service. Two systems built
on the same directory share their data (a restart); a system on a new directory starts
empty, and on PostgreSQL it ends the previous directory's state (one at a time: a database
bound to an ended state says "This Connection is closed"). A test that needs two at once
opens the second in another slot (``open_database(service, var_dir, slot=1)``: databases of
their own, made at their first use).
"""
from __future__ import annotations

import importlib
import os
import secrets

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from shared.config import SERVICES, load_settings

from .helpers import embedded_env

PG_URL = os.environ.get("LINKSHOP_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432").rstrip("/")
DB_PREFIX = "lsut_"


class SQLiteBackend:
    name = "sqlite"

    def __init__(self):
        self._opened: list = []  # every Database built here, disposed by close()

    def env(self, var_dir, **extra: str) -> dict[str, str]:
        """An embedded-mode environment whose services keep their data in ``var_dir``."""
        return embedded_env(var_dir, **extra)

    def build(self, env: dict):
        """``build_embedded`` on this backend; ``env["LINKSHOP_VAR_DIR"]`` names the data."""
        from services.embedded import build_embedded
        system = build_embedded(env, migrate=False)
        self._opened += [app.extensions["linkshop"].db for app in system.apps.values()]
        return system

    def open_database(self, service: str, var_dir, slot: int = 0):
        """One service's ``Database`` with its tables, alone (domain-level tests). ``slot``
        matters on PostgreSQL only (here each directory has files of its own)."""
        db = _open(service, embedded_env(var_dir))
        db.create_all()
        self._opened.append(db)
        return db

    def empty_database(self, var_dir, name: str) -> str:
        """The URL of a database with no tables yet (a migration test's), gone after the test."""
        return f"sqlite:///{var_dir / name}.db"

    def close(self) -> None:
        for db in self._opened:
            db.dispose()
        self._opened.clear()


def sqlite_backend() -> SQLiteBackend:
    """The SQLite backend, for a shop built without the ``backend`` fixture."""
    return SQLiteBackend()


class PostgresBackend:
    name = "postgresql"

    def __init__(self, cluster: "PostgresCluster", commits: bool = False):
        self.cluster, self.commits = cluster, commits
        self._states: dict[int, _State] = {}  # per slot: the directory whose data it holds
        self._opened: list = []
        self._empty: list[str] = []

    def env(self, var_dir, slot: int = 0, **extra: str) -> dict[str, str]:
        return embedded_env(var_dir, **{**self.cluster.env(slot), **extra})

    def build(self, env: dict, slot: int = 0):
        from services.embedded import build_embedded
        env = {**self.cluster.env(slot), **env}
        key = str(env["LINKSHOP_VAR_DIR"])
        return build_embedded(env, migrate=False, bind_database=lambda svc, db: self._bind(key, svc, db, slot))

    def open_database(self, service: str, var_dir, slot: int = 0):
        """``slot``: a database of its own beside slot 0's, for a test that needs two at once."""
        db = _open(service, self.env(var_dir, slot))
        self._bind(str(var_dir), service, db, slot)
        return db

    def empty_database(self, var_dir, name: str) -> str:
        """The URL of a database with no tables yet (a migration test's), dropped after the test."""
        url = self.cluster.create_database(f"x{len(self._empty)}_{name}")
        self._empty.append(url)
        return url

    def _bind(self, key: str, service: str, db, slot: int) -> None:
        self._opened.append(db)
        conn = self.cluster.connection(service, slot)  # made and migrated at its first use
        if self.commits:
            return
        state = self._states.get(slot)
        if state is None or state.key != key:
            self._end(slot)
            state = self._states[slot] = _State(key)
        if service not in state.transactions:
            state.transactions[service] = conn.begin()
            self.cluster.restart_sequences(conn)  # ids as a fresh database gives them (setval is not rolled back)
        db.bind_for_tests(conn)
        state.bound.append(db)

    def _end(self, slot: int) -> None:
        state = self._states.pop(slot, None)
        if state is None:
            return
        for db in state.bound:
            db.bind_for_tests(self.cluster.closed)  # a later use fails loudly, never commits for real
        try:
            for tx in state.transactions.values():
                if tx.is_active:
                    tx.rollback()
        except Exception:
            self.cluster.reconnect()
            raise

    def close(self) -> None:
        try:
            for slot in list(self._states):
                self._end(slot)
        finally:
            for db in self._opened:
                db.dispose()
            self._opened.clear()
            for url in self._empty:
                self.cluster.drop_database(url)
            self._empty.clear()
            if self.commits:
                self.cluster.truncate()


class _State:
    def __init__(self, key: str):
        self.key, self.transactions, self.bound = key, {}, []


class PostgresCluster:
    """Throwaway databases for a test session, migrated to head: one per service in slot 0
    (made at once), and in further slots each made at its first use."""

    def __init__(self, base_url: str = PG_URL):
        self.base_url = base_url
        self.prefix = f"{DB_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
        self._admin = create_engine(f"{base_url}/postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self._drop_stale()
        self._engines, self._connections, self._tables = {}, {}, {}  # by (service, slot)
        try:
            for svc in SERVICES:
                self.connection(svc, 0)
            self.closed = self._engines["catalog", 0].connect()
            self.closed.close()
        except BaseException:
            self.drop()
            raise

    def url(self, service: str, slot: int = 0) -> str:
        return f"{self.base_url}/{self.prefix}_{service}" + (f"_{slot}" if slot else "")

    def env(self, slot: int = 0) -> dict[str, str]:
        return {f"{svc.upper()}_DATABASE_URL": self.url(svc, slot) for svc in SERVICES}

    def create_database(self, name: str) -> str:
        url = f"{self.base_url}/{self.prefix}_{name}"
        with self._admin.connect() as admin:
            admin.execute(text(f'CREATE DATABASE "{make_url(url).database}"'))
        return url

    def drop_database(self, url: str) -> None:
        with self._admin.connect() as admin:
            admin.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))

    def connection(self, service: str, slot: int = 0):
        """The session's connection to a service's database in ``slot``."""
        key = (service, slot)
        conn = self._connections.get(key)
        if conn is None:
            from services.manage import upgrade
            url = self.create_database(f"{service}_{slot}" if slot else service)
            self._engines[key] = create_engine(url, poolclass=NullPool)
            upgrade(service, url)
            conn = self._connections[key] = self._engines[key].connect()
            self._tables[key] = conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename NOT LIKE 'alembic_version%' ORDER BY tablename")).scalars().all()
            conn.rollback()
        return conn

    def reconnect(self) -> None:
        for key, engine in self._engines.items():
            old = self._connections.get(key)
            if old is not None:
                try:
                    old.invalidate()
                    old.close()
                except Exception:
                    pass
            self._connections[key] = engine.connect()

    @staticmethod
    def restart_sequences(conn) -> None:
        conn.execute(text("SELECT setval(c.oid, 1, false) FROM pg_class c "
                          "JOIN pg_namespace n ON n.oid = c.relnamespace "
                          "WHERE c.relkind = 'S' AND n.nspname = 'public'"))

    def truncate(self) -> None:
        """Empties every service table (after a test that committed for real)."""
        for key, conn in self._connections.items():
            if self._tables[key]:
                try:
                    conn.execute(text("SET LOCAL lock_timeout = '10s'"))
                    conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in self._tables[key])
                                      + " RESTART IDENTITY CASCADE"))
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise

    def drop(self) -> None:
        for conn in self._connections.values():
            conn.close()
        for engine in self._engines.values():
            engine.dispose()
        for service, slot in self._engines:
            self.drop_database(self.url(service, slot))
        self._admin.dispose()

    def _drop_stale(self) -> None:
        """Databases of earlier sessions whose process is gone (killed before their teardown).
        Without FORCE: a database someone is connected to stays."""
        with self._admin.connect() as conn:
            names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                                 {"p": DB_PREFIX + "%"}).scalars().all()
            for name in names:
                pid = name[len(DB_PREFIX):].split("_", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    try:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                    except Exception:
                        pass


def postgres_unreachable(base_url: str = PG_URL) -> str | None:
    """Why PostgreSQL cannot be used (None: it can)."""
    import psycopg
    u = make_url(base_url + "/postgres")
    try:
        psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                        dbname="postgres", connect_timeout=3).close()
    except Exception as exc:
        return f"PostgreSQL is not reachable at {u.host}:{u.port or 5432} ({str(exc).strip().splitlines()[0]})"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open(service: str, env: dict):
    app = importlib.import_module(f"services.{service}.app")
    return app.open_database(load_settings(service, env))


def require_server(prefix: str, reason: str | None, what: str) -> None:
    """A test needing a server ``reason`` says is missing: skipped with that one line, or,
    under CI=true, failed (CI must have it)."""
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{prefix}{reason} (CI=true: {what} must be up)", pytrace=False)
        pytest.skip(f"{prefix}{reason}")


def fold_skip(report, prefix: str, path: str, line: int) -> None:
    """Every test skipped with ``prefix`` reports the same place, so `-ra` prints one line."""
    if report.skipped and isinstance(report.longrepr, tuple) and prefix in str(report.longrepr[2]):
        report.longrepr = (path, line, report.longrepr[2])
