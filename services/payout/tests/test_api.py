"""Every payout route, its answers and its refusals."""
import json

from sqlalchemy import select, text

from services.payout.models import outbox
from shared.auth import issue_user_token
from shared.events import utcnow
from tests.kit import assert_error, by_hand


def _earner(shop, levels=(3000,), orders=1):
    """A merchant, a user who earned ``orders`` released commissions, and their headers."""
    merchant, mid, pid = shop.seller(levels=levels)
    a, buyer = shop.chain(2, prefix=f"e{utcnow().timestamp()}")
    for _ in range(orders):
        shop.buy_as(pid, buyer)
    shop.jobs_at(shop.after_hold())
    return merchant, mid, pid, a


def test_accounts_are_seen_by_their_owner_or_the_operator(shop):
    merchant, mid, pid, a = _earner(shop)
    me, m = f"user:{a['user_id']}", f"merchant:{mid}"
    mine = shop.account(me, headers=shop.as_user(a))
    assert (mine["pending_cents"], mine["available_cents"], mine["debt_cents"]) == (0, 3000, 0)
    assert [i["kind"] for i in mine["statement"]["items"]] == ["release", "release", "commission"]
    assert mine["statement"]["total"] == 3
    page = shop.account(me, headers=shop.as_user(a), page=2, per_page=2)["statement"]
    assert (page["page"], page["per_page"], page["total"], len(page["items"])) == (2, 2, 3, 1)
    assert shop.account(m, headers=merchant)["available_cents"] == 10000 - 200 - 3000
    assert shop.account(m)["available_cents"] == 6800  # the operator
    assert shop.account("platform")["accounts"][0] == {"account": "platform:fees", "balance_cents": 200,
                                                       "reserved_cents": 0}
    assert shop.account("user:nobody")["statement"]["items"] == []
    get = shop.payout.get
    assert_error(get(f"/payout/v1/accounts/{me}"), 401, "unauthorized")
    assert_error(get(f"/payout/v1/accounts/{me}", headers={"Authorization": "Bearer nonsense"}), 401)
    assert_error(get(f"/payout/v1/accounts/{me}", headers={"Authorization": "Basic x"}), 401)
    assert_error(get(f"/payout/v1/accounts/{m}", headers=shop.as_user(a)), 403, "forbidden")
    assert_error(get(f"/payout/v1/accounts/{me}", headers=merchant), 403, "forbidden")
    assert_error(get("/payout/v1/accounts/platform", headers=merchant), 403)
    assert_error(get("/payout/v1/accounts/bank:1", headers=shop.admin), 404, "not_found")
    assert_error(get(f"/payout/v1/accounts/{me}?page=0", headers=shop.admin), 422, "invalid")
    assert_error(get(f"/payout/v1/accounts/{me}?per_page=500", headers=shop.admin), 422)
    assert_error(get(f"/payout/v1/accounts/{me}?color=red", headers=shop.admin), 422)
    # a token signed with another secret is nobody's
    forged = issue_user_token("another-secret", a["user_id"])
    assert_error(get(f"/payout/v1/accounts/{me}", headers={"Authorization": "Bearer " + forged}), 401)


def test_split_and_verify_routes(shop):
    merchant, mid, pid = shop.seller()
    order = shop.buy(pid)
    shop.drain()
    no = order["order_no"]
    assert shop.split(no)["settled_cents"] == 10000
    other_merchant, _, _ = shop.seller()
    get = shop.payout.get
    assert_error(get(f"/payout/v1/orders/{no}/split"), 401)
    assert_error(get(f"/payout/v1/orders/{no}/split", headers=other_merchant), 404, "not_found")
    assert_error(get("/payout/v1/orders/NOPE/split", headers=shop.admin), 404)
    assert_error(get("/payout/v1/ledger/verify"), 401)
    assert_error(get("/payout/v1/ledger/verify", headers=merchant), 403, "forbidden")
    assert_error(shop.payout.post("/payout/v1/ledger/verify", headers=shop.admin), 405)


def test_verify_finds_tampering(shop):
    merchant, mid, pid = shop.seller()
    for _ in range(3):
        shop.buy(pid)
    shop.drain()
    assert shop.verify()["ok"] and shop.verify()["entries"] == 3
    with by_hand(shop.db) as conn:  # someone edits a posting (and its balance, to hide it)
        conn.execute(text("UPDATE postings SET amount_cents = amount_cents + 100 WHERE id = "
                          "(SELECT id FROM postings WHERE account LIKE 'merchant:%' AND entry_id = "
                          "(SELECT id FROM entries WHERE seq = 2))"))
        conn.execute(text("UPDATE postings SET amount_cents = amount_cents - 100 WHERE account = 'platform:fees' "
                          "AND entry_id = (SELECT id FROM entries WHERE seq = 2)"))
    report = shop.verify()
    assert (report["ok"], report["first_broken"], report["imbalance_cents"]) == (False, 2, 0)
    assert {m["account"] for m in report["balance_mismatches"]} == {f"merchant:{mid}:pending", "platform:fees"}

    with by_hand(shop.db) as conn:  # now the hash is rewritten too: the next link breaks
        conn.execute(text("UPDATE entries SET hash = 'f' || substr(hash, 2) WHERE seq = 2"))
    assert shop.verify()["first_broken"] == 2


