"""The benchmark script runs end to end on tiny states and reports every ratio and sweep.

Only the shape of its output is checked: timings are the benchmark's business, not a test's.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO

ARMS = ("roxxel", "orbax", "sync")  # always run; roxxel_copy when `staging` exists
B2_RATIOS = ("B2_K10", "B2_K33")
SAVE_RATIOS = (
    "B3",
    "B3_buffered",
    "B3_vs_safetensors",
    "cpu_s_per_GB",
    "B4",
    "cpu_s_per_GB_restored",
    "B5",
)
TARGETS = {
    "B1",
    "demo_save_block_ms",
    "many_leaves_save_block_ms",
    *B2_RATIOS,
    "B3",
    "B3_vs_safetensors",
    "cpu_s_per_GB",
    "B4",
    "cpu_s_per_GB_restored",
    "B5",
    "B5_bounded",
}
SWEEP_SIZES = ("1MB", "2MB")
LEAF_COUNTS = (8, 30)


def _number(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value >= 0


def _check_point(point: dict[str, Any], copy: bool) -> None:
    assert "skipped" not in point, point
    assert point["state_bytes"] > 0 and point["leaves"] >= 4
    assert _number(point["sync_save_ms"]) and _number(point["raw_direct_write_ms"])
    arms = {"roxxel", "sync", "safetensors"} | ({"roxxel_copy"} if copy else set())
    assert arms <= set(point["median_block_ms"]) <= arms | {"orbax"}
    for arm in point["median_block_ms"]:
        assert _number(point["median_block_ms"][arm]) and _number(point["median_durable_ms"][arm])
        assert _number(point["ratios"][arm]["durable_over_raw_direct"])
        if arm in ("roxxel", "roxxel_copy", "orbax"):
            assert _number(point["ratios"][arm]["block_over_sync"])


@pytest.mark.slow
def test_benchmark_reports_every_ratio(tmp_path: Path) -> None:
    out = tmp_path / "results"
    script = REPO / "benchmarks" / "bench.py"
    args = ["--size-mb", "2", "--reps", "1", "--out", str(out), "--dir", str(tmp_path)]
    sweeps = [
        "--sweep-sizes",
        ",".join(SWEEP_SIZES),
        "--leaf-sweep-sizes",
        "0.2MiB",
        "--leaf-counts",
        ",".join(map(str, LEAF_COUNTS)),
        "--small-reps",
        "1",
    ]
    result = subprocess.run(
        [sys.executable, str(script), *args, *sweeps, "--max-k", "5", "--no-gpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = json.loads((out / "results.json").read_text())
    assert set(report["targets"]) == TARGETS
    copy = report["staging"]["supported"]
    assert copy == ("roxxel_copy" in report["ratios"])
    if not copy:
        assert "roxxel_copy" in report["skipped_arms"]
    arms = (*ARMS, "roxxel_copy") if copy else ARMS
    for arm in arms:
        for ratio in ("B1", *B2_RATIOS, *SAVE_RATIOS):
            value = report["ratios"][arm][ratio]
            assert isinstance(value, float) and math.isfinite(value) and value >= 0, (arm, ratio)
    for arm in (*arms, "safetensors"):  # page-cache check beside every durable save
        assert all(_number(v) for v in report["arms"][arm]["dirty_writeback_after_durable_MB"])
    for ratio in SAVE_RATIOS:  # the safetensors baseline saves and restores, never trains
        assert _number(report["ratios"]["safetensors"][ratio]), ratio
    assert not set(report["ratios"]["safetensors"]) & {"B1", *B2_RATIOS}
    bounded = report["staging"]["bounded"]
    if copy:
        assert _number(report["ratios"]["roxxel_copy"]["B5_bounded"])
        assert bounded["staging_limit_bytes"] == report["config"]["state_bytes"] // 4
        assert all(_number(v) for v in bounded["peak_extra_rss_bytes"])
        assert isinstance(bounded["within_bound"], bool)
    else:
        assert "skipped" in bounded
    assert 2 <= report["config"]["K"]["K33"] <= report["config"]["K"]["K10"] <= 5
    assert "skipped" in report["gpu"]

    # the two absolute figures, each beside the same run's synchronous save
    for name in ("demo", "many_leaves"):
        small = report["small_states"][name]
        assert _number(small["save_block_ms"]["roxxel"]) and _number(small["sync_save_ms"])
    assert report["small_states"]["many_leaves"]["leaves"] == max(LEAF_COUNTS)
    assert "orbax" in report["sweeps"]["demo"]["median_block_ms"]

    # sweeps: one point per leaf count and per size
    leaves = report["sweeps"]["leaves"]
    assert [p["leaves"] for p in leaves] == list(LEAF_COUNTS)
    assert len(report["sweeps"]["size"]) == len(SWEEP_SIZES)
    for point in [report["sweeps"]["demo"], *leaves, *report["sweeps"]["size"]]:
        _check_point(point, copy)

    table = (out / "results.md").read_text()
    assert all(arm in table for arm in (*arms, "safetensors")) and "B4" in table
    assert "Leaf-count sweep" in table and "Size sweep" in table and "demo" in table
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "sweeps.png").stat().st_size > 0
        assert (out / "b2_timeline.png").stat().st_size > 0
    # the checkpoints it wrote are cleaned up; only the results stay
    assert not list(tmp_path.glob("roxxel-bench-*"))
