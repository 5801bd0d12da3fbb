"""``bench/admin.py --quick`` runs and prints both figures beside their targets."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_admin_benchmark_quick_run_prints_both_figures() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "admin.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "16 concurrent POST /admin/rotate: 16 x 201 (met" in result.stdout, result.stdout
    assert "rotate+retire pairs/s: fresh store" in result.stdout
    assert re.search(r"ratio \d+\.\d\d \((met|NOT met): >= 0\.95", result.stdout), result.stdout