def test_verify_finds_a_lost_entry_and_an_imbalance(shop):
    merchant, mid, pid = shop.seller()
    for _ in range(2):
        shop.buy(pid)
    shop.drain()
    with by_hand(shop.db) as conn:
        if shop.db.is_sqlite:
            conn.execute(text("PRAGMA foreign_keys=OFF"))
        conn.execute(text("DELETE FROM postings WHERE entry_id = (SELECT id FROM entries WHERE seq = 2) "
                          "AND account = 'platform:fees'"))
    report = shop.verify()
    assert (report["ok"], report["first_broken"], report["imbalance_cents"]) == (False, 2, -200)


def test_withdrawal_is_requested_approved_and_paid(shop):
    merchant, mid, pid, a = _earner(shop)
    user = shop.as_user(a)
    r = shop.withdraw(user, 2000, destination="6222 0000 1234 5678", key="w-1")
    assert r.status_code == 201, r.json
    w = r.json
    assert (w["status"], w["amount_cents"], w["fee_cents"], w["total_cents"]) == ("requested", 2000, 100, 2100)
    assert w["destination"] == "…5678" and "6222" not in json.dumps(w)
    again = shop.withdraw(user, 2000, destination="6222 0000 1234 5678", key="w-1")  # a retry: the first answer
    assert again.status_code == 201 and again.json == w
    assert_error(shop.withdraw(user, 1000, destination="6222 0000 1234 5678", key="w-1"), 409, "idempotency_conflict")
    assert shop.balances(f"user:{a['user_id']}") == (0, 900, 0)
    assert_error(shop.withdraw(user, 1000), 409, "insufficient_funds")  # 1000 + 100 > 900

    shop.jobs_at(utcnow())
    paid = shop.payout.get(f"/payout/v1/withdrawals/{w['id']}", headers=user).json
    assert (paid["status"], paid["decided_by"]) == ("paid", "auto")
    assert shop.account(f"user:{a['user_id']}")["accounts"] == [
        {"account": f"user:{a['user_id']}:available", "balance_cents": 900, "reserved_cents": 0},
        {"account": f"user:{a['user_id']}:pending", "balance_cents": 0, "reserved_cents": 0}]
    events = [e for e in shop.events() if e["type"].startswith("payout.withdrawal.")]
    assert [e["type"] for e in events] == ["payout.withdrawal.requested", "payout.withdrawal.approved",
                                           "payout.withdrawal.paid"]
    p = events[0]["payload"]
    assert p == p | {"withdrawal_id": w["id"], "owner": f"user:{a['user_id']}", "user_id": a["user_id"],
                     "amount_cents": 2000, "fee_cents": 100}
    assert len(p["destination_hash"]) == 64 and "requested_at" in p
    assert all("6222" not in json.dumps(e) and "5678" not in json.dumps(e) for e in events)
    mine = shop.payout.get("/payout/v1/withdrawals", headers=user).json
    assert [x["id"] for x in mine["items"]] == [w["id"]] and mine["total"] == 1
    assert shop.verify()["ok"]


