"""WeChat Pay API v3 (Native) end to end against a local fake gateway (tests.kit.fakes.wechatpay):
the signed prepay call and its QR code, the encrypted, signed notice answered 204, every forgery
refused and counted, a lost notice found by the query job, refunds through the gateway, answers
not signed by WeChat Pay refused; the settings; and WeChat Pay's own SDKs' recorded vectors."""
import json
import time

import pytest

from services.delivery.payments import BadNotice, IgnoredNotice, NoticeRequest, SignatureError, wechatpay
from shared.config import ConfigError
from tests.kit.fakes.wechatpay import (MERCHANT_KEY, MERCHANT_SERIAL, OTHER_KEY, PLATFORM_KEY, PLATFORM_SERIAL,
                                       FakeWechatpay, private_pem, public_pem)

pytestmark = pytest.mark.commits


@pytest.fixture
def gateway():
    wechat = FakeWechatpay()
    yield wechat
    wechat.close()


@pytest.fixture
def wechat(gateway):
    return gateway


@pytest.fixture
def shop(paying_shop):
    return paying_shop


def paid_order(shop, wechat, product_id, quantity=1):
    return shop.paid_order("wechatpay", wechat, product_id, [(204, "")], quantity)


def test_native_prepay_is_signed_and_gives_the_qr_code(shop, seller, wechat):
    order = shop.order_with("wechatpay", seller[1], quantity=2)
    payment = order["payment"]
    assert payment["provider"] == "wechatpay" and payment["pay_type"] == "native" and payment["pay_url"] is None
    sent = wechat.payments[order["order_no"]]
    assert payment["qr_code"] == sent["code_url"] and payment["qr_code"].startswith("weixin://wxpay/bizpayurl?pr=")
    assert sent["appid"] == wechat.appid and sent["mchid"] == wechat.mchid and sent["description"] == "月卡 & <Gold>"
    assert sent["amount"] == {"total": 2468, "currency": "CNY"} and sent["out_trade_no"] == order["order_no"]
    assert sent["notify_url"] == f"{shop.url}/delivery/v1/payments/wechatpay/notify"
    # The gateway verified our signature (tests.kit.fakes.wechatpay, its own code) before answering.
    assert wechat.signed[-1]["mchid"] == wechat.mchid and wechat.signed[-1]["serial_no"] == MERCHANT_SERIAL
    assert len(wechat.signed[-1]["nonce_str"]) == 32


def test_a_long_title_is_cut_to_127_bytes_between_characters(shop, wechat):
    _, pid = shop.seller(title="点" * 60, price_cents=100, keys=["K1"])  # 180 bytes of UTF-8
    order = shop.order_with("wechatpay", pid)
    assert wechat.payments[order["order_no"]]["description"] == "点" * 42  # 126 bytes


def test_paid_notice_delivers_and_is_answered_204(shop, seller, wechat):
    order = shop.order_with("wechatpay", seller[1], quantity=2)
    before = shop.notices("wechatpay", "delivered")
    assert wechat.pay(order["order_no"]) == [(204, "")]
    shop.drain()
    view = shop.view(order)
    assert view["status"] == "delivered" and len(view["keys"]) == 2
    assert shop.notices("wechatpay", "delivered") == before + 1
    # WeChat Pay resends: acknowledged again, nothing happens twice.
    url = wechat.payments[order["order_no"]]["notify_url"]
    assert wechat.notify(url, wechat.notice(order["order_no"])) == [(204, "")]
    assert shop.notices("wechatpay", "replay") >= 1 and len(shop.view(order)["keys"]) == 2


def test_native_is_the_only_way_to_pay(shop, seller):
    r = shop.order(seller[1], provider="wechatpay", pay_type="jsapi")
    assert r.status_code == 422 and "pay_type" in r.json["error"]["fields"]


