"""易支付 (epay) end to end against a local fake gateway (tests.kit.fakes.epay): the pay link,
the notice (GET and form POST) answered ``success``, every forgery refused and counted, a
lost notice found by the query job, refunds through the gateway."""
from decimal import Decimal

import pytest

from tests.kit.fakes.epay import FakeEpay, epay_sign, query_of

pytestmark = pytest.mark.commits


@pytest.fixture
def gateway():
    epay = FakeEpay()
    yield epay
    epay.close()


@pytest.fixture
def epay(gateway):
    return gateway


@pytest.fixture
def shop(paying_shop):
    return paying_shop


def paid_order(shop, epay, product_id, quantity=1):
    return shop.paid_order("epay", epay, product_id, [(200, "success")], quantity)


def test_pay_link_carries_the_signed_parameters_the_protocol_names(shop, seller, epay):
    order = shop.order_with("epay", seller[1], pay_type="wxpay")
    url = order["payment"]["pay_url"]
    assert url.startswith(epay.url + "/submit.php?")
    params = query_of(url)
    assert params["pid"] == epay.pid and params["type"] == "wxpay" and params["out_trade_no"] == order["order_no"]
    assert params["money"] == "12.34" and params["name"] == "月卡 & <Gold>" and params["sign_type"] == "MD5"
    assert params["notify_url"] == f"{shop.url}/delivery/v1/payments/epay/notify"
    assert params["return_url"] == order["order_url"] and order["access_token"] in params["return_url"]
    assert params["sign"] == epay_sign(params, epay.key)
    assert order["payment"]["provider"] == "epay" and order["payment"]["pay_type"] == "wxpay"
    assert epay.open(url).status_code == 200  # the gateway itself accepts our signature


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_paid_notice_delivers_and_is_answered_success(shop, seller, epay, method):
    order = shop.order_with("epay", seller[1], quantity=2)
    epay.open(order["payment"]["pay_url"])
    before = shop.notices("epay", "delivered")
    assert epay.pay(order["order_no"], method=method) == [(200, "success")]
    shop.drain()
    view = shop.view(order)
    assert view["status"] == "delivered" and len(view["keys"]) == 2
    assert shop.notices("epay", "delivered") == before + 1
    # The gateway resends: acknowledged again, nothing happens twice.
    assert epay.notify(epay.payments[order["order_no"]]["notify_url"], epay.notice(order["order_no"]))[-1] \
        == (200, "success")
    assert shop.notices("epay", "replay") >= 1 and len(shop.view(order)["keys"]) == 2


def test_default_pay_type_is_alipay_and_default_provider_is_the_first_enabled(shop, seller):
    r = shop.order(seller[1])
    assert r.status_code == 201, r.json
    assert r.json["payment"]["provider"] == "epay" and r.json["payment"]["pay_type"] == "alipay"
    assert query_of(r.json["payment"]["pay_url"])["type"] == "alipay"


def test_forgeries_are_refused_counted_and_change_nothing(shop, seller, epay):
    order = shop.order_with("epay", seller[1])
    epay.open(order["payment"]["pay_url"])
    epay.payments[order["order_no"]]["trade_no"] = "T-forged"
    url = epay.payments[order["order_no"]]["notify_url"]
    epay.payments["26120300000000000000"] = dict(epay.payments[order["order_no"]])
    cases = {
        "bad_signature": epay.notice(order["order_no"], sign_with="not-the-key"),
        "amount_mismatch": epay.notice(order["order_no"], money="0.01"),
        "not_paid": epay.notice(order["order_no"], trade_status="TRADE_CLOSED"),
        "unknown_order": epay.notice("26120300000000000000"),
    }
    for outcome, params in cases.items():
        before = shop.notices("epay", outcome)
        read = epay.notify(url, params)
        assert all(text != "success" for _, text in read), outcome
        assert shop.notices("epay", outcome) == before + len(read), outcome
    unsigned = dict(cases["amount_mismatch"])
    unsigned.pop("sign")
    before = shop.notices("epay", "bad_signature")
    read = epay.notify(url, unsigned)
    assert set(read) == {(400, "fail")} and shop.notices("epay", "bad_signature") == before + len(read)
    assert shop.view(order)["status"] == "pending"
    assert epay.pay(order["order_no"]) == [(200, "success")]  # the genuine one still works
    shop.drain()
    assert shop.view(order)["status"] == "delivered"


def test_a_sandbox_order_cannot_be_paid_by_an_epay_notice(shop, seller, epay):
    sandbox_order = shop.order_with("sandbox", seller[1])
    epay_order = shop.order_with("epay", seller[1])
    epay.open(epay_order["payment"]["pay_url"])
    epay.payments[sandbox_order["order_no"]] = dict(epay.payments[epay_order["order_no"]], trade_no="T-x")
    before = shop.notices("epay", "wrong_provider")
    read = epay.notify(epay.payments[epay_order["order_no"]]["notify_url"], epay.notice(sandbox_order["order_no"]))
    assert read[0][1] != "success" and shop.notices("epay", "wrong_provider") == before + len(read)
    assert shop.view(sandbox_order)["status"] == "pending"


