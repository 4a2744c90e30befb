"""Smoke test of the bench's reference shop (bench/reference_shop.py), for real: gunicorn and
the relay as processes on PostgreSQL and RabbitMQ, driven by the bench's own load client.
Its port and database differ from the bench's, so a running bench is not disturbed."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import pika
import psycopg
import pytest
from pika.exceptions import ChannelClosedByBroker

from bench import reference_shop
from bench.purchase import Shop

pytestmark = pytest.mark.usefixtures("infra")  # skips (or fails under CI) without the servers

PORT = 18790
DSN = "postgresql://postgres@127.0.0.1:5432/linkshop_reference_test"
SECRET = "sandbox-secret"
BUS_URL = os.environ.get("BUS_URL", reference_shop.DEFAULT_BUS_URL)
# kombu reads "//" as the virtual host "/"; pika reads it as "" (no such vhost): it wants "%2F"
PIKA_URL = BUS_URL[:-2] + "/%2F" if BUS_URL.endswith("//") else BUS_URL


def eventually(probe, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def inbox_depth() -> int | None:
    """Messages in reference.inbox (pika, independent of the relay's kombu); None: no queue."""
    conn = pika.BlockingConnection(pika.URLParameters(PIKA_URL))
    try:
        return conn.channel().queue_declare(reference_shop.QUEUE, passive=True).method.message_count
    except ChannelClosedByBroker:
        return None
    finally:
        if conn.is_open:
            conn.close()


def notify(shop: Shop, order: dict, secret: str = SECRET, **changes) -> tuple[int, dict]:
    """The notice the bench's Shop.purchase sends (same txn_id: a second call is a replay)."""
    raw = json.dumps({"order_no": order["order_no"], "amount_cents": order["amount_cents"],
                      "currency": order["currency"], "txn_id": f"bench-{order['order_no']}", "status": "paid",
                      **changes}).encode()
    signature = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    status, body = shop.delivery.request("POST", "/delivery/v1/payments/sandbox/notify", raw,
                                         {"X-Sandbox-Signature": signature})
    return status, json.loads(body)


def order(shop: Shop, product_id: str, quantity: int = 1, email: str = "b@example.com") -> tuple[int, dict]:
    return shop.delivery.json("POST", "/delivery/v1/orders",
                              {"product_id": product_id, "quantity": quantity, "email": email})


def test_reference_shop_sells_each_key_once_and_relays_every_event(tmp_path):
    product_id, plain = reference_shop.setup(DSN, keys=20, price_cents=1000)
    handle = reference_shop.start(PORT, tmp_path, dsn=DSN)
    try:
        shop = Shop(handle.base_url, handle.base_url, SECRET)

        # three purchases as the bench makes them: order, signed notice, keys read back
        bought = [shop.purchase(product_id, n) for n in range(3)]
        assert all("error" not in p for p in bought), bought
        first = bought[0]["order"]
        assert set(first) == {"order_no", "access_token", "amount_cents", "currency", "status"}
        assert (first["amount_cents"], first["status"]) == (1000, "pending")
        views = [shop.keys_of(p["order"]) for p in bought]
        keys = [key for status, ks in views for key in ks]
        assert [status for status, _ in views] == ["delivered"] * 3
        assert len(set(keys)) == 3 and set(keys) <= set(plain)

        assert notify(shop, first) == (200, {"ok": True, "order_no": first["order_no"], "outcome": "replay"})
        assert notify(shop, first, txn_id="another")[1]["outcome"] == "duplicate_payment"
        assert notify(shop, first, secret="wrong")[0] == 401
        assert shop.keys_of({**first, "access_token": "wrong"})[0] == "http 404"

        status, unpaid = order(shop, product_id)
        assert status == 201
        assert notify(shop, unpaid, amount_cents=1)[0] == 422
        assert shop.keys_of(unpaid) == ("pending", [])

        assert order(shop, "no-such-product")[0] == 422
        assert order(shop, product_id, quantity=11)[0] == 422
        assert order(shop, product_id, email="nobody")[0] == 422

        # 16 keys left: 10 sold, then 10 more is a shortfall that must give back what it claimed
        assert order(shop, product_id, quantity=10)[0] == 201
        assert order(shop, product_id, quantity=10) == (409, {"error": {
            "code": "out_of_stock", "message": "not enough keys in stock for this order"}})
        assert order(shop, product_id, quantity=6)[0] == 201
        assert order(shop, product_id)[0] == 409

        # 6 orders made (1 event each), 3 delivered (2 each): all relayed, confirmed, queued
        with psycopg.connect(DSN, autocommit=True) as db:
            def unsent():
                return db.execute("SELECT count(*) FILTER (WHERE sent_at IS NULL), count(*) FROM outbox").fetchone()
            assert eventually(lambda: unsent()[0] == 0), unsent()
            assert unsent() == (0, 12)
        assert eventually(lambda: inbox_depth() == 12), inbox_depth()
    finally:
        reference_shop.stop(handle)
    assert all(proc.poll() is not None for proc in handle.processes.values())
    assert inbox_depth() is None  # stop deleted the queue
