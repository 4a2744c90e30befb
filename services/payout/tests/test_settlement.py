"""The split of a sale, the hold, refunds before and after release, debts, risk holds."""
from datetime import timedelta

import pytest

from shared.config import ConfigError, load_settings
from shared.events import utcnow
from services.payout.config import load_config
from services.payout import worker as payout_worker


def _postings(split):
    return [(p["key"], p["account"], p["amount_cents"]) for p in split["postings"]]


def test_design_example_posts_exactly_the_design_split(shop):
    """100.00 paid, fee 2% → 2.00, cost 60.00, 8/4/2 → merchant ends with 84.00."""
    merchant, mid, pid = shop.seller()
    a, b, c, buyer = shop.chain(4)
    order = shop.buy_as(pid, buyer)
    no = order["order_no"]
    split = shop.split(no)
    m, clearing = f"merchant:{mid}", "provider:sandbox:clearing"
    assert sorted(_postings(split)) == sorted([
        (f"delivered:{no}", clearing, -10000),
        (f"delivered:{no}", f"{m}:pending", 9800),
        (f"delivered:{no}", "platform:fees", 200),
        (f"commission:{no}:1-2-3", f"{m}:pending", -1400),
        (f"commission:{no}:1-2-3", f"user:{c['user_id']}:pending", 800),
        (f"commission:{no}:1-2-3", f"user:{b['user_id']}:pending", 400),
        (f"commission:{no}:1-2-3", f"user:{a['user_id']}:pending", 200),
    ])
    assert split["settled_cents"] == 10000 == sum(c for a_, c in split["by_account"].items() if a_ != clearing)
    assert split["by_account"] == {clearing: -10000, "platform:fees": 200, f"{m}:pending": 8400,
                                   f"user:{c['user_id']}:pending": 800, f"user:{b['user_id']}:pending": 400,
                                   f"user:{a['user_id']}:pending": 200}
    assert shop.balances(m) == (8400, 0, 0)
    assert shop.balances(f"user:{c['user_id']}") == (800, 0, 0)
    assert shop.verify() == {"ok": True, "entries": 2, "first_broken": None, "imbalance_cents": 0,
                             "balance_mismatches": [], "head_ok": True}
    # the merchant reads its own split with its key; the buyer's upline cannot
    assert shop.split(no, headers=merchant)["amount_cents"] == 10000
    assert shop.payout.get(f"/payout/v1/orders/{no}/split", headers=shop.as_user(c)).status_code == 404


def test_nothing_is_available_before_the_hold_ends_then_one_release_per_order(shop):
    merchant, mid, pid = shop.seller()
    a, buyer = shop.chain(2)
    order = shop.buy_as(pid, buyer)
    hold = timedelta(seconds=shop.config.hold_seconds)
    assert hold == timedelta(days=7)
    shop.jobs_at(utcnow() + hold - timedelta(seconds=5))
    assert shop.balances(f"merchant:{mid}") == (9000, 0, 0)
    assert shop.balances(f"user:{a['user_id']}") == (800, 0, 0)
    assert shop.events("payout.settlement.released") == []

    later = shop.after_hold()
    shop.jobs_at(later)
    shop.jobs_at(later + timedelta(days=1))  # a second run finds nothing more to do
    assert shop.balances(f"merchant:{mid}") == (0, 9000, 0)
    assert shop.balances(f"user:{a['user_id']}") == (0, 800, 0)
    keys = [p["key"] for p in shop.split(order["order_no"])["postings"]]
    assert keys.count(f"release:{order['order_no']}") == 4 and not any(k.startswith("release:") and
                                                                      k.count(":") > 1 for k in keys)
    released = shop.events("payout.settlement.released")
    assert [e["payload"]["order_no"] for e in released] == [order["order_no"]]
    # referral learned it: the line is released there too
    assert shop.lines(a)[0]["status"] == "released"
    assert shop.verify()["ok"]


