"""Smoke test: ``python -m benchmarks.kernels --quick --kinds monteCarloPi``.

Runs the real script in a subprocess (it builds the C reference with gcc, runs every
variant and prints the table) and checks that the table is printed and that the C
reference counted exactly the same points as the numba kernel. Skipped locally when gcc
is missing; under CI=true a missing gcc is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def test_quick_pi_benchmark_prints_table_and_c_agrees_with_numba() -> None:
    if shutil.which("gcc") is None:
        if IN_CI:
            pytest.fail("gcc is required for the C reference benchmark (apt-get install gcc)")
        pytest.skip("gcc is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernels", "--quick", "--kinds", "monteCarloPi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"benchmark failed:\n{out}\n{proc.stderr}"
    assert "| variant | threads | median time | ratio vs numba parallel | note |" in out
    assert "results agree" in out
    numba_count = re.search(r"^- numba parallel: (\d+)$", out, re.MULTILINE)
    c_count = re.search(r"^- C reference \(gcc, OpenMP\): (\d+) == (\d+) OK$", out, re.MULTILINE)
    assert numba_count and c_count, out
    assert c_count.group(1) == c_count.group(2) == numba_count.group(1)
    for name in ("numba parallel", "numba serial", "C reference (gcc, OpenMP)", "pure Python"):
        row = re.search(
            rf"^\| {re.escape(name)} \| \d+ \| [\d.]+ m?s \| [\d.]+x \|", out, re.MULTILINE
        )
        assert row, f"no timing row for {name}:\n{out}"
    assert "| monteCarloPi |" in out  # the compile-time table
    assert re.search(r"^machine: .*numba [\d.]+.*threading layer \w+", out, re.MULTILINE), out
