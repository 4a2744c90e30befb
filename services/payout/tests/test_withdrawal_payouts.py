"""Withdrawals paid out (issue 13): by Alipay's transfer against a local fake of Alipay
(tests.kit.fakes.alipay_transfer), or by an exported batch the operator marks paid or failed.
Each step is one ledger entry (sending: available → payouts:in_flight; paid: in_flight →
payouts:<method> + fee; failed: in_flight → available), each happens once, and the ledger
verifies clean after every one."""
import csv
import io
import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.payout.config import load_config
from services.payout.exports import batch_csv, cell
from services.payout.models import Entry, Posting
from shared import alipay as shared_alipay
from shared.config import ConfigError, load_settings
from tests.kit import PayoutShop, assert_error
from tests.kit.fakes.alipay_gateway import new_key, private_pem, public_pem_body
from tests.kit.fakes.alipay_transfer import FakeAlipayTransfers

ACCOUNT, NAME = "payee@example.com", "张三"


# -- the shops -----------------------------------------------------------------------------------

@pytest.fixture
def alipay():
    fake = FakeAlipayTransfers()
    yield fake
    fake.close()


@pytest.fixture
def alipay_shop(backend, tmp_path, alipay):
    # Delivery reads the same Alipay settings (one Secret): its buyers keep the sandbox here.
    return PayoutShop(tmp_path, backend, LINKSHOP_PAYOUT_METHOD="alipay", LINKSHOP_PAYMENT_PROVIDERS="sandbox",
                      **alipay.env())


@pytest.fixture
def export_shop(backend, tmp_path):
    return PayoutShop(tmp_path, backend, LINKSHOP_PAYOUT_METHOD="export")


def earner(shop, orders=1):
    """A user with ``orders`` x 30.00 of released commission; returns (headers, owner, clock)."""
    merchant, mid, pid = shop.seller(levels=(3000,))
    a, buyer = shop.chain(2, prefix=f"e{len(shop.events())}-")
    for _ in range(orders):
        shop.buy_as(pid, buyer)
    clock = shop.after_hold()
    shop.jobs_at(clock)
    return shop.as_user(a), f"user:{a['user_id']}", clock


_keys = iter(range(10**6))


def withdraw(shop, headers, amount=2000, destination=ACCOUNT, payee_name=NAME):
    body = {"amount_cents": amount, "destination": destination}
    if payee_name is not None:
        body["payee_name"] = payee_name
    return shop.payout.post("/payout/v1/withdrawals", json=body,
                            headers={**headers, "Idempotency-Key": f"w-{next(_keys)}"})


def withdrawal(shop, wid):
    r = shop.payout.get(f"/payout/v1/withdrawals/{wid}", headers=shop.admin)
    assert r.status_code == 200, r.json
    return r.json


def balance(shop, account):
    owner = account.rpartition(":")[0]
    return next((a["balance_cents"] for a in shop.account(owner)["accounts"] if a["account"] == account), 0)


def entries(shop, wid):
    """The ledger entries of one withdrawal, as (kind, account, cents) postings."""
    with shop.db.read() as s:
        rows = s.execute(select(Entry.key, Posting.account, Posting.amount_cents)
                         .join(Posting, Posting.entry_id == Entry.id).where(Entry.withdrawal_id == wid)
                         .order_by(Entry.seq, Posting.account)).all()
    return [(key.removeprefix(f"withdrawal:{wid}:"), account, int(cents)) for key, account, cents in rows]


def withdrawal_events(shop, wid):
    return [e for e in shop.events() if e["type"].startswith("payout.withdrawal.")
            and e["payload"]["withdrawal_id"] == wid]


def assert_clean(shop):
    report = shop.verify()
    assert report["ok"], report


def assert_private(shop, *secrets_):
    """Neither the payee's account nor name in any event payout published."""
    text = json.dumps(shop.events(), ensure_ascii=False)
    assert all(s not in text for s in secrets_)


