"""``Idempotency-Key`` for POSTs that create money-relevant things (design.md §3): the same
key and body return the first answer; the same key with another body is a 409.

The stored answer is written in the transaction of the effect itself, and the unique key
decides between two concurrent first attempts: the loser rolls back and replays the winner.
"""
from __future__ import annotations

import hashlib
import json

from flask import request
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, select
from sqlalchemy.orm import Session

from .errors import ApiError
from .db import UtcDateTime
from .events import utcnow


def idempotency_table(metadata: MetaData) -> Table:
    return Table(
        "idempotency_keys", metadata,
        Column("scope", String(120), primary_key=True),
        Column("key", String(200), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("status", Integer, nullable=False),
        Column("response", Text, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
    )


def request_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 200:
        raise ApiError(400, "bad_idempotency_key", "Idempotency-Key must be 1-200 characters")
    return key


def body_hash(body) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def replay(session: Session, table: Table, scope: str, key: str, digest: str):
    """The stored (body, status) for this key, None if new; 409 if the body differs."""
    row = session.execute(select(table.c.request_hash, table.c.status, table.c.response)
                          .where(table.c.scope == scope, table.c.key == key)).first()
    if row is None:
        return None
    if row.request_hash != digest:
        raise ApiError(409, "idempotency_conflict", "this Idempotency-Key was used with another request")
    return json.loads(row.response), row.status


def remember(session: Session, table: Table, scope: str, key: str, digest: str, body, status: int) -> None:
    session.execute(table.insert().values(scope=scope, key=key, request_hash=digest, status=status,
                                          response=json.dumps(body), created_at=utcnow()))
