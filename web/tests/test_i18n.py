"""Both languages carry the same strings, and every string the pages name exists."""
import json
import re

from .pages import STATIC, page_files, script_files

LOCALES = {name: json.loads((STATIC / "i18n" / f"{name}.json").read_text()) for name in ("zh-CN", "en")}


def test_both_languages_have_the_same_keys():
    zh, en = LOCALES["zh-CN"], LOCALES["en"]
    assert sorted(zh) == sorted(en), set(zh) ^ set(en)


def test_no_string_is_empty_and_placeholders_match():
    zh, en = LOCALES["zh-CN"], LOCALES["en"]
    for key in zh:
        assert zh[key].strip() and en[key].strip(), key
        assert set(re.findall(r"\{\w+\}", zh[key])) == set(re.findall(r"\{\w+\}", en[key])), key


def test_every_key_the_pages_name_exists():
    named = set()
    for page in page_files():
        named |= set(re.findall(r'data-i18n(?:-[a-z-]+)?="([^"]+)"', page.read_text()))
    for script in script_files():
        if "vendor" not in script.parts:
            named |= set(re.findall(r'\bt\("([a-z_][\w.-]*)"', script.read_text()))
    assert named
    missing = named - set(LOCALES["en"])
    assert not missing


def test_every_status_provider_and_error_code_the_pages_may_show_is_worded():
    keys = set(LOCALES["en"])
    statuses = ["pending", "paid", "paid_review", "awaiting_stock", "delivered", "partially_refunded",
                "refunded", "expired", "rejected"]
    assert {f"status.{s}" for s in statuses} <= keys
    assert {f"status_hint.{s}" for s in statuses} <= keys
    assert {f"provider.{p}" for p in ("sandbox", "epay", "alipay", "wechatpay", "stripe")} <= keys
    assert {f"error.{c}" for c in ("out_of_stock", "no_payment_provider", "rate_limited", "network")} <= keys
    assert {f"refund.status_{s}" for s in ("requested", "succeeded", "failed")} <= keys
    assert LOCALES["zh-CN"]["provider.sandbox"] == "测试支付" and LOCALES["en"]["provider.stripe"] == "Card (Stripe)"