# -- the method, chosen by settings --------------------------------------------------------------

def test_payout_method_is_chosen_by_settings_and_production_never_gets_the_sandbox(tmp_path):
    key, alipay_key = new_key(), new_key()
    alipay = {"LINKSHOP_ALIPAY_GATEWAY": "https://openapi.alipay.com/gateway.do", "LINKSHOP_ALIPAY_APP_ID": "2021",
              "LINKSHOP_ALIPAY_PRIVATE_KEY": private_pem(key),
              "LINKSHOP_ALIPAY_PUBLIC_KEY": public_pem_body(alipay_key)}
    embedded = {"LINKSHOP_VAR_DIR": str(tmp_path)}
    real = {**embedded, "BUS_URL": "amqp://mq", "LINKSHOP_ADMIN_TOKEN": "a" * 32, "LINKSHOP_TOKEN_SECRET": "t" * 32}

    def method(env):
        return load_config(load_settings("payout", env), env).payout_method

    assert method(embedded) == "sandbox"
    assert method({**embedded, **alipay}) == "sandbox"  # the sandbox first where it is on
    assert method({**embedded, **alipay, "LINKSHOP_PAYOUT_METHOD": "alipay"}) == "alipay"
    assert method({**embedded, "LINKSHOP_SANDBOX_ENABLED": "false"}) == "export"
    assert method(real) == "export"
    assert method({**real, **alipay}) == "export"  # Alipay transfers are chosen by name, not by keys
    assert method({**real, **alipay, "LINKSHOP_PAYOUT_METHOD": "alipay"}) == "alipay"
    # The API is not given the keys: it agrees with the worker on the method all the same.
    api = load_config(load_settings("payout", real), {**real, "LINKSHOP_PAYOUT_METHOD": "alipay"}, transfer_keys=False)
    assert api.payout_method == "alipay" and api.alipay is None
    assert method({**real, **alipay, "LINKSHOP_PAYOUT_METHOD": "Export"}) == "export"
    assert method({**real, "LINKSHOP_SANDBOX_SECRET": "s", "LINKSHOP_SANDBOX_ENABLED": "true"}) == "sandbox"  # dev
    for env, says in [
        ({**real, "LINKSHOP_PAYOUT_METHOD": "sandbox"}, "needs the sandbox"),
        ({**embedded, "LINKSHOP_SANDBOX_ENABLED": "false", "LINKSHOP_PAYOUT_METHOD": "sandbox"}, "needs the sandbox"),
        ({**real, "LINKSHOP_PAYOUT_METHOD": "alipay"}, "needs LINKSHOP_ALIPAY_GATEWAY"),
        ({**real, "LINKSHOP_PAYOUT_METHOD": "wechat"}, "must be one of"),
        ({**real, **alipay, "LINKSHOP_ALIPAY_PUBLIC_KEY": ""}, "LINKSHOP_ALIPAY_PUBLIC_KEY must be set too"),
        ({**real, **alipay, "LINKSHOP_ALIPAY_PRIVATE_KEY": "bm90IGEga2V5"}, "LINKSHOP_ALIPAY_PRIVATE_KEY is not"),
    ]:
        with pytest.raises(ConfigError, match=says) as refused:
            method(env)
        assert "PRIVATE KEY-----" not in str(refused.value)
    chosen = {**real, **alipay, "LINKSHOP_PAYOUT_METHOD": "alipay"}
    config = load_config(load_settings("payout", chosen), chosen)
    assert "PRIVATE" not in repr(config) and config.alipay.app_id == "2021"


# -- by Alipay's transfer -------------------------------------------------------------------------

