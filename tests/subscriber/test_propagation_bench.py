"""``bench/propagation.py --quick`` runs and prints its table (speed is not asserted here)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_propagation_benchmark_quick_run_prints_a_row_per_n() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "propagation.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = re.findall(r"^\s*(\d+)((?:\s+[\d.]+){6})\s*$", result.stdout, re.MULTILINE)
    assert [int(n) for n, _ in rows] == [1, 10], result.stdout
    for _, figures in rows:
        assert all(float(f) > 0 for f in figures.split())
