"""The home page loads fast on a phone: its HTML, CSS, scripts and strings under 100 KB."""
from .pages import PAGES, STATIC, Tags, module_graph, static_path

BUDGET_BYTES = 100 * 1024


def page_weight(name: str) -> tuple[int, list]:
    html = (PAGES / f"{name}.html").read_text()
    tags = Tags(html)
    files = {static_path(link["href"]) for link in tags.all("link") if link.get("rel") == "stylesheet"}
    for script in tags.all("script"):
        files |= module_graph(static_path(script["src"]))
    files |= set((STATIC / "i18n").glob("*.json"))  # both languages, as a switch loads the other
    return len(html.encode()) + sum(f.stat().st_size for f in files), sorted(files)


def test_the_home_page_is_under_budget():
    weight, files = page_weight("home")
    assert any(f.name == "home.js" for f in files) and any(f.name == "page.js" for f in files)
    assert weight < BUDGET_BYTES, (weight, files)


def test_the_qr_generator_is_not_on_the_home_page():
    _, files = page_weight("home")
    assert not [f for f in files if "vendor" in f.parts]