@pytest.mark.commits
def test_a_withdrawal_paid_by_transfer(alipay_shop, alipay):
    shop = alipay_shop
    user, owner, clock = earner(shop)
    assert_error(withdraw(shop, user, payee_name=None), 422, "payee_name_required")
    w = withdraw(shop, user).json
    assert shop.balances(owner) == (0, 900, 0)

    shop.jobs_at(clock + timedelta(seconds=1))  # approved by the policy, then sent
    got = withdrawal(shop, w["id"])
    ref = alipay.transfers[w["id"]]["order_id"]
    assert (got["status"], got["method"], got["external_ref"], got["attempts"]) == ("paid", "alipay", ref, 1)
    assert alipay.calls == {w["id"]: 1} and alipay.paid == {w["id"]: 1} and not alipay.queries
    [sent] = [r for r in alipay.requests if r["method"] == "alipay.fund.trans.uni.transfer"]
    assert sent["biz"] == {"out_biz_no": w["id"], "trans_amount": "20.00", "product_code": "TRANS_ACCOUNT_NO_PWD",
                           "biz_scene": "DIRECT_TRANSFER", "order_title": "Linkshop withdrawal",
                           "payee_info": {"identity": ACCOUNT, "identity_type": "ALIPAY_LOGON_ID", "name": NAME}}

    assert entries(shop, w["id"]) == [
        ("sending", "payouts:in_flight", 2100), ("sending", owner + ":available", -2100),
        ("paid", "payouts:alipay", 2000), ("paid", "payouts:in_flight", -2100),
        ("paid", "platform:withdrawal_fees", 100)]
    assert shop.balances(owner) == (0, 900, 0)
    assert shop.account(owner)["reserved_cents"] == 0
    assert (balance(shop, "payouts:in_flight"), balance(shop, "payouts:alipay")) == (0, 2000)
    events = withdrawal_events(shop, w["id"])
    assert [e["type"].rpartition(".")[2] for e in events] == ["requested", "approved", "sending", "paid"]
    assert events[-1]["payload"] | {"external_ref": ref, "method": "alipay"} == events[-1]["payload"]
    assert_private(shop, ACCOUNT, NAME)
    assert_clean(shop)

    shop.jobs_at(clock + timedelta(hours=1))  # later runs leave it alone
    assert alipay.calls == {w["id"]: 1} and not alipay.queries
    # Alipay reports a transfer itself: the operator cannot mark it by hand.
    assert_error(shop.payout.post(f"/payout/v1/withdrawals/{w['id']}/failed", json={"reason": "x"},
                                  headers=shop.admin), 409, "not_exported")
    assert_clean(shop)


@pytest.mark.commits
def test_a_refused_transfer_returns_the_money_and_the_distributor_withdraws_again(alipay_shop, alipay):
    shop = alipay_shop
    user, owner, clock = earner(shop)
    alipay.refuse[ACCOUNT] = "PAYEE_NOT_EXIST"
    w = withdraw(shop, user).json
    shop.jobs_at(clock + timedelta(seconds=1))
    got = withdrawal(shop, w["id"])
    assert got["status"] == "failed" and got["failed_at"] and "PAYEE_NOT_EXIST" in got["last_error"]
    assert ACCOUNT not in got["last_error"]
    assert shop.balances(owner) == (0, 3000, 0)  # all of it back: amount and fee
    assert balance(shop, "payouts:in_flight") == 0 and balance(shop, "platform:withdrawal_fees") == 0
    assert [k for k, _, _ in entries(shop, w["id"])] == ["sending", "sending", "failed", "failed"]
    failed = withdrawal_events(shop, w["id"])[-1]
    assert failed["type"] == "payout.withdrawal.failed" and "PAYEE_NOT_EXIST" in failed["payload"]["reason"]
    assert not alipay.paid
    assert_clean(shop)

    again = withdraw(shop, user, amount=2800, destination="138 0013 8000").json  # 2800 + 100 of 3000
    shop.jobs_at(clock + timedelta(seconds=2))
    assert withdrawal(shop, again["id"])["status"] == "paid"
    assert alipay.paid == {again["id"]: 1} and alipay.calls[w["id"]] == 1  # the refused one was never resent
    assert shop.balances(owner) == (0, 100, 0)
    assert_private(shop, ACCOUNT, "138 0013 8000", NAME)
    assert_clean(shop)


