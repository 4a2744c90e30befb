"""A buyer on a 390 px phone, in a real Chromium: browses, buys, pays in the sandbox, copies
the key (read back from the clipboard), downloads the .txt, reports a bad key and sees its
replacement; finds the order again by lookup; a merchant's <script> in a title stays text."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.kit.helpers import bearer

from .conftest import ROOT, eventually

ZH = json.loads((ROOT / "web" / "static" / "i18n" / "zh-CN.json").read_text(encoding="utf-8"))
HOSTILE_TITLE = '<script>alert("pwned")</script><img src=x onerror=alert(1)> 点卡'


def t(key: str, **values) -> str:
    """The page's own Chinese wording for ``key`` (web/static/i18n/zh-CN.json)."""
    text = ZH[key]
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


@pytest.fixture
def dialogs(phone):
    """Every alert() a page tried to show: a script that ran where only text belonged."""
    seen = []
    phone.on("dialog", lambda dialog: (seen.append(dialog.message), dialog.dismiss()))
    return seen


def test_a_buyer_on_a_phone_buys_pays_copies_downloads_and_gets_a_bad_key_replaced(store, phone, dialogs, shoot):
    merchant = store.merchant()
    product = store.product(merchant, keys=("KEY-AAAA-1111", "KEY-BBBB-2222", "KEY-CCCC-3333"), title=HOSTILE_TITLE,
                            description="<b>不是粗体</b>", max_per_order=2)
    page = phone

    # Browse: the home page lists the product; its title is text, never markup.
    page.goto(store.url + "/")
    card = page.get_by_text(HOSTILE_TITLE, exact=True)
    card.first.wait_for()
    shoot(store.url + "/", "home")
    card.first.click()
    page.wait_for_url(re.compile(r"/product/"))
    page.get_by_text("<b>不是粗体</b>", exact=True).wait_for()
    shoot(page.url, "product")

    # Buy: e-mail, quantity, the sandbox; on to pay.
    page.get_by_label(t("buy.email")).fill("buyer@example.com")
    page.get_by_label(t("buy.quantity")).fill("1")
    page.get_by_role("button", name=t("buy.submit")).click()
    page.wait_for_url(re.compile(r"/delivery/v1/payments/sandbox/pay/"))
    page.get_by_role("button", name=re.compile("Pay")).click()

    # Back on the order page: the key arrives without a reload.
    page.wait_for_url(re.compile(r"/order/\d+\?token="))
    key = page.locator("code.key-value").first
    key.wait_for()
    first_key = key.text_content()
    assert first_key in ("KEY-AAAA-1111", "KEY-BBBB-2222", "KEY-CCCC-3333")
    order_url = page.url
    shoot(order_url, "order-delivered")

    # Copy: the clipboard holds the key, and the page says so.
    page.get_by_role("button", name=t("keys.copy")).first.click()
    page.get_by_text(t("keys.copied")).first.wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == first_key

    # Download: a .txt holding the key.
    with page.expect_download() as download:
        page.get_by_role("button", name=t("keys.download")).click()
    saved = Path(download.value.path()).read_text(encoding="utf-8")
    assert first_key in saved and download.value.suggested_filename.endswith(".txt")

    # Report it; the merchant replaces it; the page shows the new key.
    page.get_by_role("button", name=t("report.open")).first.click()
    page.get_by_label(t("report.reason", n=1)).fill("提示已被使用")
    page.get_by_role("button", name=t("report.send")).click()
    page.get_by_text(t("report.sent")).wait_for()
    order_no = re.search(r"/order/(\d+)", order_url).group(1)
    queue = store.delivery.get("/delivery/v1/reports", headers=bearer(merchant["api_key"])).get_json()["reports"]
    assert [(r["order_no"], r["reason"]) for r in queue] == [(order_no, "提示已被使用")]
    r = store.delivery.post(f"/delivery/v1/orders/{order_no}/replace", json={"key_index": 0},
                            headers=bearer(merchant["api_key"]))
    assert r.status_code == 200, r.get_json()
    page.wait_for_function("first => document.querySelector('code.key-value').textContent !== first", arg=first_key)
    assert page.locator("code.key-value").first.text_content() != first_key
    shoot(order_url, "order-replaced")
    assert dialogs == [] and page.errors == []


def test_a_bad_link_shows_a_friendly_page_not_json(store, phone, shoot):
    phone.goto(store.url + "/order/26120300000000000000?token=nope")
    phone.get_by_text(t("order.missing_title")).wait_for()
    assert "{" not in phone.locator("main").text_content()
    shoot(phone.url, "order-missing")


def test_lookup_finds_the_order_by_email(store, phone, shoot):
    merchant = store.merchant()
    product = store.product(merchant, keys=("LK-1",))
    r = store.delivery.post("/delivery/v1/orders", json={"product_id": product["id"], "quantity": 1,
                                                         "email": "again@example.com"})
    assert r.status_code == 201, r.get_json()
    phone.goto(store.url + "/lookup")
    shoot(phone.url, "lookup")
    phone.get_by_label(t("buy.email")).fill("again@example.com")
    phone.get_by_role("button", name=t("lookup.submit")).click()
    phone.get_by_text(t("lookup.found", n=1)).wait_for()
    assert r.get_json()["order_no"] in phone.locator("main").text_content()
