"""What buyers and merchants wrote reaches the page as text, never as markup."""
import re

from .pages import STATIC, script_files

MARKUP_SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(")


def test_no_script_writes_markup():
    offenders = [f"{path.relative_to(STATIC)}:{n}: {line.strip()}"
                 for path in script_files()
                 for n, line in enumerate(path.read_text().splitlines(), 1) if MARKUP_SINKS.search(line)]
    assert not offenders, "\n".join(offenders)


def test_vendored_code_has_its_licence_next_to_it():
    for vendored in (STATIC / "vendor").iterdir():
        assert (vendored / "LICENSE").is_file(), vendored