@pytest.mark.commits
@pytest.mark.parametrize("trouble, error", [("lose_answers", "HTTPError"), ("stall", "ReadTimeout")])
def test_a_transfer_whose_answer_was_lost_is_settled_by_the_query_exactly_once(alipay_shop, alipay, trouble, error,
                                                                               monkeypatch):
    shop = alipay_shop
    user, owner, clock = earner(shop)
    setattr(alipay, trouble, 1)  # Alipay pays; its answer never arrives, or too late
    monkeypatch.setattr(shared_alipay, "TIMEOUT", (3.05, 0.5))  # gives up before the stalled answer (1.5 s)
    w = withdraw(shop, user).json
    t = clock + timedelta(seconds=1)
    shop.jobs_at(t)
    got = withdrawal(shop, w["id"])
    assert (got["status"], got["attempts"]) == ("sending", 1) and error in got["last_error"]
    assert shop.balances(owner) == (0, 900, 0) and shop.account(owner)["reserved_cents"] == 0
    assert balance(shop, "payouts:in_flight") == 2100  # out of the owner's hands, not paid yet
    assert shop.payout.get("/payout/v1/withdrawals?status=sending", headers=shop.admin).json["total"] == 1
    assert_clean(shop)

    shop.jobs_at(t + timedelta(seconds=10))  # not time to ask yet
    assert withdrawal(shop, w["id"])["status"] == "sending" and not alipay.queries
    shop.jobs_at(t + timedelta(seconds=31))  # asked: Alipay paid it
    got = withdrawal(shop, w["id"])
    assert (got["status"], got["attempts"], got["external_ref"]) == ("paid", 2, alipay.transfers[w["id"]]["order_id"])
    assert alipay.calls == {w["id"]: 1} and alipay.queries == {w["id"]: 1} and alipay.paid == {w["id"]: 1}
    shop.jobs_at(t + timedelta(hours=2))
    assert alipay.calls == {w["id"]: 1} and alipay.queries == {w["id"]: 1}
    assert [k for k, _, _ in entries(shop, w["id"])].count("paid") == 3  # one entry: in_flight → alipay + fee
    assert balance(shop, "payouts:alipay") == 2000 and balance(shop, "payouts:in_flight") == 0
    assert_clean(shop)


@pytest.mark.commits
@pytest.mark.parametrize("trouble", ["fail_transfers", "busy"])
def test_a_transfer_alipay_never_took_is_sent_again_with_the_same_out_biz_no(alipay_shop, alipay, trouble):
    shop = alipay_shop
    user, owner, clock = earner(shop)
    setattr(alipay, trouble, 1)  # HTTP 500, or 20000: nothing was done
    w = withdraw(shop, user).json
    shop.jobs_at(clock + timedelta(seconds=1))
    assert withdrawal(shop, w["id"])["status"] == "sending" and not alipay.transfers
    shop.jobs_at(clock + timedelta(minutes=1))  # asked: no such transfer; the same one is sent
    got = withdrawal(shop, w["id"])
    assert (got["status"], got["attempts"], got["last_error"]) == ("paid", 2, None)
    transfers = [r["biz"]["out_biz_no"] for r in alipay.requests if r["method"].endswith("uni.transfer")]
    assert transfers == [w["id"], w["id"]] and alipay.paid == {w["id"]: 1}
    assert_clean(shop)


@pytest.mark.commits
def test_a_transfer_alipay_fails_later_returns_the_money(alipay_shop, alipay):
    shop = alipay_shop
    user, owner, clock = earner(shop)
    alipay.hold = True  # accepted, DEALING
    w = withdraw(shop, user).json
    shop.jobs_at(clock + timedelta(seconds=1))
    assert withdrawal(shop, w["id"])["status"] == "sending"
    shop.jobs_at(clock + timedelta(seconds=40))  # still dealing: wait on
    assert withdrawal(shop, w["id"])["status"] == "sending" and alipay.queries[w["id"]] == 1
    alipay.finish(w["id"], "FAIL", "收款账户状态异常")
    shop.jobs_at(clock + timedelta(minutes=5))
    got = withdrawal(shop, w["id"])
    assert got["status"] == "failed" and got["last_error"] == "FAIL: 收款账户状态异常"
    assert shop.balances(owner) == (0, 3000, 0) and alipay.calls == {w["id"]: 1}
    assert_clean(shop)


