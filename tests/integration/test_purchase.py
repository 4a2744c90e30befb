"""The purchase path over the real processes: catalog and delivery talking through RabbitMQ,
keys reserved and sold on PostgreSQL, paid through the signed sandbox callback.

Risk is required, as in production: a paid order is delivered once risk approved, which may
be after the payment callback answered, so the tests poll for ``delivered``."""
from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from shared import topology

from .helpers import eventually, new_envelope, parallel


@pytest.fixture
def stocked(shop):
    """A merchant and a product with keys in delivery's vault: ``make(n, **product_fields)``."""
    def make(n: int, **fields):
        merchant = shop.create_merchant()
        product = shop.create_product(merchant, **fields)
        keys = shop.new_keys(n)
        result = shop.import_keys(merchant, product["id"], keys)
        assert result == {"imported": n, "duplicates": 0, "rejected": 0}, result
        return merchant, product, keys
    return make


def test_full_purchase_path(shop):
    merchant = shop.create_merchant()
    product = shop.create_product(merchant, title="Steam 100", price_cents=9900, max_per_order=5,
                                  instructions="Redeem on the Steam store.")
    keys = shop.new_keys(5)
    assert shop.import_keys(merchant, product["id"], keys) == {"imported": 5, "duplicates": 0, "rejected": 0}
    # the catalog's stock follows through delivery.stock.changed over RabbitMQ
    shop.wait_catalog(product["id"], stock=5)

    r = shop.order(product["id"], quantity=2, email="Buyer@Example.com")
    order = r.json()
    assert order["status"] == "pending"
    assert order["amount_cents"] == 2 * 9900 and order["currency"] == "CNY"
    assert order["payment"]["provider"] == "sandbox" and order["payment"]["pay_url"].startswith("http")
    assert order["expires_at"]
    before = shop.get_order(order["order_no"], order["access_token"])
    assert before.status_code == 200 and before.json()["status"] == "pending"
    assert not before.json().get("keys"), "keys shown before payment"
    assert shop.get_order(order["order_no"], "wrong-token").status_code == 404
    shop.wait_catalog(product["id"], stock=3)  # reserved keys are not for sale

    paid = shop.pay(order)
    assert paid.status_code == 200, paid.text
    assert paid.json()["outcome"] in ("paid", "delivered"), paid.text  # delivered, or waiting for risk
    view = shop.wait_delivered(order)
    assert len(view["keys"]) == 2 and set(view["keys"]) <= set(keys)
    assert view["instructions"] == "Redeem on the Steam store."
    # delivery.order.delivered reaches catalog (its sale count); stock stays at 3
    shop.wait_catalog(product["id"], sold=2, stock=3)


def test_key_import_deduplicates_within_and_across_batches(shop):
    merchant = shop.create_merchant()
    product = shop.create_product(merchant)
    a, b, c = shop.new_keys(3)
    assert shop.import_keys(merchant, product["id"], [a, b, a, "  "]) == {"imported": 2, "duplicates": 1, "rejected": 1}
    assert shop.import_keys(merchant, product["id"], [b, c]) == {"imported": 1, "duplicates": 1, "rejected": 0}
    shop.wait_catalog(product["id"], stock=3)
    other = shop.create_merchant()  # another merchant's key cannot fill this product

    def import_as_other():
        r = requests.post(f"{shop.delivery}/delivery/v1/products/{product['id']}/keys",
                          json={"keys": shop.new_keys(1)}, headers={"Authorization": f"Bearer {other['api_key']}"},
                          timeout=30)
        return None if r.status_code == 401 else [r]  # 401 until delivery has learned the new merchant

    [r] = eventually(import_as_other, 15, 0.1, "delivery never learned the other merchant")
    assert r.status_code == 404, r.text  # not this merchant's product: it does not exist for it
    shop.wait_catalog(product["id"], stock=3)  # and nothing was imported


def test_payment_refusals(shop, stocked):
    _merchant, product, keys = stocked(2, price_cents=500)
    order = shop.order(product["id"]).json()

    def status():
        return shop.order_status(order)

    raw = shop.notify_body(order)
    # bad or missing signature: 401, nothing changes
    assert shop.notify_raw(raw, shop.sign(raw, secret="not-the-secret")).status_code == 401
    assert shop.notify_raw(raw, None).status_code == 401
    tampered = shop.notify_body(order, amount_cents=1)
    assert shop.notify_raw(tampered, shop.sign(raw)).status_code == 401
    assert status() == "pending"
    # wrong amount or currency, correctly signed: 422 and the order stays unpaid
    r = shop.pay(order, amount_cents=order["amount_cents"] - 1, txn_id="txn-short")
    assert r.status_code == 422, r.text
    r = shop.pay(order, currency="USD", txn_id="txn-usd")
    assert r.status_code == 422, r.text
    assert status() == "pending"
    # a status other than paid: 200, nothing changes
    r = shop.pay(order, status="failed", txn_id="txn-failed")
    assert r.status_code == 200, r.text
    assert status() == "pending"
    # an unknown order: 404
    r = shop.pay({**order, "order_no": "000000000000000000"})
    assert r.status_code == 404, r.text
    # the real payment delivers ...
    r = shop.pay(order, txn_id="txn-good")
    assert r.status_code == 200, r.text
    first = shop.wait_delivered(order)
    assert len(first["keys"]) == 1
    # ... and its replay is 200 and changes nothing
    r = shop.pay(order, txn_id="txn-good")
    assert r.status_code == 200, r.text
    again = shop.get_order(order["order_no"], order["access_token"]).json()
    assert again["status"] == "delivered" and again["keys"] == first["keys"]
    shop.wait_catalog(product["id"], stock=1, sold=1)