def test_refund_before_release_reverses_every_posting(shop):
    merchant, mid, pid = shop.seller()
    a, b, buyer = shop.chain(3)
    order = shop.buy_as(pid, buyer, quantity=3)  # 300.00
    shop.refund(merchant, order, quantity=1)
    split = shop.split(order["order_no"])
    assert split["refunded_cents"] == 10000 and split["settled_cents"] == 20000
    # 1/3 of the fee (600 → 200 back), the merchant's part, and referral's reversal of 1/3 of each line
    assert split["by_account"]["platform:fees"] == 400
    assert shop.balances(f"user:{b['user_id']}") == (1600, 0, 0)
    assert shop.balances(f"user:{a['user_id']}") == (800, 0, 0)
    assert shop.balances(f"merchant:{mid}") == (20000 - 400 - 2400, 0, 0)
    shop.refund(merchant, order)  # the rest
    split = shop.split(order["order_no"])
    assert split["settled_cents"] == 0
    assert split["by_account"] == {}  # every account nets to zero on this order
    for owner in (f"merchant:{mid}", f"user:{a['user_id']}", f"user:{b['user_id']}"):
        assert shop.balances(owner) == (0, 0, 0)
    shop.jobs_at(shop.after_hold())  # nothing left to release, nothing moves
    assert shop.balances(f"merchant:{mid}") == (0, 0, 0)
    assert shop.verify()["ok"]


def test_refund_after_release_and_withdrawal_leaves_a_debt_that_later_earnings_pay_first(shop):
    merchant, mid, pid = shop.seller(levels=(2000,))
    a, buyer = shop.chain(2)
    user = f"user:{a['user_id']}"
    first = shop.buy_as(pid, buyer)
    shop.jobs_at(shop.after_hold())
    assert shop.balances(user) == (0, 2000, 0)
    r = shop.withdraw(shop.as_user(a), 1500)  # fee max(1.00, 1%) = 1.00 → 16.00 reserved
    assert r.status_code == 201 and r.json["status"] == "requested" and r.json["total_cents"] == 1600
    assert shop.balances(user) == (0, 400, 0)  # reserved at once
    shop.jobs_at(shop.after_hold())  # auto-approved (under the limit), then paid by the sandbox
    assert shop.payout.get(f"/payout/v1/withdrawals/{r.json['id']}", headers=shop.as_user(a)).json["status"] == "paid"
    assert shop.balances(user) == (0, 400, 0)

    shop.refund(merchant, first)  # 16.00 of the 20.00 already left: the user now owes 16.00
    assert shop.balances(user) == (0, 0, 1600)
    assert shop.balances(f"merchant:{mid}") == (0, 0, 0)
    refused = shop.withdraw(shop.as_user(a), 1000)
    assert refused.status_code == 409 and refused.json["error"]["code"] == "account_in_debt"

    second = shop.buy_as(pid, buyer)  # a new sale: its 20.00 is pending, the debt stays
    assert shop.balances(user) == (2000, 0, 1600)
    shop.jobs_at(shop.after_hold())  # released into the same account: the debt is paid first
    assert shop.balances(user) == (0, 400, 0)
    assert shop.split(second["order_no"])["settled_cents"] == 10000
    # the first order nets to zero on every account; the payout and its fee stay where they went
    assert shop.split(first["order_no"])["by_account"] == {}
    assert shop.account("payouts")["accounts"] == [{"account": "payouts:sandbox", "balance_cents": 1500,
                                                     "reserved_cents": 0}]
    assert shop.account("platform")["accounts"][1] == {"account": "platform:withdrawal_fees", "balance_cents": 100,
                                                        "reserved_cents": 0}
    assert shop.verify()["ok"]


def test_commission_before_its_order_waits_and_duplicates_change_nothing(make_shop):
    shop = make_shop(BUS_MAX_ATTEMPTS=10)
    p = {"order_no": "ORD-EARLY", "merchant_id": "mer_x", "product_id": "prd_x", "buyer_user_id": None,
         "amount_cents": 10000, "lines": [{"user_id": "usr_a", "level": 1, "rate_bps": 800, "amount_cents": 800}]}
    delivered = {"order_no": "ORD-EARLY", "product_id": "prd_x", "merchant_id": "mer_x", "quantity": 1,
                 "amount_cents": 10000, "cost_cents": 0, "currency": "CNY", "fee_bps": 200,
                 "delivered_at": utcnow().isoformat()}
    reversed_ = {"order_no": "ORD-EARLY", "reason": "refund",
                 "lines": [{"user_id": "usr_a", "level": 1, "rate_bps": 800, "amount_cents": 300}]}
    shop.inject("referral.commission.reversed", reversed_, drain=False)  # before its accrual: waits too
    shop.inject("referral.commission.accrued", p, drain=False)  # before its order: NotReady, retried
    shop.system.hub.pump()
    assert shop.system.bus.pending("payout") == 2 and shop.verify()["entries"] == 0
    shop.system.bus.inject("payout", b"{}")  # poison is dead-lettered, nothing else
    shop.inject("delivery.order.delivered", delivered)
    assert shop.system.bus.dead["payout"] == [b"{}"]
    shop.inject("referral.commission.accrued", p)  # the same lines under another event id
    shop.inject("delivery.order.delivered", delivered)  # a re-publication: "delivered:<no>" already posted
    assert shop.balances("user:usr_a") == (500, 0, 0)
    assert shop.balances("merchant:mer_x") == (9300, 0, 0)
    assert shop.verify()["entries"] == 3 and shop.verify()["ok"]


