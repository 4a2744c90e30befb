import json

from sqlalchemy import select

from services.delivery.models import outbox


def _events(shop, type_):
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    with db.read() as s:
        bodies = s.scalars(select(outbox.table.c.body).where(outbox.table.c.type == type_).order_by(outbox.table.c.id))
        return [json.loads(b)["payload"] for b in bodies]


def _delivered(shop, quantity=3, price=1000, keys=None):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant, price_cents=price)
    shop.import_keys(merchant, pid, keys or [f"K{i}" for i in range(6)])
    return merchant, pid, shop.buy(pid, quantity=quantity)


def test_replace_swaps_a_bad_key_and_retires_it(shop):
    merchant, pid, order = _delivered(shop, quantity=2)
    no = order["order_no"]
    r = shop.delivery.post(f"/delivery/v1/orders/{no}/replace", json={"key_index": 1}, headers=merchant)
    assert r.status_code == 200
    assert shop.view(order)["keys"] == ["K0", "K2"]
    assert shop.delivery.get(f"/delivery/v1/products/{pid}/keys", headers=merchant).json["retired"] == 1
    # the retired key is never sold again
    others = [shop.buy(pid, email=f"o{i}@example.com") for i in range(3)]
    assert sorted(k for o in others for k in shop.view(o)["keys"]) == ["K3", "K4", "K5"]
    r = shop.delivery.post(f"/delivery/v1/orders/{no}/replace", json={"key_index": 0}, headers=merchant)
    assert r.status_code == 409 and r.json["error"]["code"] == "out_of_stock"


def test_replace_refusals(shop):
    merchant, pid, order = _delivered(shop, quantity=1)
    no = order["order_no"]
    assert shop.delivery.post(f"/delivery/v1/orders/{no}/replace", json={"key_index": 0}).status_code == 401
    other, _ = shop.merchant("Other")
    assert shop.delivery.post(f"/delivery/v1/orders/{no}/replace", json={"key_index": 0}, headers=other).status_code == 404
    r = shop.delivery.post(f"/delivery/v1/orders/{no}/replace", json={"key_index": 5}, headers=merchant)
    assert r.status_code == 422 and "key_index" in r.json["error"]["fields"]
    pending = shop.order(pid).json
    r = shop.delivery.post(f"/delivery/v1/orders/{pending['order_no']}/replace", json={"key_index": 0}, headers=merchant)
    assert r.status_code == 409


def test_partial_refunds_add_up_to_the_amount(shop):
    merchant, _, order = _delivered(shop, quantity=3, price=1001)
    no = order["order_no"]
    amounts = []
    for _ in range(3):
        r = shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"quantity": 1, "reason": "bad"}, headers=merchant)
        assert r.status_code == 201
        amounts.append(r.json["amount_cents"])
    assert sum(amounts) == 3003 and amounts == [1001, 1001, 1001]
    assert shop.view(order)["status"] == "refunded"
    r = shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"reason": "again"}, headers=merchant)
    assert r.status_code == 409
    events = _events(shop, "delivery.order.refunded")
    assert [e["quantity"] for e in events] == [1, 1, 1]
    assert events[-1]["total_refunded_cents"] == 3003 and events[-1]["delivered"] is True


def test_uneven_partial_refund_rounding(shop):
    merchant, _, order = _delivered(shop, quantity=3, price=1000)
    order_amount = order["amount_cents"]
    no = order["order_no"]
    a = shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"quantity": 2, "reason": "x"}, headers=merchant).json
    b = shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"reason": "rest"}, headers=merchant).json
    assert (a["amount_cents"], b["amount_cents"]) == (2000, 1000)
    assert a["amount_cents"] + b["amount_cents"] == order_amount


def test_refund_once_with_idempotency_key(shop):
    merchant, _, order = _delivered(shop, quantity=2)
    no = order["order_no"]
    headers = {**merchant, "Idempotency-Key": "refund-1"}
    first = shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"quantity": 1, "reason": "bad"}, headers=headers)
    again = shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"quantity": 1, "reason": "bad"}, headers=headers)
    assert first.status_code == again.status_code == 201 and first.json == again.json
    other = shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"quantity": 2, "reason": "bad"}, headers=headers)
    assert other.status_code == 409 and other.json["error"]["code"] == "idempotency_conflict"
    assert len(_events(shop, "delivery.order.refunded")) == 1