def test_merchant_withdraws_with_its_key_and_big_ones_wait_for_review(shop):
    merchant, mid, pid, a = _earner(shop, levels=(), orders=8)  # 8 x 98.00 available
    r = shop.withdraw(merchant, 60000, key="big")
    assert r.status_code == 201 and r.json["fee_cents"] == 600 and r.json["owner"] == f"merchant:{mid}"
    small = shop.withdraw(merchant, 5000, key="small").json
    t0 = utcnow()
    shop.jobs_at(t0)
    review = shop.payout.get("/payout/v1/withdrawals?status=review", headers=shop.admin).json["items"]
    assert [w["id"] for w in review] == [r.json["id"]]
    assert review[0]["reasons"] == ["over the auto-approval limit"]
    assert shop.payout.get(f"/payout/v1/withdrawals/{small['id']}", headers=merchant).json["status"] == "paid"
    from datetime import timedelta
    from prometheus_client import REGISTRY
    shop.jobs_at(t0 + timedelta(seconds=90))  # in review since t0: the gauge says 90 seconds
    assert REGISTRY.get_sample_value("linkshop_withdrawals_pending_review_oldest_seconds") == 90

    decided = shop.payout.post(f"/payout/v1/withdrawals/{r.json['id']}/reject", json={"reason": "call us"},
                               headers=shop.admin)
    assert decided.status_code == 200 and decided.json["status"] == "rejected" and decided.json["reasons"] == ["call us"]
    assert shop.balances(f"merchant:{mid}") == (0, 78400 - 5100, 0)  # the reservation came back
    assert_error(shop.payout.post(f"/payout/v1/withdrawals/{r.json['id']}/approve", headers=shop.admin), 409,
                 "not_pending")
    second = shop.withdraw(merchant, 60000, key="big-2").json
    shop.jobs_at(utcnow())
    ok = shop.payout.post(f"/payout/v1/withdrawals/{second['id']}/approve", headers=shop.admin)
    assert ok.status_code == 200 and ok.json["status"] == "approved" and ok.json["decided_by"] == "admin"
    shop.jobs_at(utcnow())
    assert shop.payout.get(f"/payout/v1/withdrawals/{second['id']}", headers=shop.admin).json["status"] == "paid"
    assert shop.balances(f"merchant:{mid}") == (0, 78400 - 5100 - 60600, 0)
    assert shop.account("payouts")["accounts"][0]["balance_cents"] == 65000
    assert shop.verify()["ok"]


def test_risk_assessment_decides_a_waiting_withdrawal(shop):
    merchant, mid, pid, a = _earner(shop, levels=(), orders=8)
    big = shop.withdraw(merchant, 60000, key="a").json
    shop.jobs_at(utcnow())
    t = utcnow()
    shop.inject("risk.withdrawal.assessed", {"withdrawal_id": big["id"], "decision": "approve", "reasons": []},
                occurred_at=t)
    # an older "reject" arriving late changes nothing
    from datetime import timedelta
    shop.inject("risk.withdrawal.assessed", {"withdrawal_id": big["id"], "decision": "reject", "reasons": ["x"]},
                occurred_at=t - timedelta(seconds=1))
    shop.jobs_at(utcnow())
    assert shop.payout.get(f"/payout/v1/withdrawals/{big['id']}", headers=shop.admin).json["status"] == "paid"
    other = shop.withdraw(merchant, 10000, key="b").json
    shop.inject("risk.withdrawal.assessed", {"withdrawal_id": other["id"], "decision": "reject",
                                              "reasons": ["shared destination"]})
    got = shop.payout.get(f"/payout/v1/withdrawals/{other['id']}", headers=shop.admin).json
    assert (got["status"], got["decided_by"], got["reasons"]) == ("rejected", "risk", ["shared destination"])
    assert shop.balances(f"merchant:{mid}") == (0, 78400 - 60600, 0)


def test_withdrawal_refusals(shop):
    merchant, mid, pid, a = _earner(shop)
    user = shop.as_user(a)
    post = shop.payout.post
    body = {"amount_cents": 1000, "destination": "acct-123"}
    assert_error(post("/payout/v1/withdrawals", json=body, headers={"Idempotency-Key": "k"}), 401, "unauthorized")
    assert_error(post("/payout/v1/withdrawals", json=body, headers={**shop.admin, "Idempotency-Key": "k"}), 403)
    assert_error(post("/payout/v1/withdrawals", json=body, headers=user), 400, "idempotency_key_required")
    assert_error(post("/payout/v1/withdrawals", json=body, headers={**user, "Idempotency-Key": " "}), 400,
                 "bad_idempotency_key")
    assert_error(post("/payout/v1/withdrawals", json=body, headers={**user, "Idempotency-Key": "k" * 201}), 400)
    h = {**user, "Idempotency-Key": "k"}
    assert_error(post("/payout/v1/withdrawals", data="nope", headers=h, content_type="application/json"), 400,
                 "bad_json")
    assert_error(post("/payout/v1/withdrawals", json=[1], headers=h), 400, "bad_json")
    assert_error(post("/payout/v1/withdrawals", json={**body, "currency": "CNY"}, headers=h), 422, "invalid")
    assert_error(post("/payout/v1/withdrawals", json={"destination": "acct-123"}, headers=h), 422)
    assert_error(post("/payout/v1/withdrawals", json={**body, "amount_cents": "1000"}, headers=h), 422)
    assert_error(post("/payout/v1/withdrawals", json={**body, "amount_cents": 10.5}, headers=h), 422)
    assert_error(post("/payout/v1/withdrawals", json={**body, "amount_cents": -5}, headers=h), 422)
    assert_error(post("/payout/v1/withdrawals", json={**body, "destination": ""}, headers=h), 422)
    assert_error(post("/payout/v1/withdrawals", json={**body, "destination": "a\nb c"}, headers=h), 422)
    error = assert_error(post("/payout/v1/withdrawals", json={**body, "amount_cents": 999}, headers=h), 422,
                         "below_minimum")
    assert "amount_cents" in error["fields"]
    assert_error(post("/payout/v1/withdrawals", json={**body, "amount_cents": 10**11}, headers=h), 422,
                 "above_maximum")
    assert_error(post("/payout/v1/withdrawals", json={**body, "amount_cents": 3000}, headers=h), 409,
                 "insufficient_funds")  # 3000 + 100 fee > 3000
    # refusals were not remembered: the same key still works for a request that can be met
    assert post("/payout/v1/withdrawals", json={**body, "amount_cents": 2900}, headers=h).status_code == 201
    # a user who never earned anything
    stranger = shop.user("stranger@example.com")
    assert_error(shop.withdraw(shop.as_user(stranger), 1000), 409, "insufficient_funds")


