"""Browser tests: Debian's headless Chromium, driven by Playwright for Python (pointed at the
system's ``chromium``; Playwright downloads no browser of its own), against the embedded
Linkshop as ``make run`` serves it, on a local port, with its workers running.

Without Chromium (or Playwright) the tests skip with one line; under CI=true that is a failure
(``.ci/run`` installs Chromium). Each test may save screenshots under ``var/screenshots/`` at
390 px (the reference phone) and 1280 px, for a reviewer to look at."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from services.embedded import build_embedded
from tests.kit.backends import fold_skip, require_server
from tests.kit.gateways import LocalServer
from tests.kit.helpers import bearer

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM = os.environ.get("LINKSHOP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
_SKIP_PREFIX = "tests.browser: "


def _missing() -> str | None:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return "no chromium (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (Python) is not installed (make setup)"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fold_skip(outcome.get_result(), _SKIP_PREFIX, __file__, 1)


@pytest.fixture(scope="session")
def browser():
    require_server(_SKIP_PREFIX, _missing(), "Chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as driver:
        # --no-sandbox: CI and this machine run as root, where Chromium's sandbox will not start.
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Store:
    """The embedded Linkshop at ``url``, with an operator's token and a merchant to sell."""

    def __init__(self, embedded, url: str):
        self.embedded, self.url = embedded, url
        self.catalog = embedded.apps["catalog"].test_client()
        self.delivery = embedded.apps["delivery"].test_client()
        self.admin = bearer(embedded.settings["catalog"].admin_token)

    def merchant(self, name: str = "星河游戏商城") -> dict:
        r = self.catalog.post("/catalog/v1/merchants", json={"name": name, "email": "shop@example.com"},
                              headers=self.admin)
        assert r.status_code == 201, r.get_json()
        return r.get_json()

    def product(self, merchant: dict, keys=(), **fields) -> dict:
        body = {"title": "王者荣耀 60 点券", "price_cents": 600, "instructions": "在游戏内兑换", **fields}
        r = self.catalog.post("/catalog/v1/products", json=body, headers=bearer(merchant["api_key"]))
        assert r.status_code == 201, r.get_json()
        product = r.get_json()
        if keys:  # delivery learns of the product over the bus, which the running hub carries
            r = eventually(lambda: self.delivery.post(f"/delivery/v1/products/{product['id']}/keys",
                                                      json={"keys": list(keys)}, headers=bearer(merchant["api_key"])),
                           lambda r: r.status_code not in (401, 404))  # the merchant's key, the product
            assert r.status_code == 201, r.get_json()
        return product


def eventually(attempt, done, timeout: float = 10.0):
    """``attempt()`` until ``done(result)`` (the hub works in the background), or the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


@pytest.fixture
def store(tmp_path):
    server = LocalServer()
    env = {"LINKSHOP_VAR_DIR": str(tmp_path), "LINKSHOP_PUBLIC_URL": server.url, "BUS_RETRY_DELAYS_MS": "0",
           "LINKSHOP_STOCK_SYNC_INTERVAL_S": "0.2"}
    embedded = build_embedded(env, migrate=False)
    server.app = embedded.wsgi
    embedded.hub.start()  # the workers run, as under `make run`
    yield Store(embedded, server.url)
    embedded.hub.stop()
    server.close()


def _context(browser, viewport: dict, locale: str):
    return browser.new_context(viewport=viewport, locale=locale, is_mobile=viewport is PHONE,
                               has_touch=viewport is PHONE, accept_downloads=True,
                               permissions=["clipboard-read", "clipboard-write"])


@pytest.fixture
def phone(browser):
    """A page on a 390 px phone, in Chinese (the default language)."""
    context = _context(browser, PHONE, "zh-CN")
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


@pytest.fixture
def shoot(browser):
    """``shoot(url, name)``: screenshots of ``url`` at 390 and 1280 px under var/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(url: str, name: str, locale: str = "zh-CN") -> None:
        for label, viewport in (("390", PHONE), ("1280", DESKTOP)):
            context = _context(browser, viewport, locale)
            page = context.new_page()
            page.goto(url)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
            context.close()
    return take
