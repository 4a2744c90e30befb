"""One SQLAlchemy engine and session scope per service.

SQLite (embedded mode) runs in WAL with a busy timeout, and every write transaction starts
with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes can fail to
upgrade its lock or, worse, act on a stale read. PostgreSQL uses row locks instead.
"""
from __future__ import annotations

import threading
from collections import namedtuple
from contextlib import contextmanager
from typing import Iterator

from datetime import timezone

from sqlalchemy import DateTime, MetaData, TypeDecorator, bindparam, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool


class Database:
    def __init__(self, url: str, metadata: MetaData, *, pool_size: int = 10):
        self.url = url
        self.metadata = metadata
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        if self.is_sqlite:
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            _configure_sqlite(engine)
            write_engine = engine.execution_options(linkshop_write=True)
        else:
            # No pre-ping: it costs a round trip per transaction on the hot path. A connection
            # the server dropped fails one transaction and is then discarded by the pool.
            engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
            write_engine = engine
        self.engine = engine
        if self.is_sqlite:
            self._autocommit_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            # Not from the pool: each thread keeps its autocommit connection for good, and a
            # payment that must then decide under a lock takes a pooled one beside it. Taken
            # from one pool, 20 threads held all 20 connections and the 21st request waited
            # for the pool's timeout (a test with 20 callbacks at once found it).
            self._autocommit_engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self._local = threading.local()
        self._autocommit_conns: set = set()  # every thread's, for dispose()
        self._read = sessionmaker(bind=engine, expire_on_commit=False)
        self._write = sessionmaker(bind=write_engine, expire_on_commit=False)
        self._engine_sessions = (self._read, self._write)
        self._bound: Connection | None = None  # bind_for_tests

    def bind_for_tests(self, connection: Connection | None) -> None:
        """Tests only (tests/kit): ``write()``, ``read()`` and ``autocommit()`` all run on
        ``connection``, inside the transaction the test has begun on it, each in a SAVEPOINT
        (a session's commit releases its savepoint, a rollback goes back to it), so that the
        test's rollback undoes everything. One connection: no test with threads binds.
        ``None`` goes back to the engine."""
        self._bound = connection
        if connection is None:
            self._read, self._write = self._engine_sessions
        else:
            self._read = self._write = sessionmaker(bind=connection, expire_on_commit=False,
                                                    join_transaction_mode="create_savepoint")

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that may write; commits on success, rolls back on any error."""
        session = self._write()
        try:
            yield session
            _insert_deferred(session)
            session.commit()
            for callback in session.info.pop("after_commit", ()):
                callback()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        session = self._read()
        try:
            yield session
        finally:
            session.close()  # ends the transaction; loaded objects stay readable

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection on which every statement is its own transaction: a change made in one
        statement costs one round trip instead of three (BEGIN, the statement, COMMIT). For a
        hot path that has folded its reads, checks and writes into a single statement; anything
        that needs two statements to agree belongs in ``write``. (PostgreSQL: SQLite's callers
        take ``write``, its one writer needs BEGIN IMMEDIATE.)

        Each thread keeps its own such connection (checking one out of the pool and back in
        cost more CPU than the statement's own client work); a dropped one is invalidated by
        the statement that found it so and replaced at the next use."""
        if self._bound is not None:
            with self._autocommit_for_tests() as conn:
                yield conn
            return
        conn = getattr(self._local, "autocommit", None)
        if conn is None or conn.invalidated or conn.closed:
            if conn is not None:
                conn.close()
                self._autocommit_conns.discard(conn)
            conn = self._local.autocommit = self._autocommit_engine.connect()
            self._autocommit_conns.add(conn)
        try:
            yield conn
        except BaseException:
            # A statement cut short (not by the server) may leave the connection mid-protocol.
            if not conn.invalidated and conn.connection.dbapi_connection.info.transaction_status:
                conn.invalidate()
            raise

    @contextmanager
    def _autocommit_for_tests(self) -> Iterator[Connection]:
        """``autocommit()`` on a bound connection: what the block ran stays (as it would have
        committed), unless a statement failed: then the block's savepoint is rolled back, so
        that the test's transaction goes on, as the next autocommit statement would."""
        conn = self._bound
        savepoint = conn.begin_nested()
        try:
            yield conn
        except BaseException:
            failed = conn.connection.dbapi_connection.info.transaction_status == _IN_ERROR
            if savepoint.is_active:
                savepoint.rollback() if failed else savepoint.commit()
            raise
        else:
            savepoint.commit()

    def create_all(self) -> None:
        self.metadata.create_all(self.engine)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        for conn in list(self._autocommit_conns):  # at shutdown: no thread uses them any more
            conn.close()
        self._autocommit_conns.clear()
        if not self.is_sqlite:
            self._autocommit_engine.dispose()
        self.engine.dispose()


