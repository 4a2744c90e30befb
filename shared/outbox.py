"""The transactional outbox: an event row written in the same transaction as the change it
announces, and the relay that publishes unsent rows in order, with confirms."""
from __future__ import annotations

import json
import logging
import threading

from sqlalchemy import (BigInteger, Column, Index, Integer, MetaData, String, Table, Text, bindparam,
                        func, select, text, update)
from sqlalchemy.orm import Session

from . import metrics
from .db import Database, DriverStatement, UtcDateTime, after_commit, defer_insert
from .events import make_envelope, utcnow

log = logging.getLogger("linkshop.outbox")

# Set when this process commits outbox rows; the worker's relay waits on it between rounds.
relay_wanted = threading.Event()


class Outbox:
    COLUMNS = ("event_id", "type", "body", "created_at")

    def __init__(self, metadata: MetaData, producer: str):
        self.producer = producer
        self.table = Table(
            "outbox", metadata,
            Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
            Column("event_id", String(36), nullable=False, unique=True),
            Column("type", String(80), nullable=False),
            Column("body", Text, nullable=False),
            Column("created_at", UtcDateTime(), nullable=False),
            Column("sent_at", UtcDateTime(), nullable=True),
        )
        Index("ix_outbox_unsent", self.table.c.id,
              postgresql_where=self.table.c.sent_at.is_(None),
              sqlite_where=self.table.c.sent_at.is_(None))

    def add(self, session: Session, type_: str, payload: dict, correlation_id: str | None = None) -> dict:
        """Insert the event at the commit of ``session``'s transaction; returns its envelope."""
        return self.add_row(session, self.row(type_, payload, correlation_id))

    def add_row(self, session: Session, row: dict) -> dict:
        """``add`` for a row built beforehand with ``row``."""
        defer_insert(session, self.table, {c: row[c] for c in self.COLUMNS})
        self.written(session)
        return row["envelope"]

    def written(self, session: Session) -> None:
        """Outbox rows are part of this transaction (``add`` calls it; so must a caller that
        inserts rows itself)."""
        if not session.info.get("outbox_wakes"):
            # A worker's consumer wakes its own relay as soon as it commits: an event that
            # answers another (risk's decision) leaves at once, not at the next polling round.
            # (A NOTIFY from the APIs was tried too: it woke the relay for every order and cost
            # 2 ms of CPU per order at load in smaller batches; the APIs' events wait for the poll.)
            session.info["outbox_wakes"] = True
            after_commit(session, relay_wanted.set)

    def row(self, type_: str, payload: dict, correlation_id: str | None = None) -> dict:
        """The outbox row of an event (and, under ``envelope``, the event itself; not a
        column). ``add`` inserts it at the commit; a hot path may instead insert it in its own
        statement (``inline_values``), which must run in the same transaction as the change."""
        envelope = make_envelope(type_, payload, producer=self.producer, correlation_id=correlation_id)
        return {"event_id": envelope["id"], "type": type_, "body": json.dumps(envelope, separators=(",", ":")),
                "created_at": utcnow(), "envelope": envelope}

    def inline_values(self, count: int, prefix: str = "outbox") -> tuple[str, list]:
        """``INSERT INTO outbox ... SELECT ... FROM (VALUES ...)`` for ``count`` rows, to embed
        in a caller's statement (PostgreSQL ``WITH``), and its typed bind parameters; fill
        them with ``inline_params``. The caller may append a ``WHERE`` to the SELECT."""
        columns = list(self.COLUMNS)
        values = ", ".join("(" + ", ".join(f":{prefix}{i}_{c}" for c in columns) + ")" for i in range(count))
        sql = (f"INSERT INTO {self.table.name} ({', '.join(columns)}) "
               f"SELECT * FROM (VALUES {values}) AS announced ({', '.join(columns)})")
        return sql, [bindparam(f"{prefix}{i}_{c}", type_=self.table.c[c].type) for i in range(count) for c in columns]

    def inline_params(self, rows: list[dict], prefix: str = "outbox") -> dict:
        return {f"{prefix}{i}_{c}": row[c] for i, row in enumerate(rows) for c in self.COLUMNS}

    def prune(self, session: Session, sent_before, limit: int = 5000) -> int:
        """Delete up to ``limit`` rows sent before ``sent_before``, oldest first (walking the
        primary key from the start: the sent rows are the old ones, so no index on sent_at)."""
        table = self.table
        oldest = select(table.c.id).where(table.c.sent_at < sent_before).order_by(table.c.id).limit(limit)
        return session.execute(table.delete().where(table.c.id.in_(oldest.scalar_subquery()))).rowcount

    def pending_count(self, session: Session) -> int:
        return session.scalar(select(func.count()).select_from(self.table).where(self.table.c.sent_at.is_(None)))


_ASYNC_COMMIT = DriverStatement(text("SET LOCAL synchronous_commit = off"))


class Relay:
    """Publishes unsent outbox rows oldest first and marks them sent after the broker confirms.

    A crash between publish and mark re-sends on restart; consumers dedupe by event id.
    Several relays may run (one per worker replica): ``SKIP LOCKED`` gives each its own rows.
    """

    def __init__(self, db: Database, outbox: Outbox, bus, batch: int = 500):
        self.db = db
        self.outbox = outbox
        self.bus = bus
        self.batch = batch
        table = outbox.table
        # Built once (a statement made anew each round costs its cache-key walk every time).
        # SQLite compiles FOR UPDATE away: its one writer needs no row locks.
        self._unsent = DriverStatement(
            select(table.c.id, table.c.event_id, table.c.type, table.c.body).where(table.c.sent_at.is_(None))
            .order_by(table.c.id).limit(bindparam("batch")).with_for_update(skip_locked=True))
        if db.is_sqlite:
            self._mark_sent = DriverStatement(update(table).where(table.c.id.in_(bindparam("ids", expanding=True)))
                                              .values(sent_at=bindparam("now")))
        else:
            self._mark_sent = DriverStatement(text(f"UPDATE {table.name} SET sent_at = :now WHERE id = ANY(:ids)")
                                              .bindparams(bindparam("now", type_=table.c.sent_at.type)))

    def run_once(self) -> int:
        with self.db.write() as session:
            rows = self._unsent.execute(session, {"batch": self.batch}).all()
            if not rows:
                return 0
            if not self.db.is_sqlite:
                # Marking rows sent need not wait for the disk: if a crash loses that commit the
                # rows are sent again, and consumers drop the duplicates. The fsync it saves
                # is one fewer in the queue in front of every payment's commit.
                _ASYNC_COMMIT.execute(session, {})
            # The stored body is the event as published: no parsing and writing it again.
            self.bus.publish_serialized([(row.event_id, row.type, row.body.encode()) for row in rows])
            self._mark_sent.execute(session, {"ids": [row.id for row in rows], "now": utcnow()})
        for row in rows:
            metrics.events_published.labels(self.outbox.producer, row.type).inc()
        return len(rows)

    def refresh_gauge(self) -> None:
        with self.db.read() as session:
            metrics.outbox_pending.labels(self.outbox.producer).set(self.outbox.pending_count(session))
