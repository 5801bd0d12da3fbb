"""``bench/issuer_endpoints.py --quick`` runs and prints every figure beside its target."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_issuer_endpoints_benchmark_quick_run_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "issuer_endpoints.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = dict(re.findall(r"^(\S.*?)\s+([\d,]+)\s+[\d.]+\s+[\d.]+\s+", result.stdout, re.M))
    assert set(rows) == {"bare", "jwks", "jwks 304", "metadata", "jwks, store read"}, rows
    assert ">= 0.80 x bare" in result.stdout and ">= 1.00 x jwks" in result.stdout