def test_forgeries_are_refused_counted_and_change_nothing(shop, seller, wechat):
    order = shop.order_with("wechatpay", seller[1])
    no = order["order_no"]
    wechat.payments[no].update(paid=True, transaction_id="4200000000000000000000000001")
    wechat.payments["26120300000000000000"] = dict(wechat.payments[no])
    url = wechat.payments[no]["notify_url"]
    stale = int(time.time()) - 301
    cases = [
        ("bad_signature", 401, wechat.notice(no, sign_with=OTHER_KEY)),
        ("bad_signature", 401, wechat.notice(no, serial="PUB_KEY_ID_SOMEONE_ELSE")),
        ("bad_signature", 401, wechat.notice(no, timestamp=stale)),  # a captured notice, played later
        ("bad_signature", 401, wechat.notice(no, apiv3_key="k" * 32)),  # signed, but not encrypted for us
        ("bad_notice", 400, wechat.notice(no, mchid="1900000999")),
        ("bad_notice", 400, wechat.notice(no, appid="wx0000000000000000")),
        ("ignored", 204, wechat.notice(no, event_type="REFUND.SUCCESS")),  # genuine, acknowledged
        ("amount_mismatch", 422, wechat.notice(no, total=1)),
        ("amount_mismatch", 422, wechat.notice(no, currency="USD")),
        ("not_paid", 400, wechat.notice(no, trade_state="CLOSED")),
        ("unknown_order", 404, wechat.notice("26120300000000000000")),
    ]
    headers, body = wechat.notice(no)
    cases.append(("bad_signature", 401, (headers, body.replace(b'"TRANSACTION.SUCCESS"', b'"TRANSACTION.SUCCESZ"'))))
    cases.append(("bad_signature", 401, ({"Content-Type": "application/json"}, body)))  # unsigned
    for outcome, status, notice in cases:
        before = shop.notices("wechatpay", outcome)
        read = wechat.notify(url, notice)
        assert {s for s, _ in read} == {status}, (outcome, read)
        assert status == 204 or all(json.loads(text)["code"] == "FAIL" for _, text in read), outcome
        assert shop.notices("wechatpay", outcome) == before + len(read), outcome
    assert shop.view(order)["status"] == "pending"
    assert wechat.notify(url, wechat.notice(no)) == [(204, "")]  # the genuine one still works
    shop.drain()
    assert shop.view(order)["status"] == "delivered"


def test_a_sandbox_order_cannot_be_paid_by_a_wechatpay_notice(shop, seller, wechat):
    sandbox_order = shop.order_with("sandbox", seller[1])
    wechat_order = shop.order_with("wechatpay", seller[1])
    wechat.payments[sandbox_order["order_no"]] = dict(wechat.payments[wechat_order["order_no"]], paid=True,
                                                      transaction_id="4200000000000000000000000002")
    before = shop.notices("wechatpay", "wrong_provider")
    read = wechat.notify(wechat.payments[wechat_order["order_no"]]["notify_url"],
                         wechat.notice(sandbox_order["order_no"]))
    assert read[0][0] >= 400 and shop.notices("wechatpay", "wrong_provider") == before + len(read)
    assert shop.view(sandbox_order)["status"] == "pending"


def test_a_transaction_id_paying_one_order_cannot_pay_another(shop, seller, wechat):
    first = paid_order(shop, wechat, seller[1])
    second = shop.order_with("wechatpay", seller[1])
    wechat.payments[second["order_no"]].update(paid=True,
                                               transaction_id=wechat.payments[first["order_no"]]["transaction_id"])
    before = shop.notices("wechatpay", "replay")
    read = wechat.notify(wechat.payments[second["order_no"]]["notify_url"], wechat.notice(second["order_no"]))
    assert read == [(204, "")]  # acknowledged (it was applied once), never applied twice
    assert shop.notices("wechatpay", "replay") == before + 1
    shop.drain()
    assert shop.view(second)["status"] == "pending"


