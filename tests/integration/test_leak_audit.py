"""No card secret in any log line the run's processes wrote, nor in any event that crossed the
broker; no bearer credential in any log line (design §8, invariant 8).

Each test makes the traffic it audits (a purchase of known keys, read back by the buyer, looked
up, one key replaced; credentials of every kind used, the order token in a query string), then
audits everything the run wrote so far, so it means the same alone, first or last. What runs
after it is audited by the ``run`` fixture once every process has stopped (see audit.py): a
leak anywhere in the run fails the session.
"""
from __future__ import annotations

import json

import requests

from . import audit
from .helpers import HTTP_TIMEOUT, eventually


def _known_purchase(shop) -> tuple[dict, dict, list[str]]:
    """A delivered order of two known keys, its merchant, and the keys."""
    merchant = shop.create_merchant()
    product = shop.create_product(merchant, max_per_order=2)
    keys = shop.new_keys(3, "AUDIT")
    assert shop.import_keys(merchant, product["id"], keys) == {"imported": 3, "duplicates": 0, "rejected": 0}
    order = shop.order(product["id"], quantity=2, email="audit@example.com", query_password="audit-pass").json()
    assert shop.pay(order).status_code == 200
    view = shop.wait_delivered(order)
    assert len(view["keys"]) == 2 and set(view["keys"]) <= set(keys), view
    return order, merchant, keys


def _events_of(run, order_no: str) -> list[dict]:
    found = []
    for body in audit.events(run).values():
        try:
            event = json.loads(body)
        except ValueError:
            continue  # other tests' deliberate poison
        if isinstance(event, dict) and (event.get("payload") or {}).get("order_no") == order_no:
            found.append(event)
    return found


def test_no_card_secret_in_logs_or_events(run, shop):
    order, merchant, keys = _known_purchase(shop)
    no = order["order_no"]
    # every way a key leaves the vault: the buyer's view, the pay page, a look-up with the
    # query password, a replacement
    lookup = requests.post(f"{shop.delivery}/delivery/v1/orders/lookup", timeout=HTTP_TIMEOUT,
                           json={"email": "audit@example.com", "order_no": no, "query_password": "audit-pass"})
    assert lookup.status_code == 200 and len(lookup.json()["orders"][0]["keys"]) == 2, lookup.text
    page = requests.get(f"{shop.delivery}/delivery/v1/payments/sandbox/pay/{no}", timeout=HTTP_TIMEOUT,
                        params={"token": order["access_token"]})
    assert page.status_code == 200 and sum(k in page.text for k in keys) == 2
    replaced = requests.post(f"{shop.delivery}/delivery/v1/orders/{no}/replace", json={"key_index": 0},
                             headers={"Authorization": f"Bearer {merchant['api_key']}"}, timeout=HTTP_TIMEOUT)
    assert replaced.status_code == 200, replaced.text
    assert set(shop.wait_delivered(order)["keys"]) <= set(keys)
    # the audit reads what it must: this order's events crossed the broker and reached the tap
    eventually(lambda: {"delivery.order.delivered", "delivery.order.paid"} <= {e["type"] for e in _events_of(run, no)},
               20, 0.2, f"order {no}'s events never reached the tap")
    assert set(keys) <= set(run.card_secrets)
    logs = audit.logs(run)
    assert logs and sum(len(t) for t in logs.values()) > 0
    assert any(no.encode() in text for text in logs.values()), "the run's logs never saw the order"
    leaks = audit.card_secret_leaks(run)
    assert not leaks, f"{len(leaks)} card secrets leaked: {leaks[:10]}"


def test_no_bearer_credentials_in_logs(run, shop):
    """Order access tokens (they unlock the keys) and merchant API keys stay out of the logs too."""
    order, merchant, _keys = _known_purchase(shop)
    user = shop.register_chain(1)[0]
    # credentials in every place a request carries them: a query string, a header
    assert shop.get_order(order["order_no"], order["access_token"]).status_code == 200
    assert shop.get_order(order["order_no"], "not-" + order["access_token"]).status_code == 404
    me = requests.get(f"{shop.catalog}/catalog/v1/merchants/me", timeout=HTTP_TIMEOUT,
                      headers={"Authorization": f"Bearer {merchant['api_key']}"})
    assert me.status_code == 200, me.text
    mine = requests.get(f"{shop.stack.url('referral')}/referral/v1/users/{user['user_id']}", timeout=HTTP_TIMEOUT,
                        headers={"Authorization": f"Bearer {user['token']}"})
    assert mine.status_code == 200, mine.text
    assert {order["access_token"], merchant["api_key"], user["token"]} <= set(run.credentials)
    # the access log saw those requests (without their query strings): there was something to audit
    logs = audit.logs(run)
    assert any(f"/delivery/v1/orders/{order['order_no']}".encode() in text for text in logs.values()), \
        "no access log line for the order's reads"
    leaks = audit.credential_leaks(run)
    assert not leaks, f"{len(leaks)} credentials leaked: {leaks[:10]}"
