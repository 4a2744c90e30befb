"""Reservations that expire: delivery restarted with LINKSHOP_RESERVATION_SECONDS=2."""
from __future__ import annotations

import pytest

from .helpers import eventually

RESERVATION_S = 2


@pytest.fixture(scope="module")
def short_reservations(stack):
    stack.restart_service("delivery", {"LINKSHOP_RESERVATION_SECONDS": RESERVATION_S}, grace=10)
    yield stack
    stack.restart_service("delivery", None, grace=10)


def _wait_expired(shop, order, timeout=15):
    eventually(lambda: shop.order_status(order) == "expired", timeout, 0.2, f"order {order['order_no']} expires")


def test_expired_reservation_returns_to_stock_and_late_payment_re_reserves(short_reservations, shop):
    merchant = shop.create_merchant()
    product = shop.create_product(merchant)
    keys = shop.new_keys(1)
    shop.import_keys(merchant, product["id"], keys)
    late = shop.order(product["id"]).json()
    assert shop.order(product["id"], expect=None).status_code == 409  # the only key is reserved
    shop.wait_catalog(product["id"], stock=0)
    _wait_expired(shop, late)
    shop.wait_catalog(product["id"], stock=1)  # back in stock, and the catalog knows it
    # paid after expiry with the key still free: re-reserved and delivered
    assert shop.pay(late).status_code == 200
    view = shop.wait_delivered(late)
    assert view["keys"] == keys
    shop.wait_catalog(product["id"], stock=0, sold=1)


def test_late_payment_without_stock_waits_and_is_delivered_on_import(short_reservations, shop):
    merchant = shop.create_merchant()
    product = shop.create_product(merchant)
    first_keys = shop.new_keys(1)
    shop.import_keys(merchant, product["id"], first_keys)
    late = shop.order(product["id"]).json()
    _wait_expired(shop, late)
    # someone else buys the returned key meanwhile
    other = shop.order(product["id"]).json()
    assert shop.pay(other).status_code == 200
    assert shop.wait_delivered(other)["keys"] == first_keys
    # the late payment stands, but there is nothing to deliver yet (risk approved it long ago)
    assert shop.pay(late).status_code == 200
    assert shop.wait_status(late, "awaiting_stock", "delivered")["status"] == "awaiting_stock"
    new_keys = shop.new_keys(2)
    shop.import_keys(merchant, product["id"], new_keys)
    view = eventually(lambda: (v := shop.get_order(late["order_no"], late["access_token"]).json())["status"]
                      == "delivered" and v, 10, 0.1, "the awaiting order is delivered on import")
    assert len(view["keys"]) == 1 and view["keys"][0] in new_keys
    shop.wait_catalog(product["id"], stock=1, sold=2)
