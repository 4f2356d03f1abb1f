"""Restore onto another device layout: restored arrays take the current model's shardings.

In one process with 8 fake CPU devices, a checkpoint saved from a model sharded over all 8
restores into a model laid out over 2 of them, and one saved over 2 restores over 8. Then a
process that has only 2 devices restores the 8-device checkpoint. The device count comes from
`XLA_FLAGS` before JAX starts, so each layout runs in its own process; `layout_worker.py` does
the work and checks every leaf bit for bit and every sharding.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "layout_worker.py"


def run_worker(cwd: Path, devices: int, *tasks: str) -> list[str]:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    result = subprocess.run(
        [sys.executable, str(WORKER), *tasks],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith("OK ")]


@pytest.mark.slow
def test_restore_moves_state_between_8_and_2_devices(tmp_path: Path) -> None:
    eight, two = tmp_path / "saved-over-8", tmp_path / "saved-over-2"
    lines = run_worker(
        tmp_path,
        8,
        f"save:{eight}:8",
        f"restore:{eight}:2",  # 8 -> 2 in one process
        f"save:{two}:2",
        f"restore:{two}:8",  # 2 -> 8 in one process
    )
    assert lines == [
        "OK saved over 8 devices",
        "OK restored into 2 devices, 14 leaves",
        "OK saved over 2 devices",
        "OK restored into 8 devices, 14 leaves",
    ]
    # A process with fewer devices than the checkpoint was written from.
    assert run_worker(tmp_path, 2, f"restore:{eight}:2") == [
        "OK restored into 2 devices, 14 leaves"
    ]
