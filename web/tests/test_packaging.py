"""Every page and asset ships with the package (pyproject's package-data names them)."""
import tomllib
from pathlib import Path

WEB = Path(__file__).resolve().parents[1]


def test_package_data_covers_every_page_and_asset():
    config = tomllib.loads((WEB.parent / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["web"]
    files = [p for folder in ("pages", "static") for p in (WEB / folder).rglob("*") if p.is_file()]
    assert files
    unshipped = [p for p in files if not any(p.relative_to(WEB).match(pattern) for pattern in patterns)]
    assert not unshipped
    assert "web*" in config["tool"]["setuptools"]["packages"]["find"]["include"]
