"""50 concurrent withdrawals against one balance never overdraw it (SQLite, embedded: every
write transaction is BEGIN IMMEDIATE; the reservation is one conditional UPDATE whose row
count decides). The PostgreSQL version is tests/integration/test_payout_real.py."""
import threading

import pytest

from shared.auth import issue_user_token
from shared.events import utcnow


@pytest.mark.commits  # fifty threads, each on its own connection
def test_fifty_threads_withdrawing_never_overdraw(shop):
    order = {"order_no": "ORD-C", "product_id": "prd", "merchant_id": "mer_c", "quantity": 1,
             "amount_cents": 20000, "cost_cents": 0, "currency": "CNY", "fee_bps": 0,
             "delivered_at": utcnow().isoformat()}
    shop.inject("delivery.order.delivered", order)
    shop.inject("referral.commission.accrued", {"order_no": "ORD-C", "merchant_id": "mer_c", "lines": [
        {"user_id": "usr_c", "level": 1, "rate_bps": 5000, "amount_cents": 10000}]})
    shop.jobs_at(shop.after_hold())
    assert shop.balances("user:usr_c") == (0, 10000, 0)
    token = issue_user_token(shop.system.settings["payout"].token_secret, "usr_c")
    app = shop.system.apps["payout"]
    start, results, lock = threading.Barrier(50), [], threading.Lock()

    def withdraw(i):
        client = app.test_client()
        start.wait()
        r = client.post("/payout/v1/withdrawals", json={"amount_cents": 1000, "destination": f"acct-{i}"},
                        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"c-{i}"})
        with lock:
            results.append((r.status_code, (r.get_json().get("error") or {}).get("code")))

    threads = [threading.Thread(target=withdraw, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 50
    accepted = [r for r in results if r[0] == 201]
    assert len(accepted) == 9  # 9 x (10.00 + 1.00 fee) = 99.00 of 100.00
    assert sorted(set(results) - {(201, None)}) == [(409, "insufficient_funds")]
    account = shop.account("user:usr_c")
    assert (account["available_cents"], account["reserved_cents"], account["debt_cents"]) == (100, 9900, 0)
    shop.jobs_at(utcnow())  # all paid: the balance never went below zero
    assert shop.balances("user:usr_c") == (0, 100, 0)
    assert shop.account("payouts")["accounts"][0]["balance_cents"] == 9000
    assert shop.verify()["ok"]
