"""Every test the documents name as the proof of a claim exists: a renamed or deleted test must
not leave a sentence of ``docs/`` or the README standing on nothing."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: `tests/x/test_y.py::test_z`, or `…::test_z` (a test of the file the table names first).
REFERENCE = re.compile(r"`(?P<path>tests/[\w/]+\.py|…)::(?P<name>\w+)(?:\[[^`]*\])?`")
TESTS = {path: path.read_text() for path in (ROOT / "tests").rglob("test_*.py")}


def references() -> list[tuple[str, str, str]]:
    found = []
    for document in DOCUMENTS:
        for match in REFERENCE.finditer(document.read_text()):
            found.append((document.name, match["path"], match["name"]))
    return found


def defines(source: str, name: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def {name}\(", source, re.MULTILINE) is not None


def test_the_documents_name_tests() -> None:
    assert len(references()) >= 25


@pytest.mark.parametrize(("document", "path", "name"), references())
def test_each_named_test_exists(document: str, path: str, name: str) -> None:
    if path == "…":
        assert any(defines(source, name) for source in TESTS.values()), (document, name)
    else:
        assert (ROOT / path).exists(), (document, path)
        assert defines(TESTS[ROOT / path], name), (document, path, name)