# -- by an exported batch ------------------------------------------------------------------------

def rows_of(response):
    body = response.get_data()
    assert body.startswith("\ufeff".encode())  # Excel reads UTF-8 only with its BOM
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))


def test_withdrawals_paid_by_export(export_shop):
    shop = export_shop
    user, owner, clock = earner(shop, orders=3)  # 90.00
    first = withdraw(shop, user, 2000).json
    odd = withdraw(shop, user, 3000, destination="=HYPERLINK(\"http://x\")", payee_name="@王五").json
    shop.jobs_at(clock + timedelta(seconds=1))
    # approved, and nothing leaves by itself
    assert [withdrawal(shop, w["id"])["status"] for w in (first, odd)] == ["approved", "approved"]
    assert shop.balances(owner) == (0, 9000 - 2100 - 3100, 0)

    post = shop.payout.post
    assert_error(post("/payout/v1/withdrawals/export"), 401)
    assert_error(post("/payout/v1/withdrawals/export", headers=user), 403)
    r = post("/payout/v1/withdrawals/export", headers=shop.admin)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv; charset=utf-8"
    batch = r.headers["X-Batch-Id"]
    assert r.headers["Content-Disposition"] == f'attachment; filename="linkshop-withdrawals-{batch}.csv"'
    assert rows_of(r) == [["序号", "收款方支付宝账号", "收款方姓名", "金额", "备注"],
                          ["1", ACCOUNT, NAME, "20.00", first["id"]],
                          ["2", "'=HYPERLINK(\"http://x\")", "'@王五", "30.00", odd["id"]]]
    sending = shop.payout.get("/payout/v1/withdrawals?status=sending", headers=shop.admin).json
    assert [w["id"] for w in sending["items"]] == [first["id"], odd["id"]]
    assert {w["batch_id"] for w in sending["items"]} == {batch} and sending["items"][0]["method"] == "export"
    assert balance(shop, "payouts:in_flight") == 5200 and shop.account(owner)["reserved_cents"] == 0
    assert_clean(shop)

    empty = post("/payout/v1/withdrawals/export", headers=shop.admin)  # nothing approved is left
    assert rows_of(empty) == [["序号", "收款方支付宝账号", "收款方姓名", "金额", "备注"]]
    assert empty.headers["X-Batch-Count"] == "0"
    again = shop.payout.get(f"/payout/v1/withdrawals/export/{batch}", headers=shop.admin)  # the same file
    assert again.status_code == 200 and again.get_data() == r.get_data()
    assert_error(shop.payout.get("/payout/v1/withdrawals/export/bt_nope", headers=shop.admin), 404)

    # the operator uploaded it; the first was paid
    paid = post(f"/payout/v1/withdrawals/{first['id']}/paid", json={"external_ref": "2026120310001"},
                headers=shop.admin)
    assert paid.status_code == 200 and (paid.json["status"], paid.json["external_ref"]) == ("paid", "2026120310001")
    twice = post(f"/payout/v1/withdrawals/{first['id']}/paid", json={"external_ref": "2026120310001"},
                 headers=shop.admin)
    assert twice.status_code == 200 and twice.json == paid.json
    assert [k for k, _, _ in entries(shop, first["id"])] == ["sending"] * 2 + ["paid"] * 3  # one posting
    assert_error(post(f"/payout/v1/withdrawals/{first['id']}/paid", json={"external_ref": "other"},
                      headers=shop.admin), 409, "already_paid")
    assert_error(post(f"/payout/v1/withdrawals/{first['id']}/failed", json={"reason": "x"}, headers=shop.admin),
                 409, "not_sending")
    assert (balance(shop, "payouts:export"), balance(shop, "platform:withdrawal_fees")) == (2000, 100)
    assert len([e for e in shop.events("payout.withdrawal.paid")]) == 1
    assert shop.events("payout.withdrawal.paid")[0]["payload"]["external_ref"] == "2026120310001"
    assert_clean(shop)

    # the second bounced: its money goes back
    failed = post(f"/payout/v1/withdrawals/{odd['id']}/failed",
                  json={"reason": "户名不符 for =HYPERLINK(\"http://x\")"}, headers=shop.admin)
    assert failed.status_code == 200 and failed.json["status"] == "failed"
    assert failed.json["last_error"] == "户名不符 for …"  # the account is not repeated in the event
    assert post(f"/payout/v1/withdrawals/{odd['id']}/failed", json={"reason": "again"},
                headers=shop.admin).json == failed.json
    assert_error(post(f"/payout/v1/withdrawals/{odd['id']}/paid", json={"external_ref": "r"}, headers=shop.admin),
                 409, "not_sending")
    assert shop.balances(owner) == (0, 9000 - 2100, 0) and balance(shop, "payouts:in_flight") == 0
    assert shop.events("payout.withdrawal.failed")[0]["payload"]["reason"] == "户名不符 for …"
    assert_private(shop, ACCOUNT, NAME, "HYPERLINK", "王五")
    assert_clean(shop)


