"""shared.idempotency: the same key and body replay the first answer; another body is a 409;
the unique key decides between two first attempts."""
import pytest
from flask import Flask
from sqlalchemy import MetaData
from sqlalchemy.exc import IntegrityError

from shared.db import Database
from shared.errors import ApiError
from shared.idempotency import body_hash, idempotency_table, remember, replay, request_key

app = Flask(__name__)


@pytest.fixture
def store(tmp_path):
    metadata = MetaData()
    table = idempotency_table(metadata)
    db = Database(f"sqlite:///{tmp_path / 'idem.db'}", metadata)
    db.create_all()
    yield db, table
    db.dispose()


@pytest.mark.parametrize("header,expected", [(None, None), ("abc", "abc"), ("  abc  ", "abc"),
                                             ("k" * 200, "k" * 200)])
def test_request_key(header, expected):
    headers = {"Idempotency-Key": header} if header is not None else {}
    with app.test_request_context(headers=headers):
        assert request_key() == expected


@pytest.mark.parametrize("header", ["", "   ", "k" * 201])
def test_bad_request_key_is_400(header):
    with app.test_request_context(headers={"Idempotency-Key": header}):
        with pytest.raises(ApiError) as info:
            request_key()
    assert info.value.status == 400


def test_body_hash_ignores_key_order_but_not_values():
    assert body_hash({"a": 1, "b": [1, 2]}) == body_hash({"b": [1, 2], "a": 1})
    assert body_hash({"a": 1}) != body_hash({"a": 2})
    assert body_hash({"a": [1, 2]}) != body_hash({"a": [2, 1]})
    assert len(body_hash({})) == 64


def test_replay_and_conflict(store):
    db, table = store
    digest = body_hash({"quantity": 1})
    with db.read() as s:
        assert replay(s, table, "refund:A1", "k1", digest) is None
    with db.write() as s:
        remember(s, table, "refund:A1", "k1", digest, {"refunded": 1}, 201)
    with db.read() as s:
        assert replay(s, table, "refund:A1", "k1", digest) == ({"refunded": 1}, 201)
        with pytest.raises(ApiError) as info:
            replay(s, table, "refund:A1", "k1", body_hash({"quantity": 2}))
        assert (info.value.status, info.value.code) == (409, "idempotency_conflict")
        # Keys are scoped: the same key elsewhere is new.
        assert replay(s, table, "refund:A2", "k1", digest) is None


def test_second_first_attempt_loses_on_the_unique_key(store):
    db, table = store
    digest = body_hash({"x": 1})
    with db.write() as s:
        remember(s, table, "scope", "k", digest, {"n": 1}, 201)
    with pytest.raises(IntegrityError):
        with db.write() as s:
            remember(s, table, "scope", "k", digest, {"n": 2}, 201)
    with db.read() as s:
        assert replay(s, table, "scope", "k", digest) == ({"n": 1}, 201)
