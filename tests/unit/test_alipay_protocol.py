"""shared.alipay against the fake gateway's independent signing (tests.kit.fakes.alipay_gateway)."""
import json
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from shared import alipay
from tests.kit.fakes.alipay_gateway import FakeAlipayGateway, public_pem_body, signing_text, verifies


@pytest.fixture
def gateway():
    fake = FakeAlipayGateway()
    fake.methods["alipay.trade.query"] = lambda biz, params: {"code": "10000", "msg": "Success",
                                                              "out_trade_no": biz["out_trade_no"],
                                                              "note": 'a "quoted" {brace}'}
    yield fake
    fake.close()


def client(gateway, **override):
    return alipay.AlipayClient(alipay.settings_from_env(gateway.env() | override), requests.Session())


def test_a_signed_call_is_accepted_and_its_signed_answer_verified(gateway):
    answer = client(gateway).call("alipay.trade.query", {"out_trade_no": "A1"})
    assert answer["code"] == "10000" and answer["out_trade_no"] == "A1" and answer["note"] == 'a "quoted" {brace}'
    assert gateway.requests[0]["biz"] == {"out_trade_no": "A1"}


def test_an_answer_signed_by_someone_else_is_not_trusted(gateway):
    other = FakeAlipayGateway()
    try:
        forged = client(gateway, LINKSHOP_ALIPAY_PUBLIC_KEY=public_pem_body(other.alipay_key))
        with pytest.raises(alipay.AlipayUnavailable, match="signature"):
            forged.call("alipay.trade.query", {"out_trade_no": "A1"})
    finally:
        other.close()


def test_page_url_is_signed_over_sorted_raw_parameters(gateway):
    url = client(gateway).page_url("alipay.trade.page.pay", {"subject": "月卡 & co", "total_amount": "1.00"},
                                   return_url="https://shop/o?token=a&b", notify_url="")
    r = requests.get(url, timeout=5)
    assert r.status_code == 200 and "40002" not in r.text  # the gateway verified it (then: unknown method)
    params = dict(parse_qsl(urlsplit(url).query))
    assert "notify_url" not in params and json.loads(params["biz_content"])["subject"] == "月卡 & co"
    assert verifies(gateway.app_key.public_key(), signing_text(params), params["sign"])


def test_notice_verification_excludes_sign_type_and_empty_values(gateway):
    notice = gateway.signed_notice({"out_trade_no": "A1", "total_amount": "9.99", "empty": ""})
    assert client(gateway).verify_notice(notice)
    assert not client(gateway).verify_notice(dict(notice, total_amount="0.01"))
    assert not client(gateway).verify_notice(dict(notice, sign="bm90IGEgc2lnbmF0dXJl"))
    assert not client(gateway).verify_notice(dict(notice, sign="%%%"))


def test_response_text_is_the_exact_signed_object():
    raw = '{"x_response":{"a":"}\\"{","b":{"c":1}},"sign":"s"}'
    assert alipay.response_text(raw, "x_response") == '{"a":"}\\"{","b":{"c":1}}'
    assert alipay.response_text('{"other":{}}', "x_response") is None


def test_keys_load_as_alipay_gives_them_pem_or_bare_base64_pkcs8_or_pkcs1():
    import base64

    from cryptography.hazmat.primitives import serialization

    from tests.kit.fakes.alipay_gateway import new_key
    key = new_key()
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()
        for given in (base64.b64encode(der).decode(), pem, pem.replace("\n", "\\n")):
            assert alipay.load_private_key(given).private_numbers() == key.private_numbers()
    public = alipay.load_public_key(public_pem_body(key))
    assert public.public_numbers() == key.public_key().public_numbers()


def test_settings_are_all_or_none_and_a_bad_key_is_named_never_quoted(gateway):
    from shared.config import ConfigError
    assert alipay.settings_from_env({}) is None
    env = gateway.env()
    assert "PRIVATE KEY" not in repr(alipay.settings_from_env(env))
    with pytest.raises(ConfigError, match="LINKSHOP_ALIPAY_PUBLIC_KEY must be set too"):
        alipay.settings_from_env(env | {"LINKSHOP_ALIPAY_PUBLIC_KEY": ""})
    with pytest.raises(ConfigError, match="LINKSHOP_ALIPAY_PRIVATE_KEY is not a readable RSA key") as refused:
        alipay.settings_from_env(env | {"LINKSHOP_ALIPAY_PRIVATE_KEY": "bm90IGEga2V5"})
    assert "bm90IGEga2V5" not in str(refused.value)
