"""支付宝 (Alipay, RSA2) end to end against a local fake gateway (tests.kit.fakes.alipay): the
WAP and PC cashiers' signed links and the QR code, the form-POST notice answered ``success``
(an unpaid status too), every forgery refused and counted, a lost notice found by the query
job, refunds through the gateway (idempotent on our refund number); and two notices Alipay
really signed, from its Node SDK's test-suite, checked against our verification."""
from decimal import Decimal

import pytest
import requests

from services.delivery.payments import BadNotice, NoticeRequest, ProviderError, RefundRequest, SignatureError
from services.delivery.payments import alipay as provider_module
from shared.config import ConfigError
from tests.kit.fakes.alipay import FakeAlipay, biz_of, query_of
from tests.kit.fakes.alipay_gateway import new_key, private_pem, public_pem_body, signing_text, verifies

pytestmark = pytest.mark.commits


@pytest.fixture
def gateway():
    fake = FakeAlipay()
    yield fake
    fake.close()


@pytest.fixture
def shop(paying_shop):
    return paying_shop


@pytest.fixture
def seller(shop):
    return shop.seller(title="月卡 & <Gold> 1/2")


def paid_order(shop, gateway, product_id, quantity=1):
    return shop.paid_order("alipay", gateway, product_id, [(200, "success")], quantity)


def provider_for(gateway, **override):
    return provider_module.from_env(None, gateway.env() | override, requests.Session())


# -- paying ----------------------------------------------------------------------------------

def test_wap_is_the_default_and_its_link_is_signed_as_the_protocol_says(shop, seller, gateway):
    r = shop.order(seller[1])
    assert r.status_code == 201, r.json
    order = r.json
    assert order["payment"]["provider"] == "alipay" and order["payment"]["pay_type"] == "wap"
    url = order["payment"]["pay_url"]
    assert url.startswith(gateway.url + "/gateway.do?")
    params, biz = query_of(url), biz_of(url)
    assert params["method"] == "alipay.trade.wap.pay" and params["app_id"] == gateway.app_id
    assert params["sign_type"] == "RSA2" and params["charset"] == "utf-8" and params["version"] == "1.0"
    assert params["notify_url"] == f"{shop.url}/delivery/v1/payments/alipay/notify"
    assert params["return_url"] == order["order_url"] and order["access_token"] in params["return_url"]
    assert biz == {"out_trade_no": order["order_no"], "total_amount": "12.34", "subject": "月卡 <Gold> 1 2",
                   "product_code": "QUICK_WAP_WAY", "quit_url": order["order_url"]}
    assert verifies(gateway.app_key.public_key(), signing_text(params), params["sign"])
    assert gateway.open(url).status_code == 200  # the fake cashier accepted our signature and parameters
    assert gateway.payments[order["order_no"]]["notify_url"] == params["notify_url"]


def test_page_pay_is_the_pc_cashier(shop, seller, gateway):
    order = shop.order_with("alipay", seller[1], pay_type="page")
    params, biz = query_of(order["payment"]["pay_url"]), biz_of(order["payment"]["pay_url"])
    assert params["method"] == "alipay.trade.page.pay" and biz["product_code"] == "FAST_INSTANT_TRADE_PAY"
    assert "quit_url" not in biz
    assert gateway.open(order["payment"]["pay_url"]).status_code == 200
    assert gateway.pay(order["order_no"]) == [(200, "success")]
    shop.drain()
    assert shop.view(order)["status"] == "delivered"


def test_qr_is_precreated_with_our_notify_url_and_paid_by_scanning(shop, seller, gateway):
    order = shop.order_with("alipay", seller[1], pay_type="qr")
    assert order["payment"]["pay_url"] is None and order["payment"]["qr_code"].startswith("https://qr.alipay.com/")
    call = gateway.requests[-1]
    assert call["method"] == "alipay.trade.precreate" and call["biz"]["total_amount"] == "12.34"
    assert call["params"]["notify_url"] == f"{shop.url}/delivery/v1/payments/alipay/notify"
    assert gateway.pay(order["order_no"]) == [(200, "success")]
    shop.drain()
    assert shop.view(order)["status"] == "delivered"


