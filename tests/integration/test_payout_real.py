"""Payout over the real processes (gunicorn + workers, PostgreSQL, RabbitMQ): the design's
example order ends with exactly its postings, and 50 concurrent withdrawals against one
balance never overdraw it (the reservation is one conditional UPDATE on PostgreSQL).

Risk is required, as in production: every withdrawal waits for risk.withdrawal.assessed, so
the withdrawing user is a real one (registered through referral), whom risk knows."""
from __future__ import annotations

import secrets

import requests

from .helpers import HTTP_TIMEOUT, eventually, fund_user, parallel


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_design_example_ends_with_exactly_its_postings(shop, stack, run):
    """100.00 paid, fee 2%, cost 60.00, 8%/4%/2%: 2.00 to the platform, 8.00/4.00/2.00 to the
    upline, 84.00 to the merchant, every posting summing to the amount paid."""
    payout, delivery = stack.url("payout"), stack.url("delivery")
    admin = _bearer(run.env["LINKSHOP_ADMIN_TOKEN"])
    merchant = shop.create_merchant()
    product = shop.create_product(merchant, price_cents=10000, cost_cents=6000,
                                  commission={"levels_bps": [800, 400, 200]})
    shop.import_keys(merchant, product["id"], shop.new_keys(1))
    a, b, c, buyer = shop.register_chain(4)
    r = requests.post(f"{delivery}/delivery/v1/orders", timeout=HTTP_TIMEOUT, headers=_bearer(buyer["token"]),
                      json={"product_id": product["id"], "quantity": 1, "email": f"it-{secrets.token_hex(4)}@example.com"})
    assert r.status_code == 201, r.text
    order = r.json()
    run.credentials.append(order["access_token"])
    assert shop.pay(order).status_code == 200
    eventually(lambda: shop.order_status(order) == "delivered", 20, message="the order was never delivered")
    no = order["order_no"]

    def split():
        r = requests.get(f"{payout}/payout/v1/orders/{no}/split", headers=admin, timeout=HTTP_TIMEOUT)
        return r.json() if r.status_code == 200 and any(p["kind"] == "commission" for p in r.json()["postings"]) \
            else None
    body = eventually(split, 30, 0.2, "payout never posted the order's commission")
    m = f"merchant:{merchant['id']}"
    assert sorted((p["kind"], p["account"], p["amount_cents"]) for p in body["postings"]) == sorted([
        ("delivered", "provider:sandbox:clearing", -10000),
        ("delivered", "platform:fees", 200),
        ("delivered", f"{m}:pending", 9800),
        ("commission", f"{m}:pending", -1400),
        ("commission", f"user:{c['user_id']}:pending", 800),
        ("commission", f"user:{b['user_id']}:pending", 400),
        ("commission", f"user:{a['user_id']}:pending", 200),
    ])
    assert body["settled_cents"] == 10000 and body["by_account"][f"{m}:pending"] == 8400
    mine = requests.get(f"{payout}/payout/v1/accounts/{m}", headers=_bearer(merchant["api_key"]), timeout=HTTP_TIMEOUT)
    assert mine.status_code == 200 and mine.json()["pending_cents"] == 8400
    report = requests.get(f"{payout}/payout/v1/ledger/verify", headers=admin, timeout=HTTP_TIMEOUT).json()
    assert report["ok"] and report["imbalance_cents"] == 0, report


def test_fifty_concurrent_withdrawals_never_overdraw(stack, run, broker, shop):
    payout = stack.url("payout")
    admin = _bearer(run.env["LINKSHOP_ADMIN_TOKEN"])
    user = shop.register_chain(1)[0]
    user_id, token = user["user_id"], user["token"]
    order_no = fund_user(broker, int(run.env.get("LINKSHOP_HOLD_SECONDS", 604800)), user_id, 10000)
    account_url = f"{payout}/payout/v1/accounts/user:{user_id}"

    def account():
        return requests.get(account_url, headers=_bearer(token), timeout=HTTP_TIMEOUT).json()
    eventually(lambda: account()["available_cents"] == 10000, 30, 0.2, "the commission was never released")

    def withdraw(i):
        with requests.Session() as s:
            r = s.post(f"{payout}/payout/v1/withdrawals", timeout=60,
                       json={"amount_cents": 1000, "destination": f"acct-{i}"},
                       headers={**_bearer(token), "Idempotency-Key": f"it-{order_no}-{i}"})
            return r.status_code, (r.json().get("error") or {}).get("code")
    results = parallel(withdraw, range(50), workers=50)
    assert sum(1 for status, _ in results if status == 201) == 9, results  # 9 x (10.00 + 1.00) of 100.00
    assert {r for r in results if r[0] != 201} == {(409, "insufficient_funds")}
    # The sandbox provider may already have paid some (available → payouts) and risk may have
    # rejected some (reservation released): never more than was there is what must hold.
    after = account()
    assert 0 <= after["available_cents"] and after["available_cents"] + after["reserved_cents"] <= 10000

    def settled():  # approved by risk and paid by the sandbox provider (or rejected by risk)
        items = requests.get(f"{payout}/payout/v1/withdrawals", params={"owner": f"user:{user_id}"}, headers=admin,
                             timeout=HTTP_TIMEOUT).json()["items"]
        return items if all(w["status"] in ("paid", "rejected") for w in items) else None
    items = eventually(settled, 30, 0.2, "withdrawals were never paid or rejected")
    paid = sum(w["total_cents"] for w in items if w["status"] == "paid")
    final = account()
    assert final["debt_cents"] == 0 and final["reserved_cents"] == 0
    assert final["available_cents"] + paid == 10000
    report = requests.get(f"{payout}/payout/v1/ledger/verify", headers=admin, timeout=HTTP_TIMEOUT).json()
    assert report["ok"], report
