"""shared.events: the envelope schema (design.md §4). A bad envelope is a PoisonMessage (it goes
to <svc>.dead); fields a newer producer added are ignored."""
import json
import uuid
from datetime import datetime, timezone

import pytest

from shared.events import PoisonMessage, event_age_seconds, make_envelope, parse_envelope

FIELDS = ("id", "type", "version", "occurred_at", "producer", "correlation_id", "payload")


def good():
    return make_envelope("delivery.order.delivered", {"order_no": "A1", "quantity": 2},
                         producer="delivery", correlation_id="A1")


def test_make_envelope_has_every_field_and_parses():
    env = good()
    assert set(env) == set(FIELDS)
    uuid.UUID(env["id"])
    assert env["version"] == 1 and env["producer"] == "delivery"
    assert datetime.fromisoformat(env["occurred_at"]).tzinfo is not None
    assert make_envelope("a.b.c", {}, producer="x")["id"] != make_envelope("a.b.c", {}, producer="x")["id"]
    for form in (env, json.dumps(env), json.dumps(env).encode()):
        assert parse_envelope(form) == env  # JSON types kept: id and time stay strings


def test_unknown_fields_are_ignored():
    env = good()
    newer = {**env, "trace": {"span": 1}, "schema": "v9",
             "payload": {**env["payload"], "added_later": True}}
    parsed = parse_envelope(json.dumps(newer).encode())
    assert set(parsed) == set(FIELDS)
    assert parsed["payload"]["added_later"] is True  # the payload is the handler's business


def test_correlation_id_may_be_null():
    env = {**good(), "correlation_id": None}
    assert parse_envelope(env)["correlation_id"] is None


def _without(name):
    env = good()
    del env[name]
    return env


BAD = {
    "not json": b"{nope",
    "not utf-8": b"\xff\xfe\x00garbage",
    "empty": b"",
    "a list": json.dumps([good()]).encode(),
    "a string": json.dumps("hello").encode(),
    "null": b"null",
    **{f"missing {name}": json.dumps(_without(name)).encode() for name in FIELDS},
    "id not a uuid": json.dumps({**good(), "id": "42"}).encode(),
    "id a number": json.dumps({**good(), "id": 42}).encode(),
    "type with two parts": json.dumps({**good(), "type": "delivery.delivered"}).encode(),
    "type with capitals": json.dumps({**good(), "type": "Delivery.Order.Delivered"}).encode(),
    "type with spaces": json.dumps({**good(), "type": "delivery.order.delivered x"}).encode(),
    "version 0": json.dumps({**good(), "version": 0}).encode(),
    "version text": json.dumps({**good(), "version": "one"}).encode(),
    "naive occurred_at": json.dumps({**good(), "occurred_at": "2024-05-01T10:00:00"}).encode(),
    "occurred_at not a date": json.dumps({**good(), "occurred_at": "yesterday"}).encode(),
    "payload a list": json.dumps({**good(), "payload": [1, 2]}).encode(),
    "payload null": json.dumps({**good(), "payload": None}).encode(),
    "producer null": json.dumps({**good(), "producer": None}).encode(),
}


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
def test_bad_envelopes_are_poison(body):
    with pytest.raises(PoisonMessage):
        parse_envelope(body)


def test_event_age_is_never_negative():
    env = good()
    assert 0 <= event_age_seconds(env) < 5
    future = {**env, "occurred_at": datetime(2999, 1, 1, tzinfo=timezone.utc).isoformat()}
    assert event_age_seconds(future) == 0.0
    past = {**env, "occurred_at": "2000-01-01T00:00:00Z"}
    assert event_age_seconds(past) > 10 * 365 * 86400


def _variants():
    """Envelopes one change away from a good one, each field through values of other kinds."""
    odd = [None, "", " ", 0, 1, -1, True, 1.5, [], {}, "x", "1", "a.b.c", "A.b.c", "a.b.c\n", "a.b",
           "2026-12-01T10:00:00", "2026-12-01T10:00:00+00:00\n", "2026-12-01T10:00:00Z", "2026-13-01T10:00:00+00:00",
           "2026-12-01T10:00:00.1234567+00:00", "20261201T100000+0000", "2026-12-01 10:00:00+00:00",
           str(uuid.uuid4()).upper(), "{" + str(uuid.uuid4()) + "}", uuid.uuid4().hex, "not-a-uuid"]
    yield good()
    for field in FIELDS:
        for value in odd:
            env = good()
            env[field] = value
            yield env
        env = good()
        del env[field]
        yield env


def test_the_fast_check_accepts_nothing_the_schema_refuses():
    from shared.events import _plainly_valid, _schema
    accepted = 0
    for env in _variants():
        if _plainly_valid(env):
            accepted += 1
            assert _schema.validate(env) == {}, env
    assert accepted >= 2  # the producers' own form goes the fast way (and a correlation id of "")
    assert _plainly_valid(good()) and _plainly_valid({**good(), "correlation_id": None})
