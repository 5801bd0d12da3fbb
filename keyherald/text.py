"""Text from untrusted places (Redis records, tokens) made safe to print on a terminal."""

import re

# C0 and C1 controls (ESC starts the sequences that move the cursor, retitle the window or
# hide text), DEL, and the bidirectional overrides that reorder what a reader sees.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), never sent."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