def test_a_precreate_alipay_refuses_or_cannot_answer_is_a_502_and_the_order_abandoned(shop, seller, gateway):
    gateway.methods["alipay.trade.precreate"] = lambda biz, params: {
        "code": "40004", "msg": "Business Failed", "sub_code": "ACQ.ACCESS_FORBIDDEN", "sub_msg": "无权限使用接口"}
    r = shop.order(seller[1], provider="alipay", pay_type="qr")
    assert r.status_code == 502 and r.json["error"]["code"] == "provider_unavailable"
    gateway.methods["alipay.trade.precreate"] = lambda biz, params: gateway.answer(params["method"], {
        "code": "10000", "qr_code": "https://qr.alipay.com/x"}, signed=False)
    r = shop.order(seller[1], provider="alipay", pay_type="qr")
    assert r.status_code == 502  # an unsigned answer is not trusted
    assert shop.order(seller[1], quantity=4, provider="alipay").status_code == 201  # their keys are back on sale


def test_alipay_takes_only_yuan(shop, gateway):
    _, pid = shop.seller(title="Card", price_cents=500, currency="USD", keys=["U1"])
    r = shop.order(pid, provider="alipay")
    assert r.status_code == 422 and r.json["error"]["code"] == "currency_not_supported"


# -- the notice ------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["TRADE_SUCCESS", "TRADE_FINISHED"])
def test_paid_notice_delivers_and_is_answered_success(shop, seller, gateway, status):
    order = shop.order_with("alipay", seller[1], quantity=2)
    gateway.open(order["payment"]["pay_url"])
    before = shop.notices("alipay", "delivered")
    assert gateway.pay(order["order_no"], trade_status=status) == [(200, "success")]
    shop.drain()
    view = shop.view(order)
    assert view["status"] == "delivered" and len(view["keys"]) == 2
    assert shop.notices("alipay", "delivered") == before + 1
    # Alipay resends: acknowledged again, nothing happens twice.
    url = gateway.payments[order["order_no"]]["notify_url"]
    assert gateway.notify(url, gateway.notice(order["order_no"], trade_status=status)) == [(200, "success")]
    assert shop.notices("alipay", "replay") >= 1 and len(shop.view(order)["keys"]) == 2


def test_an_unpaid_status_is_taken_answered_success_and_pays_nothing(shop, seller, gateway):
    order = shop.order_with("alipay", seller[1])
    gateway.open(order["payment"]["pay_url"])
    gateway.payments[order["order_no"]]["trade_no"] = "2026010122001400000000000001"
    url = gateway.payments[order["order_no"]]["notify_url"]
    for status in ("WAIT_BUYER_PAY", "TRADE_CLOSED"):
        before = shop.notices("alipay", "not_paid")
        # Answered success, or Alipay would resend it for 25 hours.
        assert gateway.notify(url, gateway.notice(order["order_no"], trade_status=status)) == [(200, "success")]
        assert shop.notices("alipay", "not_paid") == before + 1
    assert shop.view(order)["status"] == "pending"


def test_forgeries_are_refused_counted_and_change_nothing(shop, seller, gateway):
    order = shop.order_with("alipay", seller[1])
    gateway.open(order["payment"]["pay_url"])
    gateway.payments[order["order_no"]]["trade_no"] = "2026010122001400000000000002"
    url = gateway.payments[order["order_no"]]["notify_url"]
    gateway.payments["26120300000000000000"] = dict(gateway.payments[order["order_no"]])
    genuine = gateway.notice(order["order_no"], trade_status="TRADE_SUCCESS")
    cases = [
        ("bad_signature", gateway.notice(order["order_no"], sign_with=new_key(), trade_status="TRADE_SUCCESS")),
        ("bad_signature", dict(genuine, total_amount="0.01")),  # a field changed after signing
        ("bad_signature", dict(genuine, sign_type="RSA")),  # we verify RSA2 only
        ("bad_signature", {k: v for k, v in genuine.items() if k != "sign"}),
        ("amount_mismatch", gateway.notice(order["order_no"], trade_status="TRADE_SUCCESS", total_amount="0.01")),
        ("bad_notice", gateway.notice(order["order_no"], trade_status="TRADE_SUCCESS", app_id="2021000000009999")),
        ("bad_notice", gateway.notice(order["order_no"], trade_status="TRADE_SUCCESS", drop=("trade_no",))),
        ("bad_notice", gateway.notice(order["order_no"], trade_status="TRADE_SUCCESS", total_amount="12.345")),
        ("unknown_order", gateway.notice("26120300000000000000", trade_status="TRADE_SUCCESS")),
    ]
    for outcome, params in cases:
        before = shop.notices("alipay", outcome)
        read = gateway.notify(url, params)
        assert set(read) == {(400, "fail")}, (outcome, read)
        assert shop.notices("alipay", outcome) == before + len(read), outcome
    r = shop.delivery.get(f"/delivery/v1/payments/alipay/notify?{'&'.join(f'{k}={v}' for k, v in genuine.items())}")
    assert r.status_code == 405  # Alipay's notices are form POSTs only
    assert shop.view(order)["status"] == "pending"
    assert gateway.pay(order["order_no"]) == [(200, "success")]  # the genuine one still works
    shop.drain()
    assert shop.view(order)["status"] == "delivered"


