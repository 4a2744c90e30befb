"""Clients for the integration tests: the HTTP APIs (requests) and the broker (pika, on its own,
so that the bus is checked independently of the kombu code under test)."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pika
import requests
from pika.exceptions import ChannelClosedByBroker

from shared.topology import EXCHANGE, inbox_queue

HTTP_TIMEOUT = 30
UNKNOWN_TO_DELIVERY = (401, 403, 404, 422)  # before delivery has learned the merchant/product


def eventually(probe, timeout: float = 10.0, interval: float = 0.1, message: str = ""):
    """Call ``probe`` until it returns something truthy; fail with its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {message} (last: {last!r})")
        time.sleep(interval)


def parallel(fn, items, workers: int = 64) -> list:
    """``fn(item)`` for every item at once (as far as ``workers`` threads allow), results in order."""
    items = list(items)
    barrier = threading.Barrier(min(workers, len(items))) if len(items) <= workers else None

    def run(item):
        if barrier is not None:
            barrier.wait(timeout=30)  # release them together: a real stampede, not a trickle
        return fn(item)

    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(run, items))


def new_envelope(type_: str, payload: dict, producer: str = "delivery", id_: str | None = None) -> dict:
    return {"id": id_ or str(uuid.uuid4()), "type": type_, "version": 1,
            "occurred_at": datetime.now(timezone.utc).isoformat(), "producer": producer,
            "correlation_id": payload.get("order_no"), "payload": payload}


def fund_user(broker: "Broker", hold_seconds: int, user_id: str, cents: int) -> str:
    """Give a user ``cents`` of released commission in payout: an order delivered with its hold
    long over and its commission line, published straight into payout's inbox, so that no other
    service sees an order that never was. Returns the made-up order number."""
    order_no, merchant_id = f"IT{secrets.token_hex(6)}", f"mer_it{secrets.token_hex(4)}"
    delivered_at = datetime.now(timezone.utc) - timedelta(seconds=hold_seconds + 3600)
    inbox = inbox_queue("payout")
    broker.publish(inbox, new_envelope("delivery.order.delivered", {
        "order_no": order_no, "product_id": "prd_it", "merchant_id": merchant_id, "quantity": 1,
        "amount_cents": 2 * cents, "cost_cents": 0, "currency": "CNY", "fee_bps": 0,
        "delivered_at": delivered_at.isoformat()}), exchange="")
    broker.publish(inbox, new_envelope("referral.commission.accrued", {
        "order_no": order_no, "merchant_id": merchant_id, "product_id": "prd_it", "amount_cents": 2 * cents,
        "lines": [{"user_id": user_id, "level": 1, "rate_bps": 5000, "amount_cents": cents}]},
        producer="referral"), exchange="")
    return order_no


