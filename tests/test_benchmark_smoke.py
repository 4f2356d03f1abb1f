"""The benchmark script runs end to end on a tiny state and reports every ratio.

Only the shape of its output is checked: timings are the benchmark's business, not a test's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

ARMS = ("roxxel", "orbax", "sync")
RATIOS = ("B1", "B2_K10", "B2_K33", "B3", "B4", "B5", "cpu_s_per_GB")


@pytest.mark.slow
def test_benchmark_reports_every_ratio(tmp_path: Path) -> None:
    out = tmp_path / "results"
    script = REPO / "benchmarks" / "bench.py"
    args = ["--size-mb", "2", "--reps", "1", "--out", str(out), "--dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, str(script), *args, "--max-k", "5", "--no-plot"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = json.loads((out / "results.json").read_text())
    for arm in ARMS:
        for ratio in RATIOS:
            value = report["ratios"][arm][ratio]
            assert isinstance(value, float) and math.isfinite(value) and value >= 0, (arm, ratio)
    assert set(report["targets"]) == set(RATIOS)
    assert 2 <= report["config"]["K"]["K33"] <= report["config"]["K"]["K10"] <= 5
    assert "skipped" in report["gpu"] or "block_over_copy" in report["gpu"]
    table = (out / "results.md").read_text()
    assert all(arm in table for arm in ARMS) and "B4" in table
    # the checkpoints it wrote are cleaned up; only the results stay
    assert not list(tmp_path.glob("roxxel-bench-*"))
