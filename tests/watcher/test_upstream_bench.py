"""``bench/upstream.py --quick`` runs and prints every row. Its day-scale request counts come
from a simulated clock, so they are exact; only their shape and the fleet-wide bound are
checked. Of the measured (wall-clock) rows, only counts are checked, never times."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_upstream_benchmark_quick_run_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "upstream.py"), "--quick", "--flood", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = re.findall(
        r"^(lead|at_once)\s+(watcher \(fleet-wide\)|PyJWKClient x4)\s+([\d,]+)\s+([\d,]+)"
        r"\s+(\d+)\s+(\d+)\s+(\d+)-(\d+) s",
        result.stdout,
        re.MULTILINE,
    )
    assert {(r[0], r[1].split()[0]) for r in rows} == {
        ("lead", "watcher"),
        ("lead", "PyJWKClient"),
        ("at_once", "watcher"),
        ("at_once", "PyJWKClient"),
    }, result.stdout
    flood = re.search(r"PyJWKClient made (\d+) JWKS requests .*, the watcher (\d+) ", result.stdout)
    assert flood is not None, result.stdout
    assert int(flood[2]) <= 600 / 60 + 1  # one early fetch per cooldown over the 600 s window
    out = result.stdout
    assert re.search(r"watcher's commit -> last verifier\s+[\d.]+-[\d.]+ \(median [\d.]+\) ms", out)
    assert re.search(r"valid tokens refused under load\s+0 of [\d,]+", out), out
    assert "upstream JWKS requests per new kid   keyherald 1-1 (median 1)" in out
    assert "PyJWKClient x4 4-4 (median 4)" in out
    assert "time-to-usable at day scale" in out and "noise: load average" in out