def test_a_sandbox_order_cannot_be_paid_by_an_alipay_notice(shop, seller, gateway):
    sandbox_order = shop.order_with("sandbox", seller[1])
    alipay_order = shop.order_with("alipay", seller[1])
    gateway.open(alipay_order["payment"]["pay_url"])
    gateway.payments[sandbox_order["order_no"]] = dict(gateway.payments[alipay_order["order_no"]],
                                                       trade_no="2026010122001400000000000003",
                                                       status="TRADE_SUCCESS")
    before = shop.notices("alipay", "wrong_provider")
    read = gateway.notify(gateway.payments[alipay_order["order_no"]]["notify_url"],
                          gateway.notice(sandbox_order["order_no"]))
    assert read[0] == (400, "fail") and shop.notices("alipay", "wrong_provider") == before + len(read)
    assert shop.view(sandbox_order)["status"] == "pending"


def test_a_trade_number_paying_one_order_cannot_pay_another(shop, seller, gateway):
    first, second = shop.order_with("alipay", seller[1]), shop.order_with("alipay", seller[1])
    for order in (first, second):
        gateway.open(order["payment"]["pay_url"])
    gateway.pay(first["order_no"])
    gateway.payments[second["order_no"]].update(trade_no=gateway.payments[first["order_no"]]["trade_no"],
                                                status="TRADE_SUCCESS")
    before = shop.notices("alipay", "replay")
    read = gateway.notify(gateway.payments[second["order_no"]]["notify_url"], gateway.notice(second["order_no"]))
    assert read == [(200, "success")]  # acknowledged (it was applied once), never applied twice
    assert shop.notices("alipay", "replay") == before + 1
    shop.drain()
    assert shop.view(second)["status"] == "pending"


# -- payments whose notice never came ----------------------------------------------------------

def test_a_lost_notice_is_found_by_the_query_job(shop, seller, gateway):
    order = shop.order_with("alipay", seller[1])
    gateway.open(order["payment"]["pay_url"])
    gateway.lose_notices = True
    gateway.pay(order["order_no"])
    shop.jobs()
    view = shop.view(order)
    assert view["status"] == "delivered" and view["keys"]
    assert shop.metric("linkshop_payment_recoveries_total", provider="alipay", outcome="delivered") >= 1
    assert [c["biz"] for c in gateway.requests if c["method"] == "alipay.trade.query"][-1] == \
        {"out_trade_no": order["order_no"]}


def test_the_buyer_back_from_paying_triggers_the_query(shop, seller, gateway):
    order = shop.order_with("alipay", seller[1], pay_type="qr")
    r = shop.check_payment(order)
    assert r.status_code == 200 and r.json["status"] == "pending"  # not scanned: ACQ.TRADE_NOT_EXIST
    gateway.payments[order["order_no"]]["trade_no"] = "2026010122001400000000000004"
    r = shop.check_payment(order)
    assert r.status_code == 200 and r.json["status"] == "pending"  # scanned, WAIT_BUYER_PAY
    gateway.lose_notices = True
    gateway.pay(order["order_no"])
    r = shop.check_payment(order)
    assert r.status_code == 200 and r.json["status"] == "delivered" and r.json["keys"]


