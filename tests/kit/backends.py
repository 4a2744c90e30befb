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
bound to an ended state says "This Connection is closed").
"""
from __future__ import annotations

import importlib
import os
import secrets

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

    def open_database(self, service: str, var_dir):
        """One service's ``Database`` with its tables, alone (domain-level tests)."""
        db = _open(service, embedded_env(var_dir))
        db.create_all()
        self._opened.append(db)
        return db

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
        self._state = None  # the directory whose data the open transactions hold
        self._transactions: list = []
        self._bound: list = []
        self._opened: list = []

    def env(self, var_dir, **extra: str) -> dict[str, str]:
        return embedded_env(var_dir, **{**self.cluster.env(), **extra})

    def build(self, env: dict):
        from services.embedded import build_embedded
        env = {**self.cluster.env(), **env}
        state = str(env["LINKSHOP_VAR_DIR"])
        return build_embedded(env, migrate=False, bind_database=lambda svc, db: self._bind(state, svc, db))

    def open_database(self, service: str, var_dir):
        db = _open(service, self.env(var_dir))
        self._bind(str(var_dir), service, db)
        return db

    def _bind(self, state: str, service: str, db) -> None:
        self._opened.append(db)
        if self.commits:
            return
        if state != self._state:
            self._begin(state)
        db.bind_for_tests(self.cluster.connections[service])
        self._bound.append(db)

    def _begin(self, state: str) -> None:
        self._end()
        self._transactions = [conn.begin() for conn in self.cluster.connections.values()]
        self.cluster.restart_sequences()  # ids as a fresh database gives them (setval is not rolled back)
        self._state = state

    def _end(self) -> None:
        for db in self._bound:
            db.bind_for_tests(self.cluster.closed)  # a later use fails loudly, never commits for real
        self._bound.clear()
        try:
            for tx in self._transactions:
                if tx.is_active:
                    tx.rollback()
        except Exception:
            self.cluster.reconnect()
            raise
        finally:
            self._transactions, self._state = [], None

    def close(self) -> None:
        try:
            self._end()
        finally:
            for db in self._opened:
                db.dispose()
            self._opened.clear()
            if self.commits:
                self.cluster.truncate()


class PostgresCluster:
    """One throwaway database per service for a test session, migrated to head."""

    def __init__(self, base_url: str = PG_URL):
        from services.manage import upgrade

        self.base_url = base_url
        self.prefix = f"{DB_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
        self.urls = {svc: f"{base_url}/{self.prefix}_{svc}" for svc in SERVICES}
        self._admin = create_engine(f"{base_url}/postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self._drop_stale()
        self._engines, self.connections, self.tables = {}, {}, {}
        try:
            with self._admin.connect() as conn:
                for url in self.urls.values():
                    conn.execute(text(f'CREATE DATABASE "{make_url(url).database}"'))
            for svc, url in self.urls.items():
                upgrade(svc, url)
                self._engines[svc] = create_engine(url, poolclass=NullPool)
            self.reconnect()
            for svc, conn in self.connections.items():
                self.tables[svc] = conn.execute(text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename NOT LIKE 'alembic_version%' ORDER BY tablename")).scalars().all()
                conn.rollback()
        except BaseException:
            self.drop()
            raise
        self.closed = self._engines["catalog"].connect()
        self.closed.close()

    def env(self) -> dict[str, str]:
        return {f"{svc.upper()}_DATABASE_URL": url for svc, url in self.urls.items()}

    def reconnect(self) -> None:
        for svc, engine in self._engines.items():
            old = self.connections.get(svc)
            if old is not None:
                try:
                    old.invalidate()
                    old.close()
                except Exception:
                    pass
            self.connections[svc] = engine.connect()

    def restart_sequences(self) -> None:
        for conn in self.connections.values():
            conn.execute(text("SELECT setval(c.oid, 1, false) FROM pg_class c "
                              "JOIN pg_namespace n ON n.oid = c.relnamespace "
                              "WHERE c.relkind = 'S' AND n.nspname = 'public'"))

    def truncate(self) -> None:
        """Empties every service table (after a test that committed for real)."""
        for svc, conn in self.connections.items():
            if self.tables[svc]:
                try:
                    conn.execute(text("SET LOCAL lock_timeout = '10s'"))
                    conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in self.tables[svc])
                                      + " RESTART IDENTITY CASCADE"))
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise

    def drop(self) -> None:
        for conn in self.connections.values():
            conn.close()
        for engine in self._engines.values():
            engine.dispose()
        with self._admin.connect() as conn:
            for url in self.urls.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
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
