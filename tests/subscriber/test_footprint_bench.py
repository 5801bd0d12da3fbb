"""``bench/footprint.py --quick`` runs and prints every figure beside its target."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_footprint_benchmark_quick_run_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "footprint.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = dict(re.findall(r"^(\S.*?)\s+([\d.]+)\s+(?:<=|-)", result.stdout, re.MULTILINE))
    assert set(figures) == {
        "memory per additional verifier (MiB)",
        "cold start per additional verifier (ms)",
        "cold start of the first verifier (ms)",
        "idle Redis commands/s per verifier",
        "idle CPU per 1,000 verifiers (% of a core)",
    }, result.stdout
    assert float(figures["cold start of the first verifier (ms)"]) > 0