class Shop:
    """The public HTTP APIs of one running stack, as merchants, buyers and the payment provider use them."""

    def __init__(self, stack, admin_token: str, sandbox_secret: str, secret_sink: list, credential_sink: list):
        self.stack = stack
        self.catalog = stack.url("catalog")
        self.delivery = stack.url("delivery")
        self.admin_token = admin_token
        self.sandbox_secret = sandbox_secret
        self.secret_sink = secret_sink          # every card secret imported during the run
        self.credential_sink = credential_sink  # access tokens and API keys handed out during the run

    # -- referral
    def register_chain(self, length: int) -> list[dict]:
        """``length`` users, each invited by the one before: the root first, the newest last."""
        users, code = [], None
        for _ in range(length):
            r = requests.post(f"{self.stack.url('referral')}/referral/v1/users", timeout=HTTP_TIMEOUT,
                              json={"email": f"it-{secrets.token_hex(5)}@example.com", "invite_code": code})
            assert r.status_code == 201, r.text
            users.append(r.json())
            self.credential_sink.append(r.json()["token"])
            code = r.json()["invite_code"]
        return users

    # -- catalog
    def create_merchant(self, name: str | None = None) -> dict:
        name = name or f"merchant-{secrets.token_hex(3)}"
        r = requests.post(f"{self.catalog}/catalog/v1/merchants", timeout=HTTP_TIMEOUT,
                          headers={"Authorization": f"Bearer {self.admin_token}"},
                          json={"name": name, "email": f"{name}@example.com"})
        assert r.status_code == 201, r.text
        body = r.json()
        self.credential_sink.append(body["api_key"])
        return body

    def create_product(self, merchant: dict, **fields) -> dict:
        data = {"title": f"product-{secrets.token_hex(3)}", "price_cents": 1990, **fields}
        r = requests.post(f"{self.catalog}/catalog/v1/products", json=data, timeout=HTTP_TIMEOUT,
                          headers={"Authorization": f"Bearer {merchant['api_key']}"})
        assert r.status_code == 201, r.text
        return r.json()

    def catalog_product(self, product_id: str) -> dict:
        r = requests.get(f"{self.catalog}/catalog/v1/products/{product_id}", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_catalog(self, product_id: str, timeout: float = 10.0, **expected) -> dict:
        """Poll the catalog's product until the given fields (e.g. ``stock=4``) have these values."""
        def probe():
            product = self.catalog_product(product_id)
            return product if all(product.get(k) == v for k, v in expected.items()) else None
        try:
            return eventually(probe, timeout, 0.1)
        except AssertionError:
            product = self.catalog_product(product_id)
            got = {k: product.get(k) for k in expected}
            raise AssertionError(f"catalog product {product_id}: expected {expected} within {timeout}s, "
                                 f"still {got}") from None

    # -- delivery: merchant side
    def import_keys(self, merchant: dict, product_id: str, keys: list[str], timeout: float = 15.0,
                    **extra) -> dict:
        """Import keys, retrying while delivery has not yet learned the product or merchant."""
        # what could identify a key (a blank one, rejected anyway, would "leak" into any log)
        self.secret_sink.extend(k for k in keys if len(k.strip()) >= 8)
        url = f"{self.delivery}/delivery/v1/products/{product_id}/keys"
        deadline = time.monotonic() + timeout
        while True:
            r = requests.post(url, json={"keys": keys, **extra}, timeout=120,
                              headers={"Authorization": f"Bearer {merchant['api_key']}"})
            if r.status_code not in UNKNOWN_TO_DELIVERY or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code in (200, 201), f"key import: {r.status_code} {r.text}"
        return r.json()

    def new_keys(self, n: int, tag: str = "KEY") -> list[str]:
        return [f"{tag}-{secrets.token_hex(10)}" for _ in range(n)]

    def wait_product_known(self, product_id: str, timeout: float = 15.0) -> None:
        """Delivery learns products from catalog.product.upserted: without stock an order is 409
        out_of_stock once the product is known (and reserves nothing)."""
        def probe():
            r = self.order(product_id, expect=None)
            return r.status_code == 409
        eventually(probe, timeout, 0.1, f"delivery never learned product {product_id}")

    # -- delivery: buyer side
    def order(self, product_id: str, quantity: int = 1, email: str | None = None, expect: int | None = 201,
              session: requests.Session | None = None, **extra) -> requests.Response:
        email = email or f"buyer-{secrets.token_hex(4)}@example.com"
        r = (session or requests).post(f"{self.delivery}/delivery/v1/orders", timeout=HTTP_TIMEOUT,
                                       json={"product_id": product_id, "quantity": quantity, "email": email, **extra})
        if expect is not None:
            assert r.status_code == expect, f"order: {r.status_code} {r.text}"
        if r.status_code == 201:
            self.credential_sink.append(r.json()["access_token"])
        return r

    def get_order(self, order_no: str, token: str, session: requests.Session | None = None) -> requests.Response:
        return (session or requests).get(f"{self.delivery}/delivery/v1/orders/{order_no}",
                                         params={"token": token}, timeout=HTTP_TIMEOUT)

    def order_status(self, order: dict) -> str:
        r = self.get_order(order["order_no"], order["access_token"])
        assert r.status_code == 200, r.text
        return r.json()["status"]

    def wait_status(self, order: dict, *statuses: str, timeout: float = 20.0) -> dict:
        """Poll the buyer's view until the order is in one of ``statuses``; returns that view.

        With LINKSHOP_RISK_REQUIRED (as in production) a paid order is delivered when risk's
        decision arrives, which may be after the payment callback answered."""
        def probe():
            r = self.get_order(order["order_no"], order["access_token"])
            assert r.status_code == 200, r.text
            return r.json() if r.json()["status"] in statuses else None
        try:
            return eventually(probe, timeout, 0.05)
        except AssertionError:
            raise AssertionError(f"order {order['order_no']} not {'/'.join(statuses)} within {timeout}s: "
                                 f"still {self.order_status(order)}") from None

    def wait_delivered(self, order: dict, timeout: float = 20.0) -> dict:
        return self.wait_status(order, "delivered", timeout=timeout)

    # -- the sandbox payment provider
    def sign(self, raw: bytes, secret: str | None = None) -> str:
        return hmac.new((secret or self.sandbox_secret).encode(), raw, hashlib.sha256).hexdigest()

    def notify_body(self, order: dict, **changes) -> bytes:
        body = {"order_no": order["order_no"], "amount_cents": order["amount_cents"],
                "currency": order["currency"], "txn_id": f"txn-{order['order_no']}", "status": "paid"}
        body.update(changes)
        return json.dumps(body, separators=(",", ":")).encode()

    def notify_raw(self, raw: bytes, signature: str | None, session: requests.Session | None = None) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["X-Sandbox-Signature"] = signature
        return (session or requests).post(f"{self.delivery}/delivery/v1/payments/sandbox/notify", data=raw,
                                          headers=headers, timeout=HTTP_TIMEOUT)

    def pay(self, order: dict, session: requests.Session | None = None, **changes) -> requests.Response:
        raw = self.notify_body(order, **changes)
        return self.notify_raw(raw, self.sign(raw), session=session)


class Broker:
    """pika against the test's virtual host: passive declares, publishing, reading queues."""

    def __init__(self, url: str):
        self.url = url

    @contextmanager
    def channel(self):
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            yield conn.channel()
        finally:
            if conn.is_open:
                conn.close()

    def queue_exists(self, name: str) -> bool:
        try:
            with self.channel() as ch:
                ch.queue_declare(name, passive=True)
            return True
        except ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return False
            raise

    def exchange_exists(self, name: str) -> bool:
        try:
            with self.channel() as ch:
                ch.exchange_declare(name, passive=True)
            return True
        except ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return False
            raise

    def counts(self, name: str) -> tuple[int, int]:
        """(ready messages, consumers) of a queue."""
        with self.channel() as ch:
            frame = ch.queue_declare(name, passive=True)
            return frame.method.message_count, frame.method.consumer_count

    def publish(self, routing_key: str, body: bytes | str | dict, exchange: str = EXCHANGE,
                message_id: str | None = None, headers: dict | None = None, times: int = 1) -> None:
        """Publish with confirms and ``mandatory``: an unroutable message fails the test."""
        if isinstance(body, dict):
            message_id = message_id or body.get("id")
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                     message_id=message_id, headers=headers)
        with self.channel() as ch:
            ch.confirm_delivery()
            for _ in range(times):
                ch.basic_publish(exchange, routing_key, body, properties=props, mandatory=True)

    def publish_many(self, routing_key: str, bodies: list, exchange: str = "") -> None:
        with self.channel() as ch:
            ch.confirm_delivery()
            for body in bodies:
                if isinstance(body, dict):
                    props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                                 message_id=body["id"])
                    body = json.dumps(body).encode()
                else:
                    props = pika.BasicProperties(delivery_mode=2)
                ch.basic_publish(exchange, routing_key, body, properties=props, mandatory=True)

    def take(self, queue: str, match, limit: int = 10000) -> list[tuple[object, bytes]]:
        """Remove the messages of ``queue`` for which ``match(properties, body)`` is true and
        return them; every other message goes back to the queue."""
        taken = []
        with self.channel() as ch:
            for _ in range(limit):
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                if match(props, body):
                    ch.basic_ack(method.delivery_tag)
                    taken.append((props, body))
            # closing the channel returns every message not acked to the queue
        return taken

    def peek(self, queue: str, limit: int = 10000) -> list[tuple[object, bytes]]:
        """Read every ready message of ``queue`` and put them all back (unacked until the channel closes)."""
        seen = []
        with self.channel() as ch:
            for _ in range(limit):
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                seen.append((props, body))
        return seen

    def drain(self, queue: str, limit: int = 1_000_000) -> list[bytes]:
        """Remove and return every ready message of ``queue``."""
        bodies = []
        with self.channel() as ch:
            for _ in range(limit):
                method, _props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                bodies.append(body)
        return bodies