def test_query_answers_mapped(gateway):
    provider = provider_for(gateway)
    gateway.methods["alipay.trade.query"] = lambda biz, params: {"code": "20000", "sub_code": "isp.unknow-error",
                                                                 "msg": "Service Currently Unavailable"}
    with pytest.raises(ProviderError, match="20000"):
        provider.query("26120300000000000001", None)
    gateway.methods["alipay.trade.query"] = lambda biz, params: {
        "code": "10000", "out_trade_no": "26120300000000000099", "trade_no": "T", "total_amount": "1.00",
        "trade_status": "TRADE_SUCCESS"}
    with pytest.raises(ProviderError, match="another order"):
        provider.query("26120300000000000001", None)
    other = FakeAlipay()
    try:  # an answer signed by anyone but Alipay's key is not trusted
        forged = provider_for(gateway, LINKSHOP_ALIPAY_PUBLIC_KEY=public_pem_body(other.alipay_key))
        with pytest.raises(ProviderError, match="signature"):
            forged.query("26120300000000000001", None)
    finally:
        other.close()


# -- refunds ---------------------------------------------------------------------------------

def test_refund_goes_through_the_gateway(shop, seller, gateway):
    merchant, pid = seller
    order = paid_order(shop, gateway, pid, quantity=2)
    shop.refund(order, merchant, quantity=1, reason="bad")
    shop.jobs()
    refunds = shop.refunds(order, merchant)
    assert [x["status"] for x in refunds] == ["succeeded"]
    assert len(gateway.refunds) == 1
    sent = gateway.refunds[0]
    assert sent["out_trade_no"] == order["order_no"] and Decimal(sent["refund_amount"]) == Decimal("12.34")
    assert sent["trade_no"] == gateway.payments[order["order_no"]]["trade_no"]
    assert sent["out_request_no"] == refunds[0]["refund_no"] and sent["refund_reason"] == "bad"
    # Alipay then notifies the partial refund with the payment's own trade number: a replay.
    before = shop.notices("alipay", "replay")
    read = gateway.notify(gateway.payments[order["order_no"]]["notify_url"], gateway.notice(
        order["order_no"], refund_fee="12.34", gmt_refund="2026-01-01 10:00:00", out_biz_no=sent["out_request_no"]))
    assert read == [(200, "success")] and shop.notices("alipay", "replay") == before + 1


def test_a_refund_asked_again_is_made_once(shop, seller, gateway):
    order = paid_order(shop, gateway, seller[1])
    provider = provider_for(gateway)
    request = RefundRequest(refund_no="R-1", order_no=order["order_no"],
                            txn_id=gateway.payments[order["order_no"]]["trade_no"], amount_cents=1234,
                            order_amount_cents=1234, currency="CNY", reason="")
    first, again = provider.refund(request), provider.refund(request)  # an answer lost, the worker retries
    assert first.ok and again.ok and first.provider_refund_id == again.provider_refund_id == "R-1"
    assert len(gateway.refunds) == 1 and "refund_reason" not in gateway.refunds[0]
    over = provider.refund(RefundRequest(**{**request.__dict__, "refund_no": "R-2"}))
    assert not over.ok and over.error.startswith("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL")


def test_a_refused_refund_is_failed_visible_and_can_be_retried(shop, seller, gateway):
    merchant, pid = seller
    order = paid_order(shop, gateway, pid)
    gateway.refuse_refunds = True
    shop.refund(order, merchant, reason="bad")
    shop.jobs()
    assert shop.refund_status(order, merchant) == ["failed"]
    failed = shop.failed_refunds()
    assert [f["order_no"] for f in failed] == [order["order_no"]]
    assert failed[0]["error"] == "ACQ.TRADE_NOT_ALLOW_REFUND 当前交易不允许退款"
    gateway.refuse_refunds = False
    r = shop.retry_refund(order, failed[0]["refund_id"], merchant)
    assert r.status_code == 200 and r.json["status"] == "requested"
    shop.jobs()
    assert shop.refund_status(order, merchant) == ["succeeded"] and len(gateway.refunds) == 1


