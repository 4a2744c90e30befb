"""The event envelope (design.md §4) and its schema."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate


class PoisonMessage(Exception):
    """A message that can never be processed: it goes to the dead-letter queue."""


class EnvelopeSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # consumers ignore fields added by newer producers

    id = fields.UUID(required=True)
    type = fields.Str(required=True, validate=validate.Regexp(r"^[a-z]+\.[a-z_]+\.[a-z_]+$"))
    version = fields.Int(required=True, validate=validate.Range(min=1))
    occurred_at = fields.AwareDateTime(required=True)
    producer = fields.Str(required=True)
    correlation_id = fields.Str(required=True, allow_none=True)
    payload = fields.Dict(required=True)


_schema = EnvelopeSchema()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def make_envelope(type_: str, payload: dict, *, producer: str, correlation_id: str | None = None,
                  version: int = 1) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "type": type_,
        "version": version,
        "occurred_at": utcnow().isoformat(),
        "producer": producer,
        "correlation_id": correlation_id,
        "payload": payload,
    }


def parse_envelope(body: bytes | str | dict) -> dict:
    """Validate an envelope; the returned dict keeps JSON types (id and time as strings)."""
    try:
        data = json.loads(body) if isinstance(body, (bytes, str)) else body
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoisonMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoisonMessage("envelope is not an object")
    try:
        _schema.load(data)
    except ValidationError as exc:
        raise PoisonMessage(f"bad envelope: {exc.messages}") from None
    return {k: data[k] for k in _schema.fields}


def event_age_seconds(envelope: dict) -> float:
    occurred = datetime.fromisoformat(envelope["occurred_at"])
    return max(0.0, (utcnow() - occurred).total_seconds())