def test_flagged_line_stays_pending_until_cleared(shop):
    merchant, mid, pid = shop.seller()
    a, b, buyer = shop.chain(3)
    order = shop.buy_as(pid, buyer)
    no, t = order["order_no"], utcnow()
    shop.inject("risk.commission.flagged", {"order_no": no, "user_id": b["user_id"], "reason": "shared device"},
                occurred_at=t)
    shop.jobs_at(shop.after_hold())
    assert shop.balances(f"user:{b['user_id']}") == (800, 0, 0)  # held
    assert shop.balances(f"user:{a['user_id']}") == (0, 400, 0)
    assert shop.balances(f"merchant:{mid}") == (0, 8600, 0)
    # an older clearance arriving late changes nothing
    shop.inject("risk.commission.cleared", {"order_no": no, "user_id": b["user_id"]}, occurred_at=t - timedelta(seconds=1))
    shop.jobs_at(shop.after_hold())
    assert shop.balances(f"user:{b['user_id']}") == (800, 0, 0)
    shop.inject("risk.commission.cleared", {"order_no": no, "user_id": b["user_id"]}, occurred_at=t + timedelta(seconds=1))
    assert shop.balances(f"user:{b['user_id']}") == (800, 0, 0)  # released by the next run, not by the event
    shop.jobs_at(shop.after_hold())
    assert shop.balances(f"user:{b['user_id']}") == (0, 800, 0)
    keys = {p["key"] for p in shop.split(no)["postings"]}
    assert {f"release:{no}", f"release:{no}:2"} <= keys
    # a flag after the release holds the line again (money back to pending), as referral does
    shop.inject("risk.commission.flagged", {"order_no": no, "user_id": a["user_id"], "reason": "late"},
                occurred_at=t + timedelta(seconds=5))
    assert shop.balances(f"user:{a['user_id']}") == (400, 0, 0)
    assert shop.verify()["ok"]


def test_hold_shorter_than_the_refund_window_refuses_to_start(tmp_path):
    settings = load_settings("payout", {"LINKSHOP_VAR_DIR": str(tmp_path), "LINKSHOP_HOLD_SECONDS": "3600"})
    assert load_config(settings, {}).refund_window_seconds == 3600  # defaults to the hold
    with pytest.raises(ConfigError, match="shorter than LINKSHOP_REFUND_WINDOW_SECONDS"):
        load_config(settings, {"LINKSHOP_REFUND_WINDOW_SECONDS": "7200"})
    with pytest.raises(ConfigError):
        load_config(settings, {"LINKSHOP_WITHDRAWAL_FEE_BPS": "x"})
    from services.payout.app import create_app
    import os
    from unittest import mock
    with mock.patch.dict(os.environ, {"LINKSHOP_REFUND_WINDOW_SECONDS": "7200"}):
        with pytest.raises(ConfigError):
            create_app(settings)
    assert load_config(settings, {"LINKSHOP_REFUND_WINDOW_SECONDS": "1800"}).hold_seconds == 3600


def test_other_currency_is_not_booked_as_ours(shop):
    shop.inject("delivery.order.delivered", {"order_no": "ORD-USD", "product_id": "p", "merchant_id": "m",
                                             "quantity": 1, "amount_cents": 500, "cost_cents": 0,
                                             "currency": "USD", "fee_bps": 200})
    for _ in range(3):
        shop.drain()
    assert len(shop.system.bus.dead["payout"]) == 1
    assert shop.verify()["entries"] == 0


def test_ledger_gauge_is_set_by_the_worker(shop):
    from prometheus_client import REGISTRY
    from shared import metrics
    merchant, mid, pid = shop.seller()
    shop.buy(pid)
    shop.drain()
    # the gauges are process-wide and start at 0: a value the worker must overwrite shows it did
    metrics.ledger_imbalance.set(-1)
    payout_worker.withdrawals_review_oldest.set(-1)
    shop.jobs_at(utcnow())
    assert REGISTRY.get_sample_value("linkshop_ledger_imbalance_cents") == 0
    assert REGISTRY.get_sample_value("linkshop_withdrawals_pending_review_oldest_seconds") == 0
