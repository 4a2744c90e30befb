"""Each page: served at its URL, readable on a phone, labelled, no inline code (CSP forbids it),
the same header, and only assets that exist."""
import pytest

from .pages import PAGE_URLS, Tags, page_files, static_path

PAGES = {name: url for url, name in PAGE_URLS.items()}


def test_every_page_file_has_a_url():
    assert {p.stem for p in page_files()} == set(PAGES)


@pytest.fixture(params=sorted(PAGES), scope="module")
def page(request, client):
    response = client.get(PAGES[request.param])
    assert response.mimetype == "text/html"
    return Tags(response.get_data(as_text=True))


def test_language_and_viewport(page):
    html = page.all("html")[0]
    assert html["lang"] == "zh-CN"  # the default; page.js sets it to the chosen language
    viewports = [m for m in page.all("meta") if m.get("name") == "viewport"]
    assert [m["content"] for m in viewports] == ["width=device-width, initial-scale=1"]


def test_no_inline_scripts_or_styles(page):
    assert page.inline_code == []
    assert all(s.get("src") and s.get("type") == "module" for s in page.all("script"))
    assert page.all("style") == []
    for tag, attrs in page.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)


def test_every_input_has_a_label(page):
    labelled = {label["for"] for label in page.all("label") if label.get("for")}
    for name in ("input", "textarea", "select"):
        for field in page.all(name):
            assert field.get("id") in labelled, field


def test_actions_are_buttons_and_links_go_somewhere(page):
    for field in page.all("input"):
        assert field.get("type") not in ("button", "submit", "reset", "image"), field
    assert all(a.get("href") for a in page.all("a"))
    assert all(b.get("type") in ("button", "submit") for b in page.all("button"))


def test_the_header_names_the_shop_and_offers_lookup_and_language(page):
    assert "/lookup" in [a["href"] for a in page.all("a")]
    assert [b for b in page.all("button") if b.get("id") == "lang-switch"]
    assert page.all("main")[0]["id"] == "main"


def test_assets_exist_and_are_served(page, client):
    urls = [link["href"] for link in page.all("link") if link.get("rel") == "stylesheet"]
    urls += [script["src"] for script in page.all("script")]
    assert urls
    for url in urls:
        assert static_path(url).is_file(), url
        assert client.get(url).status_code == 200, url
