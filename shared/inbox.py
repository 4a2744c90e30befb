"""The inbox: a handler runs in one transaction with a row keyed by the event id, so a
redelivered or duplicated event is recognised by the unique key, not by a prior look-up."""
from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import Column, Index, MetaData, String, Table, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import metrics
from .db import Database, InsertIgnoringConflicts, UtcDateTime
from .events import event_age_seconds, utcnow

log = logging.getLogger("linkshop.inbox")

Handler = Callable[[Session, dict], None]


class NotReady(Exception):
    """The handler needs an event it has not seen yet: retry later, do not drop."""


class Handlers:
    """Handlers registered by event type: ``@handlers.on("delivery.order.delivered")``."""

    def __init__(self):
        self._by_type: dict[str, Handler] = {}

    def on(self, type_: str):
        def register(fn: Handler) -> Handler:
            self._by_type[type_] = fn
            return fn
        return register

    def get(self, type_: str) -> Handler | None:
        return self._by_type.get(type_)

    @property
    def types(self) -> list[str]:
        return sorted(self._by_type)


def inbox_table(metadata: MetaData) -> Table:
    return Table(
        "inbox", metadata,
        Column("event_id", String(36), primary_key=True),
        Column("type", String(80), nullable=False),
        Column("received_at", UtcDateTime(), nullable=False),
        Index("ix_inbox_received_at", "received_at"),
    )


def prune_inbox(session: Session, inbox: Table, received_before, limit: int = 5000) -> int:
    """Forget up to ``limit`` event ids received before ``received_before``. The retention
    must outlast any redelivery (retries take minutes, a relay re-sends after a crash within
    seconds), or a late duplicate would be applied again."""
    oldest = select(inbox.c.event_id).where(inbox.c.received_at < received_before) \
        .order_by(inbox.c.received_at).limit(limit)
    return session.execute(inbox.delete().where(inbox.c.event_id.in_(oldest.scalar_subquery()))).rowcount


class Consumer:
    """Applies envelopes exactly once: each with its inbox row in the same transaction.

    A batch shares one transaction, so one commit (one fsync) serves many events; a failing
    event is rolled back alone (in a second pass, a savepoint per event) and handed back for
    retry, the others commit. The bus acks only after the commit.
    """

    def __init__(self, service: str, db: Database, inbox: Table, handlers: Handlers):
        self.service = service
        self.db = db
        self.inbox = inbox
        self.handlers = handlers
        self._insert_new = InsertIgnoringConflicts(inbox, ["event_id", "type", "received_at"], ["event_id"],
                                                  ["event_id"])

    def handle(self, envelope: dict) -> str:
        result = self.handle_batch([envelope])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def handle_batch(self, envelopes: list[dict]) -> list:
        """One outcome per envelope: "processed", "duplicate", "ignored", or the exception.

        First try the whole batch the cheap way: one INSERT of all inbox rows (the unique event
        id sorts out duplicates), the handlers, one commit. Only if a handler fails is the
        batch rolled back and applied again event by event, each in a savepoint."""
        results = self._handle_optimistically(envelopes)
        if results is None:
            results = self._handle_isolated(envelopes)
        for envelope, result in zip(envelopes, results):
            self._count(envelope, result)
        return results

    def _handle_optimistically(self, envelopes: list[dict]) -> list | None:
        results: list = ["ignored"] * len(envelopes)
        first_of: dict[str, int] = {}
        for i, envelope in enumerate(envelopes):
            if self.handlers.get(envelope["type"]) is None:
                continue
            if envelope["id"] in first_of:
                results[i] = "duplicate"
            else:
                first_of[envelope["id"]] = i
        try:
            with self.db.write() as session:
                if first_of:
                    now = utcnow()
                    fresh = set(self._insert_new.execute(session.connection(), [
                        {"event_id": envelopes[i]["id"], "type": envelopes[i]["type"], "received_at": now}
                        for i in first_of.values()]).scalars())
                    for event_id, i in first_of.items():
                        if event_id not in fresh:
                            results[i] = "duplicate"
                            continue
                        self.handlers.get(envelopes[i]["type"])(session, envelopes[i])
                        results[i] = "processed"
        except Exception as exc:
            if len(first_of) == 1:  # nothing to isolate: this is the one that failed
                return [exc if i in first_of.values() else r for i, r in enumerate(results)]
            return None
        return results

    def _handle_isolated(self, envelopes: list[dict]) -> list:
        results: list = [None] * len(envelopes)
        try:
            with self.db.write() as session:
                for i, envelope in enumerate(envelopes):
                    results[i] = self._apply(session, envelope)
        except Exception as exc:  # the commit itself failed (a deadlock, the database went away)
            if len(envelopes) > 1:
                return [self._handle_isolated([envelope])[0] for envelope in envelopes]
            results = [exc]
        return results

    def _apply(self, session, envelope: dict):
        handler = self.handlers.get(envelope["type"])
        if handler is None:
            return "ignored"
        # What a failed handler queued for the commit (outbox rows, metrics) must go with it.
        deferred = {table: list(rows) for table, rows in session.info.get("deferred_inserts", {}).items()}
        callbacks = list(session.info.get("after_commit", ()))
        savepoint = session.begin_nested()
        try:
            try:
                with session.begin_nested():
                    session.execute(self.inbox.insert().values(
                        event_id=envelope["id"], type=envelope["type"], received_at=utcnow()))
            except IntegrityError:
                savepoint.commit()
                return "duplicate"
            handler(session, envelope)
            savepoint.commit()
            return "processed"
        except Exception as exc:
            savepoint.rollback()
            session.info["deferred_inserts"], session.info["after_commit"] = deferred, callbacks
            return exc

    def _count(self, envelope: dict, result) -> None:
        type_ = envelope["type"]
        if isinstance(result, NotReady):
            outcome = "not_ready"
        elif isinstance(result, Exception):
            outcome = "failed"
        else:
            outcome = result
        metrics.events_consumed.labels(self.service, type_, outcome).inc()
        if outcome == "processed":
            metrics.event_lag.labels(self.service, type_).observe(event_age_seconds(envelope))
