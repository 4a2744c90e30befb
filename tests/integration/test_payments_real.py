"""A real payment provider's protocol over the real processes: gunicorn's delivery API takes
epay's notices (GET, as the gateway sends them) from a local fake gateway, delivery's worker
asks the gateway about a lost notice and sends refunds to it."""
from __future__ import annotations

import requests

from .helpers import HTTP_TIMEOUT, eventually


def _stocked(shop, n=3):
    merchant = shop.create_merchant()
    product = shop.create_product(merchant, title="点卡 100", price_cents=1999)
    shop.import_keys(merchant, product["id"], shop.new_keys(n))
    return merchant, product


def _epay_order(shop, epay, product):
    order = shop.order(product["id"], provider="epay", pay_type="wxpay").json()
    assert order["payment"]["pay_url"].startswith(epay.url + "/submit.php?")
    assert epay.open(order["payment"]["pay_url"]).status_code == 200
    return order


def test_an_epay_notice_delivers_over_the_real_processes(shop, epay):
    merchant, product = _stocked(shop)
    order = _epay_order(shop, epay, product)
    assert epay.pay(order["order_no"]) == [(200, "success")]
    view = shop.wait_delivered(order)
    assert len(view["keys"]) == 1
    # a forged notice (another key) is refused with something other than "success"
    forged = epay.notice(order["order_no"], sign_with="forged-key", trade_no="T-forged")
    answer = requests.get(epay.payments[order["order_no"]]["notify_url"], params=forged, timeout=HTTP_TIMEOUT)
    assert answer.status_code == 400 and answer.text == "fail"


def test_a_lost_notice_is_found_by_the_workers_query(shop, epay):
    merchant, product = _stocked(shop)
    order = _epay_order(shop, epay, product)
    epay.lose_notices = True
    try:
        assert epay.pay(order["order_no"]) == []
    finally:
        epay.lose_notices = False
    assert len(shop.wait_delivered(order, timeout=60)["keys"]) == 1


def test_a_refund_goes_back_through_the_gateway(shop, epay):
    merchant, product = _stocked(shop)
    order = _epay_order(shop, epay, product)
    epay.pay(order["order_no"])
    shop.wait_delivered(order)
    r = requests.post(f"{shop.delivery}/delivery/v1/orders/{order['order_no']}/refund", json={"reason": "bad key"},
                      headers={"Authorization": f"Bearer {merchant['api_key']}"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 201, r.text

    def refunded():
        refunds = requests.get(f"{shop.delivery}/delivery/v1/orders/{order['order_no']}/refunds",
                               params={"token": order["access_token"]}, timeout=HTTP_TIMEOUT).json()["refunds"]
        return refunds if refunds[0]["status"] == "succeeded" else None
    eventually(refunded, 30, 0.2, "the worker sends the refund to the gateway")
    assert [x["out_trade_no"] for x in epay.refunds].count(order["order_no"]) == 1