def test_alipay_unavailable_is_retried_with_backoff(shop, seller, gateway):
    merchant, pid = seller
    order = paid_order(shop, gateway, pid)
    gateway.fail_refunds = 1
    shop.refund(order, merchant, reason="bad")
    shop.jobs()
    refunds = shop.refunds(order, merchant)
    assert refunds[0]["status"] == "requested" and refunds[0]["attempts"] == 1 and "20000" in refunds[0]["error"]
    assert gateway.refunds == []


# -- settings ----------------------------------------------------------------------------------

def test_settings_are_all_or_none_and_a_bad_key_is_named_never_shown(gateway):
    env = gateway.env()
    assert provider_module.from_env(None, {}, requests.Session()) is None
    with pytest.raises(ConfigError, match="LINKSHOP_ALIPAY_PUBLIC_KEY must be set"):
        provider_module.from_env(None, {k: v for k, v in env.items() if not k.endswith("PUBLIC_KEY")}, None)
    broken = env["LINKSHOP_ALIPAY_PRIVATE_KEY"].replace("A", "B")
    with pytest.raises(ConfigError) as refused:
        provider_for(gateway, LINKSHOP_ALIPAY_PRIVATE_KEY=broken)
    assert "LINKSHOP_ALIPAY_PRIVATE_KEY" in str(refused.value) and broken[40:80] not in str(refused.value)
    with pytest.raises(ConfigError, match="LINKSHOP_ALIPAY_PUBLIC_KEY"):
        provider_for(gateway, LINKSHOP_ALIPAY_PUBLIC_KEY="MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA")
    assert provider_for(gateway, LINKSHOP_ALIPAY_PRIVATE_KEY=env["LINKSHOP_ALIPAY_PRIVATE_KEY"].replace("\n", "\\n"))


# -- notices Alipay really signed --------------------------------------------------------------

# Two trade_status_sync notices from Alipay's production gateway and the Alipay public key that
# verifies them, published in Alipay's Node SDK test-suite: github.com/alipay/alipay-sdk-nodejs,
# test/alipay.test.js, describe('checkNotifySign') > 'verify sign should delete sign_type'
# (commit 0b340c7c794e3db52daf59354fcabbcde230595a). ``fund_bill_list`` is written there as a JS
# value; Alipay sends (and signed) its JSON text, as the SDK's JSON.stringify gives it.
RECORDED_ALIPAY_PUBLIC_KEY = (
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqObrdC7hrgAVM98tK0nv3hSQRGGKT4lBsQjHiGjeYZjOPIPHR5knm2jnnz/YGIXIofVH"
    "kA/tAlBAd5DrY7YpvI4tP5EONLtZKC2ghBMx7McI2wRD0xiqzxOQr1FuhZGJ8/AUokBzJrzY+aGX2xcOrxFYRlFilvVLTXg4LWjR1tdPkO6+i7wQ"
    "ZAIVMClPkwVRZEbaERRHlKqTzv2gGv5rDU8gRoe1LeaN+6BlbTqHWkQcNCUNrA8C6l17XAXGKDsm/9TFWwO8EPHHHCaQdjtV5/FdcWIt+L8SR1ss"
    "7EXTjYDFtxcKVv9rEoY1lX8T4mX+GbXfZHraG5NCF1+XioL5JwIDAQAB")
RECORDED_COMMON = {
    "charset": "utf-8", "seller_email": "z97-yuquerevenue@service.aliyun.com", "subject": "语雀空间 500人规模",
    "buyer_id": "2088102534368455", "invoice_amount": "0.10",
    "fund_bill_list": '[{"amount":"0.10","fundChannel":"ALIPAYACCOUNT"}]', "notify_type": "trade_status_sync",
    "trade_status": "TRADE_SUCCESS", "receipt_amount": "0.10", "buyer_pay_amount": "0.10",
    "app_id": "2019073166072302", "sign_type": "RSA2", "seller_id": "2088531891668739", "version": "1.0",
    "total_amount": "0.10", "auth_app_id": "2019073166072302", "buyer_logon_id": "xud***@126.com",
    "point_amount": "0.00"}
