"""Text colours pass WCAG AA (4.5:1) on the backgrounds they are used on; every colour is a
variable in :root, so this list of pairs covers the sheet."""
import re

import pytest

from .pages import STATIC

CSS = (STATIC / "css" / "shop.css").read_text()
ROOT = re.search(r":root\s*\{(.*?)\}", CSS, re.S).group(1)
COLOURS = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})\s*;", ROOT))

TEXT_ON_BACKGROUND = [
    ("text", "bg"), ("text", "surface"), ("muted", "bg"), ("muted", "surface"), ("primary", "bg"),
    ("primary", "surface"), ("on-primary", "primary"), ("error", "bg"), ("error", "surface"),
    ("ok", "bg"), ("ok", "surface"), ("warn", "bg"), ("warn", "surface"),
]


def luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("fg, bg", TEXT_ON_BACKGROUND)
def test_text_contrast_is_at_least_4_5(fg, bg):
    assert contrast(COLOURS[fg], COLOURS[bg]) >= 4.5, (fg, bg)


def test_borders_and_focus_ring_are_visible():
    for name in ("border", "focus"):
        assert contrast(COLOURS[name], COLOURS["bg"]) >= 3 and contrast(COLOURS[name], COLOURS["surface"]) >= 3


def test_no_colour_outside_the_variables():
    outside = CSS.replace(ROOT, "")
    assert not re.findall(r"#[0-9a-fA-F]{3,8}\b|rgba?\(|hsla?\(", outside)
