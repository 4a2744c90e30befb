"""Helpers every service's tests use on an embedded system (``tests.kit.backends`` builds it):

    def test_something(embedded, catalog, merchant):
        product = create_product(catalog, merchant["api_key"], price_cents=500)
        inject(embedded, "catalog", envelope("delivery.stock.changed", {...}))
        embedded.hub.drain()
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

from sqlalchemy import select

from shared.events import make_envelope, utcnow


# -- environment and the embedded system -----------------------------------------------------

def embedded_env(var_dir, **extra: str) -> dict[str, str]:
    """A hermetic embedded-mode environment (nothing read from os.environ)."""
    env = {"LINKSHOP_VAR_DIR": str(var_dir), "BUS_RETRY_DELAYS_MS": "0", "BUS_MAX_ATTEMPTS": "3"}
    env.update(extra)
    return env


def service_ctx(embedded, service: str):
    """The service's ServiceContext (``.db``, ``.outbox``, ``.settings``, ``.extra``)."""
    return embedded.apps[service].extensions["linkshop"]


def service_db(embedded, service: str):
    return service_ctx(embedded, service).db


def job_names(embedded, service: str) -> list[str]:
    """The periodic jobs the service's worker runs in this system."""
    [spec] = [spec for spec in embedded.hub.specs if spec.service == service]
    return [job.name for job in spec.jobs]


@contextmanager
def by_hand(db):
    """A connection for SQL written by hand beside the service's code (someone with psql), in
    a transaction that commits at the end; on PostgreSQL inside the test's transaction, as
    everything the test's services do (a connection of its own would not see their data)."""
    with db.write() as session:
        yield session.connection()


@contextmanager
def payout_clock(when: datetime):
    """Payout's worker jobs see ``when`` as now (its hold, policy and payment jobs)."""
    from services.payout import worker
    with mock.patch.object(worker, "now", lambda: when):
        yield


# -- HTTP helpers --------------------------------------------------------------------------

def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


_merchant_seq = [0]


def create_merchant(catalog, name: str | None = None, email: str | None = None, **fields: Any) -> dict:
    """POST /catalog/v1/merchants with the admin token; returns the 201 body (with ``api_key``)."""
    _merchant_seq[0] += 1
    body = {"name": name or f"Shop {_merchant_seq[0]}",
            "email": email or f"shop{_merchant_seq[0]}@example.com", **fields}
    response = catalog.post("/catalog/v1/merchants", json=body, headers=bearer(catalog.admin_token))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def create_product(catalog, api_key: str, **fields: Any) -> dict:
    """POST /catalog/v1/products with a merchant key; returns the 201 body."""
    body = {"title": "Game key", "price_cents": 10000, **fields}
    response = catalog.post("/catalog/v1/products", json=body, headers=bearer(api_key))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is a JSON error of the documented shape; returns its ``error`` object."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "fields"}, error
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert isinstance(error["fields"], dict)
    if code is not None:
        assert error["code"] == code, error
    return error


# -- events --------------------------------------------------------------------------------

def envelope(type_: str, payload: dict, *, id: str | None = None, producer: str | None = None,
             correlation_id: str | None = None) -> dict:
    env = make_envelope(type_, payload, producer=producer or type_.split(".", 1)[0],
                        correlation_id=correlation_id)
    if id is not None:
        env["id"] = id
    return env


def inject(embedded, service: str, env: dict | bytes | str) -> None:
    """Put a message on a service's inbox as the bus would deliver it."""
    if isinstance(env, dict):
        env = json.dumps(env)
    if isinstance(env, str):
        env = env.encode()
    embedded.bus.inject(service, env)


def outbox_events(embedded, service: str, type_: str | None = None) -> list[dict]:
    """Every envelope the service wrote to its outbox, oldest first (sent or not)."""
    c = service_ctx(embedded, service)
    table = c.outbox.table
    with c.db.read() as session:
        bodies = session.scalars(select(table.c.body).order_by(table.c.id)).all()
    events = [json.loads(body) for body in bodies]
    return [e for e in events if type_ is None or e["type"] == type_]


def event_payloads(embedded, service: str, type_: str | None = None) -> list[dict]:
    """The payloads of ``outbox_events``."""
    return [e["payload"] for e in outbox_events(embedded, service, type_)]


def stock_as_of(offset_s: float = 0.0) -> str:
    """An ``as_of`` stamp as delivery writes it (ISO 8601, UTC), ``offset_s`` from now."""
    return (utcnow() + timedelta(seconds=offset_s)).isoformat()