def test_twenty_identical_callbacks_deliver_once(shop, stocked):
    _merchant, product, keys = stocked(3)
    order = shop.order(product["id"]).json()
    raw = shop.notify_body(order)
    signature = shop.sign(raw)
    responses = parallel(lambda _: shop.notify_raw(raw, signature), range(20), workers=20)
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    view = shop.wait_delivered(order)
    assert len(view["keys"]) == 1
    # one delivery.order.delivered (catalog counts 1 sale), two keys left
    shop.wait_catalog(product["id"], stock=2, sold=1)
    time.sleep(0.5)
    assert shop.catalog_product(product["id"])["sold"] == 1


def test_200_buyers_100_keys_then_100_payments(shop, stocked):
    _merchant, product, keys = stocked(100)
    shop.wait_catalog(product["id"], stock=100)

    def buy(i):
        return shop.order(product["id"], email=f"buyer{i}@example.com", expect=None)

    responses = parallel(buy, range(200), workers=200)
    codes = [r.status_code for r in responses]
    assert codes.count(201) == 100 and codes.count(409) == 100, {c: codes.count(c) for c in set(codes)}
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"out_of_stock"}
    orders = [r.json() for r in responses if r.status_code == 201]
    shop.wait_catalog(product["id"], stock=0)

    paid = parallel(shop.pay, orders, workers=100)
    assert [r.status_code for r in paid] == [200] * 100, [r.text for r in paid if r.status_code != 200][:3]
    views = parallel(lambda o: shop.wait_delivered(o, timeout=30), orders, workers=20)
    assert {v["status"] for v in views} == {"delivered"}
    delivered = [key for v in views for key in v["keys"]]
    assert len(delivered) == 100 and len(set(delivered)) == 100, "a key went to two orders"
    assert set(delivered) == set(keys)
    shop.wait_catalog(product["id"], timeout=20, stock=0, sold=100)


def test_delivery_worker_killed_mid_stream_loses_nothing(stack, shop, broker, workers_running):
    """600 product upserts (published with pika as catalog would) while delivery's worker is
    SIGKILLed mid-stream and restarted: delivery ends up knowing every product (an order is
    409 out_of_stock, not 422 unknown_product) and nothing was dead-lettered."""
    merchant = shop.create_merchant()
    inbox = topology.inbox_queue("delivery")
    products = [f"prd_bulk{uuid.uuid4().hex[:12]}" for _ in range(600)]
    events = [new_envelope("catalog.product.upserted", {
        "product_id": pid, "merchant_id": merchant["id"], "title": "bulk", "price_cents": 100, "cost_cents": 0,
        "currency": "CNY", "status": "active", "max_per_order": 10, "instructions": "",
        "commission": {"levels_bps": [], "cap_bps": None}, "version": 1}, producer="catalog") for pid in products]
    broker.publish_many("catalog.product.upserted", events, exchange=topology.EXCHANGE)
    eventually(lambda: broker.counts(inbox)[0] < 450, 20, 0.01, "delivery's worker works off the backlog")
    stack.kill_worker("delivery")
    left = broker.counts(inbox)[0]
    assert left > 0, "the backlog was gone before the kill: not mid-stream"
    stack.start_worker("delivery")
    eventually(lambda: broker.counts(inbox)[0] == 0, 30, 0.1, "delivery.inbox drained")
    codes = parallel(lambda pid: shop.order(pid, expect=None).json().get("error", {}).get("code"),
                     products, workers=16)
    unknown = [pid for pid, code in zip(products, codes) if code != "out_of_stock"]
    assert not unknown, f"delivery never learned {len(unknown)} of {len(products)} products"
    assert not broker.take(topology.dead_queue("delivery"), lambda _p, b: merchant["id"].encode() in b)
    print(f"killed with {left} of {len(products)} messages left")


def test_order_validation(shop, stocked):
    _merchant, product, _keys = stocked(1, max_per_order=2)
    assert shop.order(product["id"], quantity=0, expect=None).status_code == 422
    assert shop.order(product["id"], quantity=3, expect=None).status_code == 422
    assert shop.order(product["id"], email="not-an-email", expect=None).status_code == 422
    assert shop.order("prd_doesnotexist", expect=None).status_code == 422
    r = requests.post(f"{shop.delivery}/delivery/v1/orders", timeout=30, json={
        "product_id": product["id"], "quantity": 1, "email": "a@example.com", "surprise": 1})
    assert r.status_code == 422, r.text
    body = json.loads(r.text)
    assert set(body["error"]) == {"code", "message", "fields"}
