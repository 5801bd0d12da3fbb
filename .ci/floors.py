"""Print a pip constraints file pinning every runtime dependency to its declared floor.

``make test-floors`` installs the project under these constraints into a venv of its own and
runs the subscriber and issuer tests, so a floor the code does not work on (``tenacity>=8.2``
once admitted releases whose ``wait_exponential_jitter`` the follower could not call) fails
CI instead of a service that pins an old release. Test tools are left unpinned: they are not
what a consumer installs.
"""

import re
import sys
import tomllib
from pathlib import Path

#: The extras a deployment installs; ``test`` is the toolchain, not a runtime dependency.
RUNTIME_EXTRAS = ("issuer", "relay", "demo")
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def floors(pyproject: dict) -> dict[str, str]:
    """``{name: floor}`` of the runtime dependencies; each must have exactly one ``>=``."""
    project = pyproject["project"]
    wanted = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    pinned: dict[str, str] = {}
    for requirement in wanted:
        match = _REQUIREMENT.match(requirement.split(";")[0])
        if match is None:
            raise ValueError(f"cannot read the requirement {requirement!r}")
        name, _extras, spec = match.groups()
        if name.lower() == project["name"]:
            continue  # the project's own extras, listed on their own
        bound = re.fullmatch(r">=\s*([0-9][0-9A-Za-z.]*)", spec.strip())
        if bound is None:
            raise ValueError(f"{requirement!r} needs a single '>=X' floor for the floors test")
        pinned[name.lower()] = bound.group(1)
    return pinned


def main() -> int:
    """``floors.py [pyproject.toml]`` prints the constraints; ``--check`` compares them with
    what is installed and exits 1 on any difference."""
    args = [a for a in sys.argv[1:] if a != "--check"]
    path = Path(args[0] if args else "pyproject.toml")
    pinned = floors(tomllib.loads(path.read_text()))
    if "--check" not in sys.argv:
        for name, version in sorted(pinned.items()):
            print(f"{name}=={version}")
        return 0
    from importlib.metadata import version as installed
    from packaging.version import Version

    wrong = [
        f"{name} {installed(name)} (floor {floor})"
        for name, floor in sorted(pinned.items())
        if Version(installed(name)) != Version(floor)
    ]
    print("not at the floor: " + ", ".join(wrong) if wrong else f"{len(pinned)} floors installed")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