def test_a_lost_notice_is_found_by_the_query_job(shop, seller, wechat):
    order = shop.order_with("wechatpay", seller[1])
    wechat.lose_notices = True
    wechat.pay(order["order_no"])
    shop.jobs()
    view = shop.view(order)
    assert view["status"] == "delivered" and view["keys"]
    assert shop.metric("linkshop_payment_recoveries_total", provider="wechatpay", outcome="delivered") >= 1
    assert wechat.signed[-1]["mchid"] == wechat.mchid  # the query was signed too


def test_the_buyer_back_from_paying_triggers_the_query(shop, seller, wechat):
    order = shop.order_with("wechatpay", seller[1])
    r = shop.check_payment(order)
    assert r.status_code == 200 and r.json["status"] == "pending"  # NOTPAY
    wechat.lose_notices = True
    wechat.pay(order["order_no"])
    r = shop.check_payment(order)
    assert r.status_code == 200 and r.json["status"] == "delivered" and r.json["keys"]
    assert shop.check_payment(order, token="wrong").status_code == 404


def test_an_order_the_gateway_never_saw_is_not_paid(shop, seller, wechat):
    order = shop.order_with("wechatpay", seller[1])
    del wechat.payments[order["order_no"]]  # ORDER_NOT_EXIST
    r = shop.check_payment(order)
    assert r.status_code == 200 and r.json["status"] == "pending"


def test_answers_not_signed_by_wechat_pay_are_refused(shop, seller, wechat):
    order = shop.order_with("wechatpay", seller[1])
    wechat.answer_key = OTHER_KEY
    r = shop.order(seller[1], provider="wechatpay")
    assert r.status_code == 502 and r.json["error"]["code"] == "provider_unavailable"
    wechat.lose_notices = True
    wechat.pay(order["order_no"])
    assert shop.check_payment(order).status_code == 502  # a forged "paid" answer would look just like this
    assert shop.view(order)["status"] == "pending"
    wechat.answer_key = PLATFORM_KEY
    assert shop.check_payment(order).json["status"] == "delivered"


def test_refund_goes_through_the_gateway(shop, seller, wechat):
    merchant, pid = seller
    order = paid_order(shop, wechat, pid, quantity=2)
    shop.refund(order, merchant, quantity=1, reason="bad")
    shop.jobs()
    refunds = shop.refunds(order, merchant)
    assert [x["status"] for x in refunds] == ["succeeded"]
    assert len(wechat.refunds) == 1
    sent = wechat.refunds[0]
    assert sent["out_trade_no"] == order["order_no"] and sent["out_refund_no"] == refunds[0]["refund_no"]
    assert sent["amount"] == {"refund": 1234, "total": 2468, "currency": "CNY"} and sent["reason"] == "bad"


def test_a_refused_refund_is_failed_visible_and_can_be_retried(shop, seller, wechat):
    merchant, pid = seller
    order = paid_order(shop, wechat, pid)
    wechat.refuse_refunds = True
    shop.refund(order, merchant, reason="bad")
    shop.jobs()
    assert shop.refund_status(order, merchant) == ["failed"]
    failed = shop.failed_refunds()
    assert [f["order_no"] for f in failed] == [order["order_no"]] and failed[0]["error"].startswith("NOT_ENOUGH:")
    wechat.refuse_refunds = False
    r = shop.retry_refund(order, failed[0]["refund_id"], merchant)
    assert r.status_code == 200 and r.json["status"] == "requested"
    shop.jobs()
    assert shop.refund_status(order, merchant) == ["succeeded"] and len(wechat.refunds) == 1


def test_a_gateway_error_is_retried_with_backoff(shop, seller, wechat):
    merchant, pid = seller
    order = paid_order(shop, wechat, pid)
    wechat.fail_refunds = 1
    shop.refund(order, merchant, reason="bad")
    shop.jobs()
    refunds = shop.refunds(order, merchant)
    assert refunds[0]["status"] == "requested" and refunds[0]["attempts"] == 1
    assert "HTTP 500 SYSTEM_ERROR" in refunds[0]["error"] and wechat.refunds == []


