import subprocess
import sys

from keyherald.cli import COMMANDS


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "keyherald.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in COMMANDS:
        assert name in out
