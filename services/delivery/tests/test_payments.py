import threading

import pytest

from services.delivery.models import OrderKey, Payment
from sqlalchemy import func, select


def _pending_order(shop, keys=("K1", "K2")):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, list(keys))
    return shop.order(pid).json


def _rejected(shop, reason):
    return shop.metric("linkshop_payment_notices_total", provider="sandbox", outcome=reason)


def test_bad_or_missing_signature_is_401_and_counted(shop):
    order = _pending_order(shop)
    before = _rejected(shop, "bad_signature")
    r = shop.notify(order["order_no"], order["amount_cents"], signature="deadbeef")
    assert r.status_code == 401 and r.json["error"]["code"] == "bad_signature"
    r = shop.notify(order["order_no"], order["amount_cents"], secret=b"wrong-secret")
    assert r.status_code == 401
    r = shop.delivery.post("/delivery/v1/payments/sandbox/notify", json={"order_no": order["order_no"]})
    assert r.status_code == 401
    assert _rejected(shop, "bad_signature") == before + 3
    assert shop.view(order)["status"] == "pending"


def test_wrong_amount_or_currency_is_422_and_order_stays_unpaid(shop):
    order = _pending_order(shop)
    before = _rejected(shop, "amount_mismatch")
    r = shop.notify(order["order_no"], order["amount_cents"] - 1)
    assert r.status_code == 422 and r.json["error"]["code"] == "amount_mismatch"
    r = shop.notify(order["order_no"], order["amount_cents"], currency="USD", txn_id="txn-2")
    assert r.status_code == 422
    assert _rejected(shop, "amount_mismatch") == before + 2
    assert shop.view(order)["status"] == "pending"
    assert shop.notify(order["order_no"], order["amount_cents"]).json["outcome"] == "delivered"


def test_status_other_than_paid_changes_nothing(shop):
    order = _pending_order(shop)
    r = shop.notify(order["order_no"], order["amount_cents"], status="failed")
    assert r.status_code == 200 and r.json["outcome"] == "not_paid"
    assert shop.view(order)["status"] == "pending"


def test_replayed_txn_changes_nothing_and_is_counted(shop):
    order = _pending_order(shop)
    assert shop.notify(order["order_no"], order["amount_cents"]).json["outcome"] == "delivered"
    before = _rejected(shop, "replay")
    r = shop.notify(order["order_no"], order["amount_cents"])
    assert r.status_code == 200 and r.json["outcome"] == "replay"
    assert _rejected(shop, "replay") == before + 1
    shop.drain()
    assert len(shop.view(order)["keys"]) == 1


def test_unknown_order_is_404(shop):
    _pending_order(shop)
    r = shop.notify("99999999999999999999", 1000)
    assert r.status_code == 404


def test_unknown_provider_is_404(shop):
    r = shop.delivery.post("/delivery/v1/payments/alipay/notify", data=b"{}")
    assert r.status_code == 404


def test_second_payment_of_a_paid_order_is_recorded_not_delivered(shop):
    order = _pending_order(shop)
    shop.notify(order["order_no"], order["amount_cents"], "first")
    r = shop.notify(order["order_no"], order["amount_cents"], "second")
    assert r.json["outcome"] == "duplicate_payment"
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    with db.read() as s:
        statuses = sorted(s.scalars(select(Payment.status)).all())
        assert statuses == ["applied", "duplicate"]
        assert s.scalar(select(func.count()).select_from(OrderKey)) == 1


def test_signed_malformed_notice_is_400(shop):
    import hashlib, hmac
    body = b'{"order_no": 5}'
    sig = hmac.new(b"sandbox-secret", body, hashlib.sha256).hexdigest()
    r = shop.delivery.post("/delivery/v1/payments/sandbox/notify", data=body, headers={"X-Sandbox-Signature": sig})
    assert r.status_code == 400 and r.json["error"]["fields"]


@pytest.mark.commits  # twenty threads, each on its own connection
def test_twenty_identical_callbacks_at_once_deliver_once(shop):
    order = _pending_order(shop, keys=[f"K{i}" for i in range(5)])
    shop.drain()
    app = shop.system.apps["delivery"]
    results, barrier = [], threading.Barrier(20)

    def call():
        client = app.test_client()
        barrier.wait()
        import hashlib, hmac, json
        body = json.dumps({"order_no": order["order_no"], "amount_cents": order["amount_cents"],
                           "currency": "CNY", "txn_id": "same", "status": "paid"}).encode()
        sig = hmac.new(b"sandbox-secret", body, hashlib.sha256).hexdigest()
        results.append(client.post("/delivery/v1/payments/sandbox/notify", data=body,
                                   headers={"X-Sandbox-Signature": sig}).json["outcome"])

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["delivered"] + ["replay"] * 19
    shop.drain()
    delivered = [e for e in _published(shop) if e == "delivery.order.delivered"]
    assert len(delivered) == 1
    # the catalog heard of one sale, not twenty
    assert shop.system.bus.pending("catalog") == 0
    assert shop.catalog.get(f"/catalog/v1/products/{shop.view(order)['product_id']}").json["sold"] == 1