# -- settings -------------------------------------------------------------------------------

def settings_env(tmp_path, **override):
    gateway = {"LINKSHOP_WECHATPAY_GATEWAY": "https://api.mch.weixin.qq.com", "LINKSHOP_WECHATPAY_APPID": "wx1",
               "LINKSHOP_WECHATPAY_MCHID": "1900000109", "LINKSHOP_WECHATPAY_SERIAL_NO": MERCHANT_SERIAL,
               "LINKSHOP_WECHATPAY_PLATFORM_SERIAL": PLATFORM_SERIAL, "LINKSHOP_WECHATPAY_APIV3_KEY": "A" * 32,
               "LINKSHOP_WECHATPAY_PRIVATE_KEY": str(tmp_path / "apiclient_key.pem"),  # a mounted file
               "LINKSHOP_WECHATPAY_PLATFORM_PUBLIC_KEY": public_pem(PLATFORM_KEY).replace("\n", "\\n")}
    (tmp_path / "apiclient_key.pem").write_text(private_pem(MERCHANT_KEY))
    return gateway | override


def test_settings_all_or_none(tmp_path):
    assert wechatpay.from_env(None, {}, None) is None
    provider = wechatpay.from_env(None, settings_env(tmp_path), None)
    assert provider.name == "wechatpay" and provider.currencies == {"CNY"} and provider.pay_types == ("native",)
    with pytest.raises(ConfigError, match="LINKSHOP_WECHATPAY_APIV3_KEY"):
        wechatpay.from_env(None, settings_env(tmp_path, LINKSHOP_WECHATPAY_APIV3_KEY=""), None)


@pytest.mark.parametrize("name,value", [
    ("LINKSHOP_WECHATPAY_APIV3_KEY", "secret-apiv3-key-31-bytes-long!"),
    ("LINKSHOP_WECHATPAY_APIV3_KEY", "secret-apiv3-key-33-bytes-long!!!"),
    ("LINKSHOP_WECHATPAY_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\\nc2VjcmV0LWtleQ==\\n-----END PRIVATE KEY-----"),
    ("LINKSHOP_WECHATPAY_PRIVATE_KEY", public_pem(MERCHANT_KEY)),
    ("LINKSHOP_WECHATPAY_PLATFORM_PUBLIC_KEY",
     "-----BEGIN PUBLIC KEY-----\\nc2VjcmV0LWtleQ==\\n-----END PUBLIC KEY-----"),
])
def test_a_key_that_does_not_load_refuses_to_start_without_saying_it(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name) as refused:
        wechatpay.from_env(None, settings_env(tmp_path, **{name: value}), None)
    assert "secret" not in str(refused.value) and "c2VjcmV0" not in str(refused.value)


# -- WeChat Pay's recorded vectors ------------------------------------------------------------

