"""``bench/verify.py --quick`` runs and prints its figures (speed itself is not asserted here)."""

import re
import subprocess
import sys
from pathlib import Path

from subscriber.jwk import SUPPORTED_ALGS

ROOT = Path(__file__).resolve().parent.parent.parent


def test_verify_benchmark_quick_run_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "verify.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = {}
    for line in result.stdout.splitlines():
        match = re.match(
            r"(RS256|ES256|EdDSA|RS384|RS512|PS256|PS384|PS512|ES384|ES512)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)"
            r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+\d+%",
            line,
        )
        if match:
            rows[match[1]] = [float(g.replace(",", "")) for g in match.groups()[1:]]
    assert set(rows) == set(SUPPORTED_ALGS), result.stdout
    cache_rows = {}
    for line in result.stdout.splitlines():
        match = re.match(
            r"(\w+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+>= 10\s+([\d.]+)\s+>= 0.97", line
        )
        if match:
            cache_rows[match[1]] = [float(g.replace(",", "")) for g in match.groups()[1:]]
    assert set(cache_rows) == set(rows), result.stdout
    for alg, (hit, off, hit_ratio, miss_ratio) in cache_rows.items():
        assert abs(hit_ratio - hit / rows[alg][3]) < 0.1 * hit_ratio
        assert abs(miss_ratio - rows[alg][0] / off) < 0.01
    for keyherald, function, pyjwt, raw, ratio, function_ratio, pyjwt_ratio in rows.values():
        assert min(keyherald, function, pyjwt, raw) > 0
        assert abs(ratio - keyherald / raw) < 0.01
        assert abs(function_ratio - function / raw) < 0.01
        assert abs(pyjwt_ratio - pyjwt / raw) < 0.01