RECORDED_NOTICES = [RECORDED_COMMON | {
    "gmt_create": "2019-08-15 15:37:55", "gmt_payment": "2019-08-15 15:37:58", "notify_time": "2019-08-15 15:37:59",
    "notify_id": "2019081500222153759068450559621257", "out_trade_no": "20190815153750722-564-55",
    "trade_no": "2019081522001468450509133591",
    "sign": "QUxj7MQ0NQT++AyDbykzTw6iWflrgfY7EIssTaNfJaDkOHqZAFv3hbr97h+z/LCkmnqkBq+V81uHtb3q+i19W1B7FlMNfJB8XPSFD3xd"
            "HXEzvj9ccFTE9gxCEG+3oub4TeNe+rrOCt+3cfOFRh5jZzAiZbEZQem3ZMdhIHz/I6TVGNWuPOL4Wr56/Vjq57BLZUPKYpDo7DVfNEYe"
            "u0dZ76irMhE4a5FJ26c6qQu9gnG6NmKhtn+tSI6859RKF9bzptbM49klrliVnjBI4m6y7f329Ur9lecC/UlbIo3vKDFmcsLlADKu64FT"
            "5jjyRVaVQcP64khZdJwRdzrJ5QxxxQ=="}, RECORDED_COMMON | {
    "gmt_create": "2019-08-15 15:56:22", "gmt_payment": "2019-08-15 15:56:24", "notify_time": "2019-08-15 15:56:25",
    "notify_id": "2019081500222155624068450559358070", "out_trade_no": "20190815155618536-564-57",
    "trade_no": "2019081522001468450512505578",
    "sign": "QfTb8tqE1BMhS5qAnXtvsF3/jBkEvu9q9en0pdbBUDDjvKycZhQb7h8GDs4FKfi049PynaNuatxSgLb/nLWZpXyyh0LEWdK2S6Ri7nPw"
            "rVgOs08zugLO20vOQz44y3ti2Ncm8/wZts1Fr2gZ7pShnVX3d1B50hbsXnObT1r/U8ONNQjWXd0HIul4TG+Q3fm3svmSvFEy0Wnzuhcy"
            "HPX5Gm4ELNctL6Qd5YniGJFNcc7kopHYtI/XD9YCKCH6Ct02rzUs9i11C9CsadtZn+WhxF26Dqt9sGEFajkJ8cxUTLi8+VCpLHsgPE8P"
            "0y095uQcDdK0YjCh4x7wVSov+lrmOQ=="}]


def recorded_provider(app_id="2019073166072302"):
    env = {"LINKSHOP_ALIPAY_GATEWAY": "https://openapi.alipay.com/gateway.do", "LINKSHOP_ALIPAY_APP_ID": app_id,
           "LINKSHOP_ALIPAY_PRIVATE_KEY": private_pem(new_key()),  # ours signs requests only: any key will do
           "LINKSHOP_ALIPAY_PUBLIC_KEY": RECORDED_ALIPAY_PUBLIC_KEY}
    return provider_module.from_env(None, env, None)


def posted(params):
    return NoticeRequest(method="POST", body=b"", headers={}, params=params)


@pytest.mark.parametrize("recorded", RECORDED_NOTICES, ids=["first", "second"])
def test_notices_alipay_signed_are_verified_and_a_changed_field_is_not(recorded):
    provider = recorded_provider()
    notice = provider.verify(posted(recorded))
    assert (notice.order_no, notice.amount_cents, notice.currency, notice.txn_id, notice.status,
            notice.payer_account) == (recorded["out_trade_no"], 10, "CNY", recorded["trade_no"], "paid",
                                      "2088102534368455")
    for field, value in [("total_amount", "100.00"), ("out_trade_no", "20190815153750722-564-56"),
                         ("trade_status", "TRADE_FINISHED"), ("fund_bill_list", "[{amount:\"0.10\"}]")]:
        with pytest.raises(SignatureError):
            provider.verify(posted(dict(recorded, **{field: value})))
    with pytest.raises(SignatureError):
        provider.verify(posted(dict(recorded, sign_type="RSA")))
    with pytest.raises(BadNotice):  # Alipay's signature, another merchant's app
        recorded_provider(app_id="2021000000000001").verify(posted(recorded))