# A signed notice and the platform certificate that verifies it, from WeChat Pay's official Go
# SDK's test-suite: github.com/wechatpay-apiv3/wechatpay-go, core/notify/notify_test.go
# (TestHandler_ParseNotifyRequest). Its APIv3 key there is 16 bytes (AES-128-GCM under the same
# algorithm name), so it goes through the module's functions rather than a configured provider.
GO_SDK_CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIIDVzCCAj+gAwIBAgIJANfOWdH1ItcBMA0GCSqGSIb3DQEBCwUAMEIxCzAJBgNV
BAYTAlhYMRUwEwYDVQQHDAxEZWZhdWx0IENpdHkxHDAaBgNVBAoME0RlZmF1bHQg
Q29tcGFueSBMdGQwHhcNMjEwNDI3MDg1NTIzWhcNMzEwNDI1MDg1NTIzWjBCMQsw
CQYDVQQGEwJYWDEVMBMGA1UEBwwMRGVmYXVsdCBDaXR5MRwwGgYDVQQKDBNEZWZh
dWx0IENvbXBhbnkgTHRkMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA
2VCTd91fnUn73Xy9DLvt/V62TVxRTEEstVdeRaZ3B3leO0pldE806mXO4RwdHXag
HQ4vGeZN0yqm++rDsGK+U3AH7kejyD2pXshNP9Cq5YwbptiLGtjcquw4HNxJQUOm
DeJf2vg6byms9RUipiq4SzbJKqJFlUpbuIPDpSpWz10PYmyCNeDGUUK65E5h2B83
4uxl1zNLYQCrkdBzb8oUxwYeP5a2DNxmjL5lsJML7DGr5znsevnoqGRwTm9fxCGf
y8wus7hwKz6clt3Whmmda7UAdb1c08hEQFVRbF14AR73xbnd8N0obCWJPCbzMCtk
aSef4FdEEgEXJiw0VAJT8wIDAQABo1AwTjAdBgNVHQ4EFgQUT1c7nd/SUO76HSoZ
umNUJv1R5PwwHwYDVR0jBBgwFoAUT1c7nd/SUO76HSoZumNUJv1R5PwwDAYDVR0T
BAUwAwEB/zANBgkqhkiG9w0BAQsFAAOCAQEAfTjxKRQMzNB/U6ZoCUS+BSNfa2Oh
0plMN6ZuzwiVVZwg1jywvv5yv04koS7Pd4i9E4gt9ZBUQXlpq+A3oOCEEHNRR6b2
kyazGRM7s0OP5X21WrbpSmKmU6K7hkfx30yYs08LVs/Q8DIhvaj1FCFeJzUCzYn/
fHMq4tsbKO0dKAeydPM/nrUZBmaYQVKMVOORGLFjFKVO7JV6Kq/R86ouhjEPgJOe
2xulNBUcjicqtZlBdEh/PWCYP2SpGVDclKm8jeo175T3EVAkdKzzmfpxtMmnMlmq
cTJOU9TxuGvNASMtjj7pYIerTx+xgZDXEVBWFW9PjJ0TV06tCRsgSHItgg==
-----END CERTIFICATE-----"""
GO_SDK_HEADERS = {
    "Content-Type": "application/json",
    "Wechatpay-Nonce": "EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBz",
    "Wechatpay-Timestamp": "1624523846",
    "Wechatpay-Serial": "D7CE59D1F522D701",
    "Wechatpay-Signature": (
        "tJHIiIS9eB2hAYstmAmbbD3ZE5LiIm/Ug5tuL4fC0YOFRWIHV39UFIZXC0e9Wl6lBu6sKvkqDkzpqzBsVHyXF"
        "lbYZTOQrVdG4b6LfTnK4mikv9++ixJMd3vTf2yCqvBkh98zs3Ds5zsYQakzbcwhmw4fMJs4nPLws28H0UW9FjDR//rxELLwX"
        "vV1VEA1IBLX70xptjL8hrfUjEE8kkry6yNJTHZRU8CAc7qHli2Ng1V1qb9ARbK8A3ThmFmPQvRGrapI/jS2laKKgYUmfdE"
        "dkNO6B2Cke5e8VTxY406ArAmQ90GAihDwIcb16TQMnzCMBoutnwZKNiKRACrFmtxw2Q=="),
}
GO_SDK_BODY = (
    '{"id":"3119dfba-e649-5eec-ab1e-3412bc4d2e17","create_time":"2021-06-24T16:37:26+08:00",'
    '"resource_type":"encrypt-resource","event_type":"PAYSCORE.USER_OPEN_SERVICE","summary":"签约成功",'
    '"resource":{"original_type":"payscore","algorithm":"AEAD_AES_256_GCM","ciphertext":"'
    'YDS3lKPaC4Y52Gf3uhft5qUBlIa8b428AWTtTauHQfQrRw+X1WpiuHIDy0vo1Vd6VEq67aVyqPdDYMkRVSDaZL3iZttevRMOoPKMif'
    'ozg6XPWjIZumks/GpT48lI4NizyeaqLBokNebthah3o1H76qSlO9NkDjp9bzmKLEYYH9TEklFUpsvPqOTOcgSLgh21YJXYR7dEBXF'
    'gRLiNIKRgO5JdXh1hccRUAlyVWxE54PXpnQ==",'
    '"associated_data":"payscore","nonce":"Kj7QIyUiYx1q"}}').encode()
GO_SDK_PLAINTEXT = (b'{"mchid":"1234567890","appid":"054aa7d7a2a54ab5898df65bd96f001c",'
                    b'"create_time":"2020-06-30T12:12:00+08:00",'
                    b'"out_contract_code":"21640bdbd08e473e828f3206a2741c6e"}')


def test_a_notice_signed_by_wechat_pay_in_its_go_sdk_verifies_and_decrypts():
    key = wechatpay._platform_key(GO_SDK_CERTIFICATE)
    signed_at = 1624523846
    wechatpay.verify_signature(key, "D7CE59D1F522D701", GO_SDK_HEADERS, GO_SDK_BODY, signed_at + 60)
    resource = json.loads(GO_SDK_BODY)["resource"]
    assert wechatpay.decrypt_resource(b"testMchAPIv3Key0", resource) == GO_SDK_PLAINTEXT
    refusals = [
        (GO_SDK_HEADERS, GO_SDK_BODY.replace(b"payscore", b"paysCore"), signed_at),  # the body changed
        (GO_SDK_HEADERS | {"Wechatpay-Nonce": "EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBZ"}, GO_SDK_BODY, signed_at),
        (GO_SDK_HEADERS | {"Wechatpay-Serial": "D7CE59D1F522D702"}, GO_SDK_BODY, signed_at),
        (GO_SDK_HEADERS, GO_SDK_BODY, signed_at + 301),  # replayed after five minutes
    ]
    for headers, body, now in refusals:
        with pytest.raises(SignatureError):
            wechatpay.verify_signature(key, "D7CE59D1F522D701", headers, body, now)
    with pytest.raises(SignatureError):
        wechatpay.decrypt_resource(b"testMchAPIv3Key1", resource)


def test_the_go_sdk_notice_through_a_provider_is_not_a_payment():
    provider = wechatpay.WechatpayProvider(
        "https://api.mch.weixin.qq.com", "054aa7d7a2a54ab5898df65bd96f001c", "1234567890", MERCHANT_SERIAL,
        MERCHANT_KEY, wechatpay._platform_key(GO_SDK_CERTIFICATE), "D7CE59D1F522D701", b"testMchAPIv3Key0", None,
        clock=lambda: 1624523846)
    request = NoticeRequest("POST", GO_SDK_BODY, GO_SDK_HEADERS, {})
    with pytest.raises(IgnoredNotice, match="PAYSCORE"):  # signed and genuine: a pay-score contract
        provider.verify(request)


def test_aes_256_gcm_vector_from_wechat_pays_java_sdk():
    # github.com/wechatpay-apiv3/wechatpay-java, core/src/test/java/com/wechat/pay/java/core/cipher/
    # AeadAesCipherTest.java with TestConfig.API_V3_KEY: a 32-byte APIv3 key, as in production.
    resource = {"algorithm": "AEAD_AES_256_GCM", "ciphertext": "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=",
                "associated_data": "associatedData", "nonce": "uluk4a9R25RW"}
    assert wechatpay.decrypt_resource(b"a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb", resource) == b"message"
    with pytest.raises(SignatureError):
        wechatpay.decrypt_resource(b"a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb", resource | {"associated_data": "other"})
