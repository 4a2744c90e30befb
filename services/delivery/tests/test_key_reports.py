"""A buyer reports a bad key from the order page; the merchant sees the queue and replaces
the key, which closes the report and shows the buyer the new key. Also: the storefront's list
of payment choices, and the order's language."""
from tests.kit import outbox_events


def _delivered(shop, keys=("K1", "K2", "K3")):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, list(keys))
    order = shop.buy(pid, quantity=2)
    shop.drain()
    return merchant, order


def _report(shop, order, token=None, **body):
    return shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/reports?token={token or order['access_token']}",
                              json={"key_index": 1, "reason": "已被使用 / already redeemed", **body})


def test_a_reported_key_reaches_the_merchant_and_its_replacement_the_buyer(shop):
    merchant, order = _delivered(shop)
    before = shop.view(order)["keys"]
    r = _report(shop, order)
    assert r.status_code == 201 and r.json["status"] == "open" and r.json["key_index"] == 1
    assert [(x["key_index"], x["status"]) for x in shop.view(order)["reports"]] == [(1, "open")]
    queue = shop.delivery.get("/delivery/v1/reports", headers=merchant).json["reports"]
    assert [(x["order_no"], x["key_index"], x["reason"]) for x in queue] == \
        [(order["order_no"], 1, "已被使用 / already redeemed")]
    assert [e["payload"]["key_index"] for e in outbox_events(shop.system, "delivery", "delivery.key.reported")] == [1]
    assert _report(shop, order).json["error"]["code"] == "already_reported"  # one open report per key
    r = shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/replace", json={"key_index": 1}, headers=merchant)
    assert r.status_code == 200
    after = shop.view(order)
    assert after["keys"][0] == before[0] and after["keys"][1] != before[1] and after["keys"][1] == "K3"
    assert [(x["key_index"], x["status"]) for x in after["reports"]] == [(1, "replaced")]
    assert shop.delivery.get("/delivery/v1/reports", headers=merchant).json["reports"] == []
    assert _report(shop, order).status_code == 201  # the new key may be bad too


def test_only_the_buyer_reports_and_only_a_delivered_key(shop):
    merchant, order = _delivered(shop)
    assert _report(shop, order, token="wrong").status_code == 404
    r = shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/reports", json={"key_index": 0, "reason": "x"},
                           headers=merchant)
    assert r.status_code == 422 or r.status_code == 404  # the merchant replaces, never reports
    assert _report(shop, order, key_index=5).status_code == 422
    assert _report(shop, order, reason="").status_code == 422
    assert shop.delivery.get("/delivery/v1/reports").status_code == 401
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["P1"])
    pending = shop.order(pid).json
    r = _report(shop, pending, key_index=0)
    assert r.status_code == 409 and r.json["error"]["code"] == "not_delivered"


def test_the_storefront_reads_the_payment_choices_and_the_order_keeps_its_language(shop):
    r = shop.delivery.get("/delivery/v1/payments/providers")
    assert r.status_code == 200 and r.json == {"providers": [{"name": "sandbox", "pay_types": ["default"]}],
                                               "default": "sandbox"}
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["K1", "K2"])
    assert shop.view(shop.order(pid, locale="en").json)["locale"] == "en"
    assert shop.view(shop.order(pid).json)["locale"] == "zh-CN"
    assert shop.order(pid, locale="fr").status_code == 422
