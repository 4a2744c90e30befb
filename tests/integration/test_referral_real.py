"""Referral over the real processes: a 3-level chain buys through delivery and the lines
appear; a refund reverses them; replayed and reordered events (published with pika straight
to the broker) change nothing."""
from __future__ import annotations

import json
import secrets
import time

import requests

from .helpers import HTTP_TIMEOUT, eventually


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _tapped(broker, type_: str, order_no: str) -> list[dict]:
    """Events of this type and order seen on the broker (the tap also holds other tests'
    deliberate poison, which is not JSON)."""
    found = []
    for _, body in broker.peek("it.tap"):
        try:
            event = json.loads(body)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == type_ and \
                (event.get("payload") or {}).get("order_no") == order_no:
            found.append(event)
    return found


def _lines(referral: str, user: dict) -> list:
    r = requests.get(f"{referral}/referral/v1/users/{user['user_id']}/commissions", headers=_bearer(user["token"]),
                     timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_chain_accrues_refund_reverses_replays_change_nothing(shop, stack, run, broker):
    referral, delivery = stack.url("referral"), stack.url("delivery")
    merchant = shop.create_merchant()
    product = shop.create_product(merchant, price_cents=10000, cost_cents=6000,
                                  commission={"levels_bps": [800, 400, 200]})
    shop.import_keys(merchant, product["id"], shop.new_keys(2, "REF"))
    a, b, c, buyer = shop.register_chain(4)
    r = requests.post(f"{delivery}/delivery/v1/orders", timeout=HTTP_TIMEOUT, headers=_bearer(buyer["token"]),
                      json={"product_id": product["id"], "quantity": 2, "email": f"ref-{secrets.token_hex(4)}@example.com"})
    assert r.status_code == 201, r.text
    order = r.json()
    run.credentials.append(order["access_token"])
    assert shop.pay(order).json()["outcome"] in ("paid", "delivered")  # paid: risk has not answered yet
    shop.wait_delivered(order)

    expected = {a["user_id"]: 400, b["user_id"]: 800, c["user_id"]: 1600}  # 2%, 4%, 8% of 200.00
    for user in (a, b, c):
        eventually(lambda u=user: [l["amount_cents"] for l in _lines(referral, u)] == [expected[u["user_id"]]],
                   timeout=20, message=f"no commission line for {user['user_id']}")
    explained = requests.get(f"{referral}/referral/v1/orders/{order['order_no']}/explain",
                             params={"user_id": c["user_id"]}, headers=_bearer(c["token"]), timeout=HTTP_TIMEOUT).json()
    assert explained["reason_code"] == "paid" and explained["level"] == 1

    # replay the delivered event (same id) and a copy under a new id: nothing changes
    delivered = _tapped(broker, "delivery.order.delivered", order["order_no"])
    assert len(delivered) == 1
    copy = {**delivered[0], "id": "00000000-0000-4000-8000-" + secrets.token_hex(6)}
    broker.publish("delivery.order.delivered", delivered[0])
    broker.publish("delivery.order.delivered", copy)

    # refund one of the two keys, then publish the refund event again and an older total
    r = requests.post(f"{delivery}/delivery/v1/orders/{order['order_no']}/refund", timeout=HTTP_TIMEOUT,
                      json={"quantity": 1, "reason": "bad key"}, headers=_bearer(merchant["api_key"]))
    assert r.status_code == 201, r.text
    eventually(lambda: _lines(referral, c)[0]["reversed_cents"] == 800, timeout=20, message="no reversal")
    refunded = _tapped(broker, "delivery.order.refunded", order["order_no"])
    broker.publish("delivery.order.refunded", refunded[0])
    broker.publish("delivery.order.refunded", {**refunded[0], "id": "00000000-0000-4000-8000-" + secrets.token_hex(6)})
    r = requests.post(f"{delivery}/delivery/v1/orders/{order['order_no']}/refund", timeout=HTTP_TIMEOUT,
                      json={"reason": "the rest"}, headers=_bearer(merchant["api_key"]))
    assert r.status_code == 201, r.text
    eventually(lambda: all(_lines(referral, u)[0]["status"] == "reversed" for u in (a, b, c)), timeout=20,
               message="the full refund did not reverse every line")
    # let the replays arrive after the final refund: a stale running total must not undo anything
    broker.publish("delivery.order.refunded", refunded[0])
    time.sleep(1.5)
    for user in (a, b, c):
        line = _lines(referral, user)
        assert len(line) == 1 and line[0]["reversed_cents"] == line[0]["amount_cents"] == expected[user["user_id"]]
