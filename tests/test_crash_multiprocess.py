"""Crash trials of a 2-process job: one process is SIGKILLed in the middle of saving.

Each trial forks one writer from each of two zygotes (`tests/crash_writer.py`), which join a
`jax.distributed` job on 127.0.0.1 (gloo, 2 CPU devices each) and save step after step into
one local directory, every leaf a global array stamped with its step (the kernel sharded
over both processes). At a random moment during the saves (in half of the trials, a moment
when a save's unfinished folder exists, so that enough kills land mid-write on a loaded host)
one of the two (process 0 and process 1 in turn) gets SIGKILL; the other one goes 0.2 s
later, as a job scheduler would end it (alone it would abort at the coordination service's
heartbeat timeout). Then, like a restarted job, the test opens the directory in one process
and checks that:

* the unfinished folders of the killed save are removed;
* `restore()` returns the newest committed step with exactly its state;
* every step still on disk passes `verify` with every record present (the primary's and
  one per process).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import pytest

from reliability import TrialCounts, Zygote, stamped_step, tiny
from roxxel.checkpoint import Checkpointer, verify
from servers import free_port

pytestmark = pytest.mark.slow

TRIALS = 10


def _until_a_save_is_unfinished(directory: Path, seconds: float) -> None:
    """Wait until `directory` holds an unfinished step folder (a save is writing)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if any(".orbax-checkpoint-tmp" in name for name in os.listdir(directory)):
                return
        time.sleep(0.005)
    raise AssertionError(f"no save began writing in {directory} within {seconds} s")


def test_sigkill_of_one_of_two_processes_mid_save(tmp_path: Path) -> None:
    rng = random.Random(2024)
    directory = tmp_path / "ck"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    zygotes = [Zygote(process, 2, tmp_path, env) for process in (0, 1)]
    counts = TrialCounts("2-process job, one process SIGKILLed mid-save")
    model, optimizer = tiny()
    started = time.perf_counter()
    try:
        for trial in range(TRIALS):
            port = free_port()
            pids = [zygote.fork(str(directory), port) for zygote in zygotes]
            for zygote in zygotes:
                zygote.output.until("ready", 90)
            zygotes[0].output.until("saving", 60)  # the first save of this trial has begun
            if trial % 4 < 2:  # at any moment of the saves
                time.sleep(rng.uniform(0.0, 1.2))
            else:  # while a save's files are being written (a loaded host can miss that)
                _until_a_save_is_unfinished(directory, 30)
                time.sleep(rng.uniform(0.0, 0.05))
            victim = trial % 2
            zygotes[victim].kill_and_reap(pids[victim])
            time.sleep(0.2)
            zygotes[1 - victim].kill_and_reap(pids[1 - victim])
            counts.trials += 1

            names = os.listdir(directory)
            counts.mid_write += any(".orbax-checkpoint-tmp" in name for name in names)
            committed = sorted(int(n) for n in names if n.isdigit())
            with Checkpointer(str(directory), model, optimizer, max_to_keep=2) as ck:
                leftovers = [n for n in os.listdir(directory) if "tmp" in n]
                assert leftovers == [], f"trial {trial}: unfinished folders kept: {leftovers}"
                step = ck.restore()
            assert step == (committed[-1] if committed else 0), f"trial {trial}: {committed}"
            if step:
                assert stamped_step(model, optimizer) == step
            results = verify(str(directory))
            assert all(r.verified for r in results), f"trial {trial}: {results}"
            counts.outcome(f"killed process {victim}")
            counts.restored.append(step)
    finally:
        for zygote in zygotes:
            zygote.close()
    print(f"{counts.report()}; {time.perf_counter() - started:.0f} s")
    assert counts.trials == TRIALS
    assert counts.mid_write >= TRIALS // 3, f"only {counts.mid_write}/{TRIALS} kills hit a save"
    assert counts.restored == sorted(counts.restored) and counts.restored[-1] > 0