def test_a_trade_number_paying_one_order_cannot_pay_another(shop, seller, epay):
    first, second = shop.order_with("epay", seller[1]), shop.order_with("epay", seller[1])
    for order in (first, second):
        epay.open(order["payment"]["pay_url"])
    epay.pay(first["order_no"])
    epay.payments[second["order_no"]]["trade_no"] = epay.payments[first["order_no"]]["trade_no"]
    before = shop.notices("epay", "replay")
    read = epay.notify(epay.payments[second["order_no"]]["notify_url"], epay.notice(second["order_no"]))
    assert read == [(200, "success")]  # acknowledged (it was applied once), never applied twice
    assert shop.notices("epay", "replay") == before + 1
    shop.drain()
    assert shop.view(second)["status"] == "pending"


def test_a_lost_notice_is_found_by_the_query_job(shop, seller, epay):
    order = shop.order_with("epay", seller[1])
    epay.open(order["payment"]["pay_url"])
    epay.lose_notices = True
    epay.pay(order["order_no"])
    shop.jobs()
    view = shop.view(order)
    assert view["status"] == "delivered" and view["keys"]
    assert shop.metric("linkshop_payment_recoveries_total", provider="epay", outcome="delivered") >= 1


def test_the_buyer_back_from_paying_triggers_the_query(shop, seller, epay):
    order = shop.order_with("epay", seller[1])
    epay.open(order["payment"]["pay_url"])
    r = shop.check_payment(order)
    assert r.status_code == 200 and r.json["status"] == "pending"  # not paid yet
    epay.lose_notices = True
    epay.pay(order["order_no"])
    r = shop.check_payment(order)
    assert r.status_code == 200 and r.json["status"] == "delivered" and r.json["keys"]
    assert shop.check_payment(order, token="wrong").status_code == 404


def test_refund_goes_through_the_gateway(shop, seller, epay):
    merchant, pid = seller
    order = paid_order(shop, epay, pid, quantity=2)
    shop.refund(order, merchant, quantity=1, reason="bad")
    assert shop.refund_status(order, merchant) == ["requested"]
    assert [r["status"] for r in shop.view(order)["refunds"]] == ["requested"]  # on the buyer's order too
    shop.jobs()
    assert shop.refund_status(order, merchant) == ["succeeded"]
    assert [(r["status"], r["amount_cents"]) for r in shop.view(order)["refunds"]] == [("succeeded", 1234)]
    assert len(epay.refunds) == 1
    sent = epay.refunds[0]
    assert sent["out_trade_no"] == order["order_no"] and Decimal(sent["money"]) == Decimal("12.34")
    assert sent["trade_no"] == epay.payments[order["order_no"]]["trade_no"]


def test_a_refused_refund_is_failed_visible_and_can_be_retried(shop, seller, epay):
    merchant, pid = seller
    order = paid_order(shop, epay, pid)
    epay.refuse_refunds = True
    shop.refund(order, merchant, reason="bad")
    shop.jobs()
    assert shop.refund_status(order, merchant) == ["failed"]
    failed = shop.failed_refunds()
    assert [f["order_no"] for f in failed] == [order["order_no"]] and "退款金额" in failed[0]["error"]
    refund_id, refused_no = failed[0]["refund_id"], failed[0]["refund_no"]
    epay.refuse_refunds = False
    r = shop.retry_refund(order, refund_id, merchant)
    assert r.status_code == 200 and r.json["status"] == "requested"
    # Providers keep their first answer per refund number: asked again, a new number.
    assert r.json["refund_no"] != refused_no and r.json["refund_no"].startswith(refused_no + "-")
    shop.jobs()
    assert shop.refund_status(order, merchant) == ["succeeded"] and len(epay.refunds) == 1


def test_a_gateway_error_is_retried_with_backoff(shop, seller, epay):
    merchant, pid = seller
    order = paid_order(shop, epay, pid)
    epay.fail_refunds = 1
    shop.refund(order, merchant, reason="bad")
    shop.jobs()
    refunds = shop.refunds(order, merchant)
    assert refunds[0]["status"] == "requested" and refunds[0]["attempts"] == 1 and "HTTPError" in refunds[0]["error"]
    assert epay.refunds == []


def test_a_gateway_that_never_answers_fails_the_refund_after_every_backoff_and_a_retry_keeps_its_number(
        shop, seller, epay):
    from datetime import timedelta

    from services.delivery import domain
    from shared.events import utcnow
    merchant, pid = seller
    order = paid_order(shop, epay, pid)
    epay.fail_refunds = 100
    shop.refund(order, merchant, reason="bad")
    ctx = shop.system.apps["delivery"].extensions["linkshop"]
    clock = {"now": utcnow()}
    for _ in domain.REFUND_BACKOFF_S:
        assert domain.send_refunds(ctx.db, ctx.extra["providers"], now_fn=lambda: clock["now"]) == 1
        clock["now"] += timedelta(hours=2)
    refund = shop.refunds(order, merchant)[0]
    assert refund["status"] == "failed" and refund["attempts"] == len(domain.REFUND_BACKOFF_S)
    assert shop.metric("linkshop_provider_refunds_total", provider="epay", outcome="failed") >= 1
    epay.fail_refunds = 0
    r = shop.retry_refund(order, refund["refund_id"], shop.admin)
    assert r.status_code == 200 and r.json["refund_no"] == refund["refund_no"]  # it may have been made: same number
    shop.jobs()
    assert shop.refund_status(order, merchant) == ["succeeded"] and len(epay.refunds) == 1
    r = shop.retry_refund(order, refund["refund_id"], merchant)
    assert r.status_code == 409 and r.json["error"]["code"] == "not_failed"
