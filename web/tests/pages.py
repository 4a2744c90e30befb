"""What the storefront's tests read: its pages, their assets, the files on disk."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

WEB = Path(__file__).resolve().parents[1]
PAGES = WEB / "pages"
STATIC = WEB / "static"

# Each page's URL (with made-up ids) and its file.
PAGE_URLS = {
    "/": "home", "/shop/m-1": "shop", "/product/p-1": "product",
    "/order/2024X1?token=t0k": "order", "/lookup": "lookup", "/no/such/page": "not_found",
}


class Tags(HTMLParser):
    """Every start tag of a page, as (name, attributes), and the text inside <script>/<style>."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.inline_code: list[str] = []
        self._inside = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._inside = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._inside = None

    def handle_data(self, data):
        if self._inside and data.strip():
            self.inline_code.append(data)

    def all(self, name: str) -> list[dict]:
        return [attrs for tag, attrs in self.tags if tag == name]


def page_files() -> list[Path]:
    return sorted(PAGES.glob("*.html"))


def script_files() -> list[Path]:
    return sorted(STATIC.rglob("*.js"))


IMPORT = re.compile(r"""^\s*(?:import|export)\b[^;]*?\bfrom\s*["']([^"']+)["']|^\s*import\s*["']([^"']+)["']""", re.M)


def static_imports(script: Path) -> list[Path]:
    """The modules ``script`` imports statically (a dynamic import() loads only when needed)."""
    found = []
    for match in IMPORT.finditer(script.read_text()):
        target = match.group(1) or match.group(2)
        found.append((script.parent / target).resolve())
    return found


def module_graph(entry: Path) -> set[Path]:
    seen, todo = set(), [entry.resolve()]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(static_imports(module))
    return seen


def static_path(url: str) -> Path:
    assert url.startswith("/static/"), url
    return STATIC / url.removeprefix("/static/")