def test_withdrawal_listing_and_decisions_are_guarded(shop):
    merchant, mid, pid, a = _earner(shop)
    w = shop.withdraw(shop.as_user(a), 1000, key="x").json
    get, post = shop.payout.get, shop.payout.post
    assert_error(get("/payout/v1/withdrawals"), 401)
    assert_error(get("/payout/v1/withdrawals?status=lost", headers=shop.admin), 422)
    assert_error(get(f"/payout/v1/withdrawals?owner=merchant:{mid}", headers=shop.as_user(a)), 403)
    assert get(f"/payout/v1/withdrawals?owner=user:{a['user_id']}", headers=shop.admin).json["total"] == 1
    assert get("/payout/v1/withdrawals", headers=merchant).json["items"] == []  # only its own
    assert_error(get(f"/payout/v1/withdrawals/{w['id']}", headers=merchant), 404)
    assert_error(get("/payout/v1/withdrawals/wd_nope", headers=shop.admin), 404)
    assert_error(post(f"/payout/v1/withdrawals/{w['id']}/approve"), 401)
    assert_error(post(f"/payout/v1/withdrawals/{w['id']}/approve", headers=shop.as_user(a)), 403)
    assert_error(post(f"/payout/v1/withdrawals/{w['id']}/pay", headers=shop.admin), 404)
    assert_error(post("/payout/v1/withdrawals/wd_nope/approve", headers=shop.admin), 404)
    assert_error(post(f"/payout/v1/withdrawals/{w['id']}/reject", json={"reason": ""}, headers=shop.admin), 422)
    assert_error(post(f"/payout/v1/withdrawals/{w['id']}/reject", json={"why": "x"}, headers=shop.admin), 422)
    assert_error(post(f"/payout/v1/withdrawals/{w['id']}/reject", data="x", headers=shop.admin,
                      content_type="application/json"), 400)
    assert post(f"/payout/v1/withdrawals/{w['id']}/approve", headers=shop.admin).json["status"] == "approved"
    shop.jobs_at(utcnow())
    assert_error(post(f"/payout/v1/withdrawals/{w['id']}/reject", headers=shop.admin), 409, "not_pending")


def test_a_revoked_merchant_key_is_refused(shop):
    merchant, mid, pid = shop.seller()
    rotated = shop.catalog.post(f"/catalog/v1/merchants/{mid}/api-key", headers=shop.admin)
    assert rotated.status_code == 201, rotated.json
    shop.drain()
    assert_error(shop.payout.get(f"/payout/v1/accounts/merchant:{mid}", headers=merchant), 401)
    fresh = {"Authorization": "Bearer " + rotated.json["api_key"]}
    assert shop.payout.get(f"/payout/v1/accounts/merchant:{mid}", headers=fresh).status_code == 200


def test_outbox_events_never_carry_a_destination(shop):
    merchant, mid, pid, a = _earner(shop)
    shop.withdraw(shop.as_user(a), 1000, destination="alipay:13800138000", key="z")
    shop.jobs_at(utcnow())
    with shop.db.read() as s:
        bodies = s.scalars(select(outbox.table.c.body)).all()
    assert bodies and not any("13800138000" in b for b in bodies)


def test_openapi_lists_every_payout_route(shop):
    paths = shop.payout.get("/payout/openapi.json").json["paths"]
    assert {"/payout/v1/accounts/{owner}", "/payout/v1/orders/{order_no}/split", "/payout/v1/ledger/verify",
            "/payout/v1/withdrawals", "/payout/v1/withdrawals/{withdrawal_id}",
            "/payout/v1/withdrawals/{withdrawal_id}/{decision}"} <= set(paths)
    body = paths["/payout/v1/withdrawals"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Withdrawal"}
