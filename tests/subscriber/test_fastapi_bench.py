"""``bench/fastapi_endpoint.py --quick`` runs and prints every endpoint beside PyJWT's."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_fastapi_endpoint_benchmark_quick_run_prints_every_endpoint() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fastapi_endpoint.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = dict(re.findall(r"^(\S.*?)\s+([\d,]+)\s+[\d.]+\s+[\d.]+\s+\d+%", result.stdout, re.M))
    assert set(rows) == {"bare", "keyherald", "keyherald cached", "PyJWT"}, result.stdout