def test_admin_may_refund_and_strangers_may_not(shop):
    merchant, pid, order = _delivered(shop, quantity=1)
    no = order["order_no"]
    assert shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"reason": "x"}).status_code == 401
    other, _ = shop.merchant("Other")
    assert shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"reason": "x"}, headers=other).status_code == 404
    assert shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"quantity": 0, "reason": "x"},
                              headers=shop.admin).status_code == 422
    assert shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"quantity": 2, "reason": "x"},
                              headers=shop.admin).status_code == 422
    assert shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"reason": "x"}, headers=shop.admin).status_code == 201
    pending = shop.order(pid).json
    r = shop.delivery.post(f"/delivery/v1/orders/{pending['order_no']}/refund", json={"reason": "x"}, headers=merchant)
    assert r.status_code == 409


def test_refunding_an_undelivered_order_returns_its_keys(shop):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["A"])
    first = shop.order(pid).json
    from datetime import timedelta
    from services.delivery.models import Order
    from shared.events import utcnow
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    with db.write() as s:
        s.get(Order, first["order_no"]).expires_at = utcnow() - timedelta(seconds=1)
    shop.jobs()
    shop.buy(pid, email="rival@example.com")
    shop.notify(first["order_no"], first["amount_cents"], "late")
    assert shop.view(first)["status"] == "awaiting_stock"
    r = shop.delivery.post(f"/delivery/v1/orders/{first['order_no']}/refund", json={"quantity": 1, "reason": "no stock"},
                           headers=merchant)
    assert r.status_code == 201 and r.json["status"] == "refunded"
    shop.import_keys(merchant, pid, ["B"])
    assert shop.view(first)["keys"] == []  # a refunded order is not delivered later


def test_lookup_shows_keys_only_with_the_query_password(shop):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["SECRET-A", "SECRET-B"])
    order = shop.buy(pid, email="Buyer@Example.com", query_password="hunter22")
    no = order["order_no"]
    by_email = shop.delivery.post("/delivery/v1/orders/lookup", json={"email": "buyer@example.com"}).json["orders"]
    assert [o["order_no"] for o in by_email] == [no] and "keys" not in by_email[0]
    wrong = shop.delivery.post("/delivery/v1/orders/lookup",
                               json={"email": "buyer@example.com", "order_no": no, "query_password": "nope"}).json
    assert "keys" not in wrong["orders"][0]
    right = shop.delivery.post("/delivery/v1/orders/lookup",
                               json={"email": "buyer@example.com", "order_no": no, "query_password": "hunter22"}).json
    assert right["orders"][0]["keys"] == ["SECRET-A"]
    assert shop.delivery.post("/delivery/v1/orders/lookup", json={"email": "bad"}).status_code == 422


def test_lookup_is_rate_limited(shop):
    codes = [shop.delivery.post("/delivery/v1/orders/lookup", json={"email": "x@example.com"}).status_code
             for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]


def test_old_rate_limit_windows_are_forgotten(shop):
    from datetime import timedelta
    from services.delivery import domain
    from shared.events import utcnow
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    with db.write() as s:
        domain.rate_limited(s, "old", 5, utcnow() - timedelta(minutes=10))
        domain.rate_limited(s, "new", 5, utcnow())
    with db.write() as s:
        assert domain.forget_old_rate_windows(s, utcnow()) == 1


def test_merchant_refunds_close_with_the_refund_window(make_shop):
    shop = make_shop(LINKSHOP_REFUND_WINDOW_SECONDS=0)
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["A", "B"])
    order = shop.buy(pid)
    import time
    time.sleep(0.01)
    no = order["order_no"]
    r = shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"reason": "late"}, headers=merchant)
    assert r.status_code == 409 and r.json["error"]["code"] == "refund_window_closed"
    r = shop.delivery.post(f"/delivery/v1/orders/{no}/refund", json={"reason": "operator"}, headers=shop.admin)
    assert r.status_code == 201