def _published(shop):
    import json
    from services.delivery.models import outbox
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    with db.read() as s:
        return [json.loads(b)["type"] for b in s.scalars(select(outbox.table.c.body))]


def test_pay_page_makes_the_same_signed_call(shop):
    order = _pending_order(shop)
    path = order["payment"]["pay_url"].split("8080", 1)[1]
    page = shop.delivery.get(path)
    assert page.status_code == 200 and b"Pay (sandbox)" in page.data
    r = shop.delivery.post(path)
    assert r.status_code == 303
    page = shop.delivery.get(path)
    assert b"K1" in page.data and b"delivered" in page.data
    assert shop.delivery.get(path.split("?")[0] + "?token=nope").status_code == 404


def test_no_provider_enabled_is_503_and_reserves_nothing(make_shop):
    shop = make_shop(LINKSHOP_SANDBOX_ENABLED="false")
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["K1"])
    r = shop.order(pid)
    assert r.status_code == 503 and r.json["error"]["code"] == "no_payment_provider"
    stock = shop.delivery.get(f"/delivery/v1/products/{pid}/keys", headers=merchant).json
    assert stock["available"] == 1


def test_unknown_or_disabled_provider_or_pay_type_is_422(shop):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["K1"])
    for body, field in (({"provider": "epay"}, "provider"), ({"provider": "paypal"}, "provider"),
                        ({"provider": "sandbox", "pay_type": "wxpay"}, "pay_type")):
        r = shop.order(pid, **body)
        assert r.status_code == 422 and field in r.json["error"]["fields"], (body, r.json)
    r = shop.order(pid, provider="sandbox")
    assert r.status_code == 201 and r.json["payment"]["provider"] == "sandbox"
    assert r.json["payment"]["pay_url"].endswith(f"/sandbox/pay/{r.json['order_no']}?token={r.json['access_token']}")


def test_a_provider_half_configured_refuses_to_start(tmp_path):
    from shared.config import ConfigError, load_settings
    from services.delivery.config import load_config
    env = {"LINKSHOP_VAR_DIR": str(tmp_path), "LINKSHOP_EPAY_GATEWAY": "https://pay.example.com"}
    with pytest.raises(ConfigError, match="LINKSHOP_EPAY_PID, LINKSHOP_EPAY_KEY"):
        load_config(load_settings("delivery", env), env)
    env["LINKSHOP_PAYMENT_PROVIDERS"] = "paypal"
    with pytest.raises(ConfigError, match="unknown providers"):
        load_config(load_settings("delivery", env | {"LINKSHOP_EPAY_GATEWAY": ""}), env | {"LINKSHOP_EPAY_GATEWAY": ""})


def test_a_provider_that_cannot_start_the_payment_is_502_and_the_keys_go_back(shop, monkeypatch):
    from services.delivery.payments import ProviderError
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["K1"])
    sandbox = shop.system.apps["delivery"].extensions["linkshop"].extra["providers"]["sandbox"]

    def down(checkout):
        raise ProviderError("sandbox: ConnectTimeout")
    monkeypatch.setattr(sandbox, "start", down)
    r = shop.order(pid)
    assert r.status_code == 502 and r.json["error"]["code"] == "provider_unavailable"
    assert shop.delivery.get(f"/delivery/v1/products/{pid}/keys", headers=merchant).json["available"] == 1
    monkeypatch.undo()
    assert shop.order(pid).status_code == 201


def test_epay_signs_the_string_a_published_example_spells_out():
    """The epay-compatible gateway AliMPay (github.com/chanhanzhan/AliMPay, its 易支付/码支付
    兼容性说明) publishes a signing example: these parameters and key give this string. (Its
    printed digest, 2fbd7fec…, is not the MD5 of its own string, so the string is what we pin.)"""
    import hashlib

    from services.delivery.payments.epay import sign
    params = {"pid": "1001001276912812", "type": "alipay", "out_trade_no": "TEST123456",
              "notify_url": "http://example.com/notify", "return_url": "http://example.com/return",
              "name": "测试商品", "money": "0.01", "sign_type": "MD5", "sign": "ignored", "param": ""}
    published = ("money=0.01&name=测试商品&notify_url=http://example.com/notify&out_trade_no=TEST123456"
                 "&pid=1001001276912812&return_url=http://example.com/return&type=alipay")
    key = "f872e1c662d41cf218b5dfa8328ae455"
    assert sign(params, key) == hashlib.md5((published + key).encode("utf-8")).hexdigest()
