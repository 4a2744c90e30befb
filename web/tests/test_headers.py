"""Every response carries the security headers; pages with keys or tokens are never stored."""
import pytest

from web.app import CONTENT_SECURITY_POLICY

from .pages import PAGE_URLS

ASSETS = ["/static/js/home.js", "/static/css/shop.css", "/static/i18n/zh-CN.json",
          "/static/vendor/qrcode-generator/qrcode.js"]


def directives(policy: str) -> dict:
    return {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}


def test_the_policy_allows_only_this_origin():
    policy = directives(CONTENT_SECURITY_POLICY)
    assert policy == {
        "default-src": ["'self'"], "script-src": ["'self'"], "style-src": ["'self'"],
        "img-src": ["'self'", "data:"], "connect-src": ["'self'"], "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"], "form-action": ["'self'"],
    }
    assert "unsafe" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("url", [*PAGE_URLS, *ASSETS, "/healthz"])
def test_every_response_sends_the_security_headers(client, url):
    response = client.get(url)
    assert response.status_code == (404 if PAGE_URLS.get(url) == "not_found" else 200)
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("url", ["/order/2024X1?token=t0k", "/order/2024X1", "/lookup"])
def test_pages_with_keys_or_tokens_are_never_stored(client, url):
    assert client.get(url).headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("url", ["/", "/product/p-1", "/static/js/order.js"])
def test_other_pages_and_assets_are_revalidated(client, url):
    assert client.get(url).headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("url, mimetype", [
    ("/static/js/order.js", "text/javascript"), ("/static/css/shop.css", "text/css"),
    ("/static/i18n/en.json", "application/json"), ("/static/vendor/qrcode-generator/qrcode.js", "text/javascript"),
])
def test_assets_have_the_types_nosniff_requires(client, url, mimetype):
    assert client.get(url).mimetype == mimetype


def test_a_bad_link_is_a_page_not_json(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert b"not_found.title" in response.data
