"""The inbox: a handler runs in one transaction with a row keyed by the event id, so a
redelivered or duplicated event is recognised by the unique key, not by a prior look-up."""
from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import Column, MetaData, String, Table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import metrics
from .db import Database, UtcDateTime
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
    )


class Consumer:
    """Applies one envelope exactly once. Raises on failure so the bus can retry it."""

    def __init__(self, service: str, db: Database, inbox: Table, handlers: Handlers):
        self.service = service
        self.db = db
        self.inbox = inbox
        self.handlers = handlers

    def handle(self, envelope: dict) -> str:
        type_ = envelope["type"]
        handler = self.handlers.get(type_)
        if handler is None:
            outcome = "ignored"
        else:
            try:
                outcome = self._apply(handler, envelope)
            except NotReady:
                metrics.events_consumed.labels(self.service, type_, "not_ready").inc()
                raise
            except Exception:
                metrics.events_consumed.labels(self.service, type_, "failed").inc()
                raise
        metrics.events_consumed.labels(self.service, type_, outcome).inc()
        if outcome == "processed":
            metrics.event_lag.labels(self.service, type_).observe(event_age_seconds(envelope))
        return outcome

    def _apply(self, handler: Handler, envelope: dict) -> str:
        with self.db.write() as session:
            try:
                with session.begin_nested():
                    session.execute(self.inbox.insert().values(
                        event_id=envelope["id"], type=envelope["type"], received_at=utcnow()))
            except IntegrityError:
                return "duplicate"
            handler(session, envelope)
        return "processed"
