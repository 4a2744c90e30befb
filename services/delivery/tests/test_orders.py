from datetime import timedelta

from services.delivery import domain
from services.delivery.models import Order
from shared.events import utcnow


def _stocked(shop, keys=("K1", "K2", "K3"), **product):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant, **product)
    shop.import_keys(merchant, pid, list(keys))
    return merchant, pid


def test_order_reserves_and_prices_from_projection(shop):
    _, pid = _stocked(shop, price_cents=1234)
    r = shop.order(pid, quantity=2)
    assert r.status_code == 201
    body = r.json
    assert body["amount_cents"] == 2468 and body["currency"] == "CNY" and body["status"] == "pending"
    assert body["payment"]["provider"] == "sandbox" and body["order_no"] in body["payment"]["pay_url"]
    assert shop.order(pid, quantity=2).status_code == 409  # only one key left
    assert shop.order(pid, quantity=1).status_code == 201


def test_bad_orders_are_4xx_and_change_nothing(shop):
    merchant, pid = _stocked(shop, max_per_order=2)
    cases = [
        ({"product_id": "prd_nope", "quantity": 1, "email": "a@b.co"}, 422),
        ({"product_id": pid, "quantity": 0, "email": "a@b.co"}, 422),
        ({"product_id": pid, "quantity": 3, "email": "a@b.co"}, 422),
        ({"product_id": pid, "quantity": 1, "email": "not-an-email"}, 422),
        ({"product_id": pid, "quantity": "1", "email": "a@b.co"}, 422),
        ({"product_id": pid, "quantity": 1, "email": "a@b.co", "price_cents": 1}, 422),
    ]
    for body, status in cases:
        r = shop.delivery.post("/delivery/v1/orders", json=body)
        assert r.status_code == status, (body, r.json)
        assert set(r.json["error"]) == {"code", "message", "fields"}
    assert shop.delivery.post("/delivery/v1/orders", data="{", content_type="application/json").status_code == 400
    summary = shop.delivery.get(f"/delivery/v1/products/{pid}/keys", headers=merchant).json
    assert summary["available"] == 3


def test_an_order_number_already_taken_is_drawn_again(shop, monkeypatch):
    merchant, pid = _stocked(shop)
    first = shop.order(pid).json["order_no"]
    drawn = iter([first, first, "261122080000000000000001"])
    monkeypatch.setattr(domain, "new_order_no", lambda now: next(drawn))
    r = shop.order(pid)
    assert r.status_code == 201 and r.json["order_no"] == "261122080000000000000001"
    with shop.system.apps["delivery"].extensions["linkshop"].db.read() as s:
        assert s.query(Order).count() == 2
    assert shop.delivery.get(f"/delivery/v1/products/{pid}/keys", headers=merchant).json["available"] == 1


def test_out_of_stock_is_409(shop):
    _, pid = _stocked(shop, keys=["ONLY"])
    assert shop.order(pid).status_code == 201
    r = shop.order(pid)
    assert r.status_code == 409 and r.json["error"]["code"] == "out_of_stock"


def test_order_is_read_only_with_its_token_or_by_its_merchant(shop):
    merchant, pid = _stocked(shop)
    order = shop.buy(pid, quantity=2)
    view = shop.view(order)
    assert view["status"] == "delivered" and view["keys"] == ["K1", "K2"]
    assert view["instructions"] == "Redeem in the game"
    no = order["order_no"]
    assert shop.delivery.get(f"/delivery/v1/orders/{no}?token=wrong").status_code == 404
    assert shop.delivery.get(f"/delivery/v1/orders/{no}").status_code == 404
    assert shop.delivery.get(f"/delivery/v1/orders/{no}", headers=merchant).json["keys"] == ["K1", "K2"]
    other, _ = shop.merchant("Other")
    assert shop.delivery.get(f"/delivery/v1/orders/{no}", headers=other).status_code == 404


def test_keys_hidden_until_paid(shop):
    _, pid = _stocked(shop)
    order = shop.order(pid).json
    view = shop.view(order)
    assert view["status"] == "pending" and view["keys"] == []


def test_reusable_key_goes_to_every_buyer_and_never_runs_out(shop):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["https://example.com/shared-download"], reusable=True)
    orders = [shop.buy(pid, quantity=1, email=f"b{i}@example.com") for i in range(25)]
    for order in orders:
        assert shop.view(order)["keys"] == ["https://example.com/shared-download"]
    shop.jobs()
    product = shop.catalog.get(f"/catalog/v1/products/{pid}").json
    assert product["stock_unlimited"] is True and product["stock"] is None


def test_expired_reservation_returns_to_stock(shop):
    merchant, pid = _stocked(shop, keys=["ONE"])
    order = shop.order(pid).json
    assert shop.order(pid).status_code == 409
    _age_order(shop, order["order_no"])
    shop.jobs()
    assert shop.view(order)["status"] == "expired"
    assert shop.order(pid, email="other@example.com").status_code == 201


def test_late_payment_rereserves_or_waits_for_stock(shop):
    merchant, pid = _stocked(shop, keys=["ONE"])
    late = shop.order(pid).json
    _age_order(shop, late["order_no"])
    shop.jobs()
    rival = shop.buy(pid, email="rival@example.com")  # takes the key the late buyer had reserved
    assert shop.view(rival)["keys"] == ["ONE"]
    assert shop.notify(late["order_no"], late["amount_cents"], "late-txn").json["outcome"] == "awaiting_stock"
    assert shop.view(late)["status"] == "awaiting_stock"
    shop.import_keys(merchant, pid, ["TWO"])
    assert shop.view(late)["keys"] == ["TWO"]
    assert shop.view(late)["status"] == "delivered"


def test_late_payment_rereserves_when_stock_is_there(shop):
    _, pid = _stocked(shop, keys=["ONE", "TWO"])
    late = shop.order(pid).json
    _age_order(shop, late["order_no"])
    shop.jobs()
    assert shop.notify(late["order_no"], late["amount_cents"], "t").json["outcome"] == "delivered"
    assert len(shop.view(late)["keys"]) == 1


def test_payment_after_expiry_time_but_before_the_sweep_keeps_its_keys(shop):
    _, pid = _stocked(shop, keys=["ONE"])
    order = shop.order(pid).json
    _age_order(shop, order["order_no"])
    assert shop.notify(order["order_no"], order["amount_cents"], "t").json["outcome"] == "delivered"
    assert shop.view(order)["keys"] == ["ONE"]


def _age_order(shop, order_no):
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    with db.write() as s:
        s.get(Order, order_no).expires_at = utcnow() - timedelta(seconds=1)


def test_awaiting_orders_served_first_paid_first(shop):
    merchant, pid = _stocked(shop, keys=["A"])
    first, second = shop.order(pid).json, None
    _age_order(shop, first["order_no"])
    shop.jobs()
    shop.buy(pid, email="x@example.com")
    second = shop.order(pid, email="y@example.com")
    assert second.status_code == 409
    shop.notify(first["order_no"], first["amount_cents"], "t1")
    shop.import_keys(merchant, pid, ["B", "C"])
    assert shop.view(first)["keys"] == ["B"]


def test_domain_expiry_batch(shop):
    _, pid = _stocked(shop, keys=[f"K{i}" for i in range(5)])
    orders = [shop.order(pid, email=f"u{i}@example.com").json for i in range(5)]
    for order in orders:
        _age_order(shop, order["order_no"])
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    with db.write() as s:
        assert domain.expire_reservations(s, utcnow(), limit=3) == 3
    with db.write() as s:
        assert domain.expire_reservations(s, utcnow(), limit=3) == 2
