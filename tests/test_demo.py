"""The demo (`bash scripts/demo.sh`) in a reduced run: fewer steps, same story.

Three real training processes: an uninterrupted run, a run preempted by a real SIGTERM, and
its resumption in a new process; the demo itself checks that the resumed run ends bit for
bit equal to the uninterrupted one, with its shuffled Grain loader at the same place, and
exits non-zero otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DEMO = REPO / "demo" / "train_digits.py"


@pytest.mark.slow
def test_demo_preempts_resumes_and_matches(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, DEMO, "--steps", "120", "--save-every", "30", "--workdir", workdir],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert ">>> sending SIGTERM" in out
    assert "the process exited with status 143" in out
    assert "unfinished folders: none" in out
    resumed = re.search(r"^   \[resumed\] resumed from step (\d+)$", out, re.MULTILINE)
    assert resumed and int(resumed.group(1)) >= 60
    assert "equal the uninterrupted run's bit for bit: True" in out
    # The shuffled Grain loader's position came back with the model (saved as an extra).
    assert "give the same next batch: True" in out
    assert re.search(r"save\(\) blocked training for [\d.]+ ms .* a synchronous save", out)
    assert re.search(r"test accuracy: \d+\.\d+%", out)
    # It ends with the `roxxel ls` table of the preempted run.
    table = out[out.index(f"$ roxxel ls {workdir / 'preempted'}") :]
    assert "STEP  STATE" in table and "best" in table and "latest" in table
    assert sorted(p.name for p in (workdir / "preempted").iterdir() if p.name.isdigit()) == [
        "120", "60", "90"
    ]  # fmt: skip
