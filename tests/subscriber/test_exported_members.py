"""``subscriber.__all__`` names every public member, once, sorted within its group."""

import ast
from pathlib import Path

import subscriber


def test_all_is_complete_and_exists() -> None:
    public = {name for name in vars(subscriber) if not name.startswith("_")}
    modules = {name for name, value in vars(subscriber).items() if type(value) is type(subscriber)}
    assert set(subscriber.__all__) == public - modules
    assert len(subscriber.__all__) == len(set(subscriber.__all__))


def test_all_is_sorted_within_groups() -> None:
    source = Path(subscriber.__file__).read_text()
    block = source[source.index("__all__ = [") :]
    groups: list[list[str]] = [[]]
    for line in block.splitlines()[1:]:
        line = line.strip()
        if line == "]":
            break
        if line.startswith("#"):
            groups.append([])
        elif line:
            groups[-1].append(ast.literal_eval(line.rstrip(",")))
    for group in groups:
        assert group == sorted(group)


def test_base_install_needs_no_web_framework() -> None:
    tree = ast.parse(Path(subscriber.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "fastapi" not in imported