_IN_ERROR = 3  # psycopg.pq.TransactionStatus.INERROR: a statement failed in this transaction


def _configure_sqlite(engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Take transaction control away from pysqlite so that BEGIN is ours to issue.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        write = conn.get_execution_options().get("linkshop_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


_multi_row_inserts: dict = {}


def defer_insert(session: Session, table, row: dict) -> None:
    """Insert ``row`` just before the transaction commits, together with the others for the
    same table: one statement for all of a transaction's outbox events. Every row deferred
    for a table has the same keys."""
    session.info.setdefault("deferred_inserts", {}).setdefault(table, []).append(row)


def _insert_deferred(session: Session) -> None:
    deferred = session.info.pop("deferred_inserts", None)
    if deferred:
        conn = session.connection()  # Core, not Session.execute: no ORM work for plain rows
        for table, rows in deferred.items():
            writer = _multi_row_inserts.get(table)
            if writer is None:
                writer = _multi_row_inserts[table] = MultiRowInsert(table, list(rows[0]))
            writer.execute(conn, rows)


class DriverStatement:
    """A Core or ``text()`` statement run on the psycopg cursor under a session's connection
    (the same transaction), compiled once. On the few statements every order runs,
    SQLAlchemy's execution machinery cost more CPU than psycopg's own work (measured here:
    139 µs against 78 µs per statement), so they skip it. Bind values pass through the column
    types' bind processors as SQLAlchemy would pass them; errors come out as SQLAlchemy's
    (``IntegrityError`` ...), and a dropped connection is invalidated. Rows are named tuples
    when the statement names its columns, plain tuples otherwise. On SQLite (embedded mode)
    the statement runs through SQLAlchemy as usual."""

    def __init__(self, statement):
        self.statement = statement
        self._compiled = None
        # Named rows from a class made once (psycopg's namedtuple_row reads the description
        # of every result again), for statements that name their columns.
        names = [c.key for c in getattr(statement, "selected_columns", ())]
        self._row = namedtuple("Row", names, rename=True)._make if names else None

    def execute(self, target: Session | Connection, params: dict):
        """``target``: a Session (its pending ORM changes are flushed first, as its own
        queries would autoflush them, so the statement sees them) or a Connection."""
        if isinstance(target, Session):
            if target.autoflush:
                target.flush()  # cheap when nothing is pending
            conn = target.connection()
        else:
            conn = target
        dialect = conn.dialect
        if dialect.name != "postgresql":
            return conn.execute(self.statement, params)
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = self._compile(dialect)
        sql, construct, processors = compiled
        values = construct(params)
        for name, process in processors:
            values[name] = process(values[name])
        dbapi_conn = conn.connection.dbapi_connection
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(sql, values)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_conn, cursor):
                conn.invalidate(exc)
            raise DBAPIError.instance(sql, values, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
        return _DriverResult(cursor, self._row)

    def _compile(self, dialect):
        compiled = self.statement.compile(dialect=dialect)
        processors = []
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors.append((compiled.escaped_bind_names.get(name, name), process))
        return compiled.string, compiled.construct_params, processors


_driven: dict = {}


def run(target: Session | Connection, statement, params: dict):
    """Run a Core statement built once (a module-level constant) as a ``DriverStatement``,
    compiled on its first use and kept here: the caller keeps the plain Core statement. Keyed
    by the statement object itself, so pass the same object every time, never one built per
    call (that would fill this cache)."""
    driven = _driven.get(statement)
    if driven is None:
        driven = _driven[statement] = DriverStatement(statement)
    return driven.execute(target, params)


class _DriverResult:
    """The part of SQLAlchemy's ``Result`` the callers of ``DriverStatement`` use."""

    __slots__ = ("_cursor", "_row")

    def __init__(self, cursor, row):
        self._cursor, self._row = cursor, row

    def first(self):
        row = self._cursor.fetchone()  # (psycopg builds ``description`` anew on each read: not checked)
        return self._row(row) if row is not None and self._row is not None else row

    def scalar(self):
        row = self.first()
        return row[0] if row is not None else None

    def one(self):
        rows = self.all()
        if len(rows) != 1:
            raise NoResultFound("no row was found") if not rows else MultipleResultsFound("more than one row")
        return rows[0]

    def scalars(self) -> list:
        return [row[0] for row in self._cursor.fetchall()]

    def all(self) -> list:
        rows = self._cursor.fetchall()
        return [self._row(row) for row in rows] if self._row is not None else rows

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


class MultiRowInsert:
    """``INSERT INTO t (...) VALUES (...), (...)`` as text built once per row count.

    SQLAlchemy gives a multi-row ``insert().values([...])`` no cache key, so it would be
    compiled again on every call; and psycopg's pipelined ``executemany`` costs more than
    one statement for the handful of rows a transaction writes."""

    def __init__(self, table, columns: list[str], returning: list[str] | None = None, suffix: str = ""):
        """``suffix``: SQL after the VALUES list, e.g. an ``ON CONFLICT`` clause (the same
        text must be valid on PostgreSQL and SQLite)."""
        self.table, self.columns, self.returning, self.suffix = table, columns, returning or [], suffix
        self._by_rows: dict[int, DriverStatement] = {}

    def statement(self, rows: int) -> DriverStatement:
        stmt = self._by_rows.get(rows)
        if stmt is None:
            values = ", ".join("(" + ", ".join(f":{c}_{i}" for c in self.columns) + ")" for i in range(rows))
            sql = f"INSERT INTO {self.table.name} ({', '.join(self.columns)}) VALUES {values} {self.suffix}".rstrip()
            if self.returning:
                sql += f" RETURNING {', '.join(self.returning)}"
            clause = text(sql).bindparams(*[bindparam(f"{c}_{i}", type_=self.table.c[c].type)
                                            for i in range(rows) for c in self.columns])
            if self.returning:
                clause = clause.columns(*[self.table.c[c] for c in self.returning])
            stmt = self._by_rows[rows] = DriverStatement(clause)
        return stmt

    def execute(self, conn, rows: list[dict]):
        params = {f"{c}_{i}": row[c] for i, row in enumerate(rows) for c in self.columns}
        return self.statement(len(rows)).execute(conn, params)


class InsertIgnoringConflicts(MultiRowInsert):
    """``... ON CONFLICT (key) DO NOTHING RETURNING ...``, the same text on PostgreSQL and
    SQLite: the unique key, not a look-up before the insert, decides what is already there.
    ``execute`` returns the rows that were new. (SQLAlchemy's dialect ``on_conflict_do_nothing``
    constructs have no cache key either.)"""

    def __init__(self, table, columns: list[str], key: list[str], returning: list[str]):
        super().__init__(table, columns, returning, suffix=f" ON CONFLICT ({', '.join(key)}) DO NOTHING")


def after_commit(session: Session, callback) -> None:
    """Run ``callback`` once the write transaction commits (metrics, never money)."""
    session.info.setdefault("after_commit", []).append(callback)


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use shared.events.utcnow()")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value
