"""``issuer.__all__`` names every public member, sorted within each group."""

import ast
import inspect

import issuer


def test_all_is_complete() -> None:
    public = {name for name in dir(issuer) if not name.startswith("_")}
    modules = {name for name in public if inspect.ismodule(getattr(issuer, name))}
    assert set(issuer.__all__) == public - modules


def test_all_is_sorted_within_groups() -> None:
    source = inspect.getsource(issuer)
    groups: list[list[str]] = [[]]
    in_all = False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("__all__"):
            in_all = True
        elif in_all and stripped == "]":
            break
        elif in_all and stripped.startswith("#"):
            groups.append([])
        elif in_all and stripped:
            groups[-1].append(ast.literal_eval(stripped.rstrip(",")))
    assert [g for g in groups if g] == [sorted(g) for g in groups if g]
    assert sum(map(len, groups)) == len(issuer.__all__)
