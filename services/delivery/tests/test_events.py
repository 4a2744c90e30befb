import json
import logging

from sqlalchemy import select

from services.delivery.models import Product, outbox
from shared.events import make_envelope


def _events(shop):
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    with db.read() as s:
        return [json.loads(b) for b in s.scalars(select(outbox.table.c.body).order_by(outbox.table.c.id))]


def test_purchase_publishes_the_catalogued_events(shop):
    merchant, merchant_id = shop.merchant()
    pid = shop.product(merchant, price_cents=500, cost_cents=200)
    shop.import_keys(merchant, pid, ["K1", "K2"])
    order = shop.buy(pid, quantity=2, ref_code="INV123", device_id="dev-1")
    types = [e["type"] for e in _events(shop)]
    assert types == ["delivery.order.created", "delivery.order.paid", "delivery.order.delivered"]
    created, paid, delivered = (e["payload"] for e in _events(shop))
    assert created["client"]["device_id"] == "dev-1" and created["ref_code"] == "INV123"
    assert paid["provider"] == "sandbox" and paid["amount_cents"] == 1000
    assert delivered == delivered | {"order_no": order["order_no"], "product_id": pid, "merchant_id": merchant_id,
                                     "quantity": 2, "amount_cents": 1000, "cost_cents": 400, "ref_code": "INV123"}
    for event in _events(shop):
        assert "K1" not in json.dumps(event) and "K2" not in json.dumps(event)
        assert event["producer"] == "delivery" and event["correlation_id"] == order["order_no"]


def test_stock_changes_reach_the_catalog_and_low_stock_is_announced(shop):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, [f"K{i}" for i in range(12)])
    shop.jobs()
    product = shop.catalog.get(f"/catalog/v1/products/{pid}").json
    assert product["stock"] == 12 and product["stock_low"] is False
    for i in range(3):
        shop.buy(pid, email=f"b{i}@example.com")
    shop.jobs()
    product = shop.catalog.get(f"/catalog/v1/products/{pid}").json
    assert product["stock"] == 9 and product["stock_low"] is True  # below the floor of 10
    assert product["sold"] == 3
    lows = [e for e in _events(shop) if e["type"] == "delivery.stock.low"]
    assert len(lows) == 1 and lows[0]["payload"]["threshold"] == 10
    shop.jobs()
    assert len([e for e in _events(shop) if e["type"] == "delivery.stock.changed"]) == 2  # only on change


def test_product_events_applied_by_version_once(shop):
    hub, bus = shop.system.hub, shop.system.bus
    labels = {"service": "delivery", "type": "catalog.product.upserted"}
    before = {o: shop.metric("linkshop_events_consumed_total", **labels, outcome=o) for o in ("processed", "duplicate")}
    payload = {"product_id": "prd_x", "merchant_id": "mer_x", "title": "New", "price_cents": 900,
               "cost_cents": 0, "currency": "CNY", "status": "active", "max_per_order": 5,
               "instructions": "", "commission": {"levels_bps": [], "cap_bps": None}, "version": 2}
    newer = make_envelope("catalog.product.upserted", payload, producer="catalog")
    older = make_envelope("catalog.product.upserted", {**payload, "title": "Old", "version": 1}, producer="catalog")
    for envelope in (newer, newer, older, newer):
        bus.inject("delivery", json.dumps(envelope).encode())
    hub.drain()
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    with db.read() as s:
        product = s.get(Product, "prd_x")
        assert (product.title, product.version, product.price_cents) == ("New", 2, 900)
    # the metric is process-wide: what this test added is the newer and the older once each,
    # and the newer's two copies as duplicates
    after = {o: shop.metric("linkshop_events_consumed_total", **labels, outcome=o) for o in ("processed", "duplicate")}
    assert {o: after[o] - before[o] for o in after} == {"processed": 2, "duplicate": 2}


def test_poison_message_goes_to_dead_letters(shop):
    shop.system.bus.inject("delivery", b"not json")
    shop.system.bus.inject("delivery", json.dumps({"id": "x", "type": "nope"}).encode())
    shop.drain()
    assert shop.system.bus.dead["delivery"] == [b"not json", json.dumps({"id": "x", "type": "nope"}).encode()]


def test_risk_seam_waits_then_delivers_or_refunds(make_shop):
    shop = make_shop(LINKSHOP_RISK_REQUIRED="true")
    # the risk service's own answers are replaced by hand-made ones: this tests delivery's seam
    shop.system.hub._consumers = [c for c in shop.system.hub._consumers if c[0] != "risk"]
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["A", "B"])
    waiting = shop.buy(pid)
    rejected = shop.buy(pid, email="fraud@example.com")
    assert shop.view(waiting)["status"] == "paid" and shop.view(waiting)["keys"] == []

    def decide(order, decision):
        env = make_envelope("risk.order.assessed", {"order_no": order["order_no"], "decision": decision,
                                                    "score": 0, "reasons": []}, producer="risk")
        shop.system.bus.inject("delivery", json.dumps(env).encode())
        shop.drain()

    reviewed_before = shop.metric("linkshop_delivery_latency_seconds_count", waited_for="review")
    decide(waiting, "review")
    assert shop.view(waiting)["status"] == "paid"
    decide(waiting, "approve")
    assert shop.view(waiting)["status"] == "delivered" and shop.view(waiting)["keys"] == ["A"]
    # the operator's review is not counted as the buyer-facing delivery latency
    assert shop.metric("linkshop_delivery_latency_seconds_count", waited_for="review") == reviewed_before + 1
    decide(rejected, "reject")
    assert shop.view(rejected)["status"] == "rejected"
    assert [e["payload"]["reason"] for e in _events(shop) if e["type"] == "delivery.order.refunded"] == \
        ["rejected by risk review"]
    decide(rejected, "approve")  # a final decision stands
    assert shop.view(rejected)["status"] == "rejected"


def test_no_card_secret_in_any_log_line(shop, caplog):
    caplog.set_level(logging.DEBUG)
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    secrets = [f"TOPSECRET-{i}" for i in range(3)]
    shop.import_keys(merchant, pid, secrets)
    order = shop.buy(pid, quantity=2)
    assert shop.view(order)["keys"] == secrets[:2]  # the secrets went through every step below
    r = shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/replace", json={"key_index": 0}, headers=merchant)
    assert r.status_code == 200, r.json
    assert shop.view(order)["keys"] == [secrets[2], secrets[1]]
    shop.jobs()
    text = caplog.text
    assert all(secret not in text for secret in secrets)
    metrics_text = shop.delivery.get("/delivery/metrics").data.decode()
    assert all(secret not in metrics_text for secret in secrets)


def test_logged_in_buyer_is_carried_on_the_order_events(shop):
    from shared.auth import issue_user_token
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["K1"])
    secret = shop.system.settings["delivery"].token_secret
    r = shop.delivery.post("/delivery/v1/orders", json={"product_id": pid, "quantity": 1, "email": "u@example.com"},
                           headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 401
    r = shop.delivery.post("/delivery/v1/orders", json={"product_id": pid, "quantity": 1, "email": "u@example.com",
                                                        "ref_code": "ABC"},
                           headers={"Authorization": "Bearer " + issue_user_token(secret, "usr_42")})
    assert r.status_code == 201
    order = r.json
    shop.drain()  # risk's decision is in before the buyer pays
    shop.notify(order["order_no"], order["amount_cents"], "t")
    created, _, delivered = (e["payload"] for e in _events(shop))
    assert created["buyer_user_id"] == delivered["buyer_user_id"] == "usr_42"
    assert delivered["ref_code"] == "ABC"
