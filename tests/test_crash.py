"""Crash at any moment: a process saving in a loop is SIGKILLed, then restore() must hold.

Each trial forks a fresh writer from a "zygote" process that has already imported JAX, Flax,
Orbax and Roxxel (no JAX backend and no thread yet, so the fork is safe); this keeps a trial
at a fraction of a second instead of the 3-5 s a new interpreter costs on the 2-core host.
The writer stamps the state with its step (`reliability.stamp`) and saves step after step with
`max_to_keep=2`, so kills land in array writes, metadata writes, checksum records, renames
and deletions of old steps. After the SIGKILL the test opens the directory like a restarted
job would and checks that:

* the unfinished folders of the killed save are gone (removed on construction);
* `restore()` returns the newest committed step, and the state is exactly that step's;
* every step that is still on disk passes its checksums (`verify`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from reliability import LineReader, stamped_step, tiny
from roxxel.checkpoint import Checkpointer, verify

TRIALS = 24

ZYGOTE = r"""
import os, sys, threading
sys.path.insert(0, {tests!r})
import optax  # noqa
import roxxel.checkpoint  # noqa: heavy imports once, before any fork
from reliability import stamp, tiny
assert threading.active_count() == 1, "the zygote must have no threads before forking"


def writer(directory):
    from roxxel.checkpoint import Checkpointer
    model, optimizer = tiny()
    ck = Checkpointer(directory, model, optimizer, max_to_keep=2)
    step = ck.restore()
    print("ready", flush=True)
    while True:
        step += 1
        stamp(model, optimizer, step)
        ck.save(step, {{"loss": 1.0 / step}})


for line in sys.stdin:
    directory = line.strip()
    pid = os.fork()
    if pid == 0:
        try:
            writer(directory)
        finally:
            os._exit(1)
    print(f"pid {{pid}}", flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_saves_never_loses_the_newest_committed_step(tmp_path: Path) -> None:
    rng = random.Random(1234)
    directory = tmp_path / "ck"
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE.format(tests=str(REPO / "tests"))],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    model, optimizer = tiny()
    partial_left = 0
    restored_steps = []
    try:
        assert zygote.stdin is not None
        output = LineReader(zygote.stdout)
        for trial in range(TRIALS):
            zygote.stdin.write(f"{directory}\n".encode())
            zygote.stdin.flush()
            pid = int(output.next(60).split()[1])
            assert output.next(60) == "ready"
            time.sleep(rng.uniform(0.05, 0.6))
            os.kill(pid, signal.SIGKILL)
            assert output.next(60) == "reaped"

            names = os.listdir(directory)
            partial_left += any(".orbax-checkpoint-tmp" in name for name in names)
            committed = sorted(int(n) for n in names if n.isdigit())
            assert committed, f"trial {trial}: no committed step at all ({names})"

            ck = Checkpointer(str(directory), model, optimizer, max_to_keep=2)
            try:
                leftovers = [n for n in os.listdir(directory) if "tmp" in n]
                assert leftovers == [], f"trial {trial}: unfinished folders kept: {leftovers}"
                step = ck.restore()
                assert step == committed[-1], f"trial {trial}: {step} != {committed}"
                assert stamped_step(model, optimizer) == step
                assert all(result.ok for result in verify(str(directory))), trial
                restored_steps.append(step)
            finally:
                ck.close()
    finally:
        zygote.kill()
        zygote.wait(timeout=30)
        assert zygote.stdin is not None and zygote.stdout is not None
        zygote.stdin.close()
        zygote.stdout.close()
    print(
        f"crash trials: {TRIALS}; a save was mid-write (unfinished folder left) in "
        f"{partial_left}; restored steps {restored_steps}"
    )
    # The kills must really land during writes, or the test proves nothing.
    assert partial_left >= TRIALS // 4, f"only {partial_left}/{TRIALS} kills hit a save"
    # Each trial resumes where the last one stopped: progress is never lost.
    assert restored_steps == sorted(restored_steps)