def test_export_refusals(export_shop):
    user, owner, clock = earner(export_shop)
    post = export_shop.payout.post
    assert_error(withdraw(export_shop, user, payee_name=None), 422, "payee_name_required")
    w = withdraw(export_shop, user).json
    for word, body in (("paid", {"external_ref": "r1"}), ("failed", {"reason": "no"})):
        assert_error(post(f"/payout/v1/withdrawals/{w['id']}/{word}", json=body, headers=export_shop.admin),
                     409, "not_sending")  # requested, not exported
        assert_error(post(f"/payout/v1/withdrawals/{w['id']}/{word}", json=body, headers=user), 403)
        assert_error(post(f"/payout/v1/withdrawals/nope/{word}", json=body, headers=export_shop.admin), 404)
        assert_error(post(f"/payout/v1/withdrawals/{w['id']}/{word}", json={}, headers=export_shop.admin), 422)
    assert_error(post(f"/payout/v1/withdrawals/{w['id']}/paid", json={"external_ref": "a\nb"},
                      headers=export_shop.admin), 422)


def test_the_sandbox_still_pays_at_once_in_one_entry(shop):
    user, owner, clock = earner(shop)
    w = withdraw(shop, user, payee_name=None).json  # no real money: no name needed
    shop.jobs_at(clock + timedelta(seconds=1))
    got = withdrawal(shop, w["id"])
    assert (got["status"], got["method"], got["external_ref"]) == ("paid", "sandbox", None)
    assert [k for k, _, _ in entries(shop, w["id"])] == [f"withdrawal:{w['id']}"] * 3
    assert shop.account("payouts")["accounts"] == [{"account": "payouts:sandbox", "balance_cents": 2000,
                                                    "reserved_cents": 0}]  # no in_flight step
    assert_error(shop.payout.post("/payout/v1/withdrawals/export", headers=shop.admin), 409, "not_export_method")
    assert_clean(shop)


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped():
    assert [cell(v) for v in ("=1+1", "+86138", "-2", "@SUM(A1)", "\tx", "a=b", "", None, 12)] == \
        ["'=1+1", "'+86138", "'-2", "'@SUM(A1)", "'\tx", "a=b", "", "", "12"]

    class W:
        id, destination, payee_name, amount_cents = "wd_1", "a,\"b\"", None, 5
    assert batch_csv([W()]).decode("utf-8-sig").splitlines()[1] == '1,"a,""b""",,0.05,wd_1'
