"""Ctrl-C inside `save()`: at exit the step is committed or nothing of it remains.

A real SIGINT is sent to a process that saves in a loop (each step saved, then overwritten
with the same state), at random moments; most land inside `save()` (waiting for the previous
save, capturing the state, setting the old version of a step aside, starting Orbax's save).
The KeyboardInterrupt is not caught: the process ends as a Python program does on Ctrl-C.
Right after it has exited, before any new Checkpointer could clean up, the directory must
hold no unfinished folder (`*.orbax-checkpoint-tmp*`) and no old version set aside
(`*.roxxel-replaced`), and the newest committed step must restore exactly.
"""

from __future__ import annotations

import collections
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
from roxxel._orbax import REPLACED
from roxxel.checkpoint import Checkpointer, verify

TRIALS = 16

ZYGOTE = r"""
import os, signal, sys, threading
# Ctrl-C raises KeyboardInterrupt even when this runs under a launcher that ignores SIGINT
# (a shell's background job does).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
import optax  # noqa
import roxxel.checkpoint  # noqa: heavy imports once, before any fork
from reliability import stamp, tiny
assert threading.active_count() == 1, "the zygote must have no threads before forking"


def writer(directory, errors):
    from roxxel.checkpoint import Checkpointer
    fd = os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    import faulthandler
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's stack dump on a hang
    model, optimizer = tiny(512)
    ck = Checkpointer(directory, model, optimizer, max_to_keep=2)
    step = ck.restore()
    print("ready", flush=True)
    while True:
        step += 1
        stamp(model, optimizer, step)
        ck.save(step, {{"loss": 1.0 / step}})
        ck.save(step, {{"loss": 1.0 / step}}, overwrite=True)


for line in sys.stdin:
    directory, errors = line.split()
    pid = os.fork()
    if pid == 0:
        # No try/finally here: the KeyboardInterrupt ends the child the normal way.
        writer(directory, errors)
    print(f"pid {{pid}}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"reaped {{status}}", flush=True)
"""

# Where in save() a KeyboardInterrupt landed, by the Roxxel functions its traceback names.
PLACES = (
    ("interrupts_deferred", "held back to the end of the save's start"),
    ("run_bounded", "waiting for the previous save"),
    ("_finish_pending", "waiting for the previous save"),
    ("snapshot", "capturing the state"),
    ("_snapshot", "capturing the state"),
    ("take", "capturing the state"),
)


def _place(traceback: str) -> str:
    frames = [
        ln.rsplit(" in ", 1)[1].strip()
        for ln in traceback.splitlines()
        if "roxxel" in ln and ", in " in ln
    ]
    if "save" not in frames:
        return "outside save()"
    for name, place in PLACES:
        if name in frames:
            return place
    return f"save() > {frames[-1]}"


@pytest.mark.slow
def test_ctrl_c_inside_save_leaves_the_step_committed_or_nothing_of_it(tmp_path: Path) -> None:
    rng = random.Random(77)
    directory = tmp_path / "ck"
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE.format(tests=str(REPO / "tests"))],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    places: collections.Counter[str] = collections.Counter()
    model, optimizer = tiny(512)
    newest = 0
    try:
        assert zygote.stdin is not None
        output = LineReader(zygote.stdout)
        for trial in range(TRIALS):
            errors = tmp_path / f"trial-{trial}.err"
            zygote.stdin.write(f"{directory} {errors}\n".encode())
            zygote.stdin.flush()
            pid = int(output.next(60).split()[1])
            assert output.next(60) == "ready"
            time.sleep(rng.uniform(0.1, 0.8))
            os.kill(pid, signal.SIGINT)
            try:
                status = int(output.next(120).split()[1])
            except AssertionError:
                os.kill(pid, signal.SIGUSR1)  # every thread's stack, into the trial's stderr
                time.sleep(2)
                os.kill(pid, signal.SIGKILL)
                output.next(60)  # "reaped"
                raise AssertionError(
                    f"trial {trial}: no exit within 120 s of SIGINT; its stderr and stacks:\n"
                    + errors.read_text()[-12000:]
                ) from None
            text = errors.read_text()
            assert "KeyboardInterrupt" in text, f"trial {trial}: {text[-2000:]}"
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT, status
            assert "could not be committed" not in text, f"trial {trial}: {text[-2000:]}"
            places[_place(text)] += 1

            names = sorted(os.listdir(directory))
            left = [n for n in names if ".orbax-checkpoint-tmp" in n or REPLACED in n]
            assert left == [], f"trial {trial}: left at exit: {left}"
            committed = sorted(int(n) for n in names if n.isdigit())
            assert committed and committed[-1] >= newest, f"trial {trial}: {names}"
            with Checkpointer(str(directory), model, optimizer, read_only=True) as ck:
                assert ck.restore() == committed[-1]
                assert stamped_step(model, optimizer) == committed[-1]
            assert all(result.ok for result in verify(str(directory))), trial
            newest = committed[-1]
    finally:
        zygote.kill()
        zygote.wait(timeout=30)
        assert zygote.stdin is not None and zygote.stdout is not None
        zygote.stdin.close()
        zygote.stdout.close()
    print(f"SIGINT trials: {TRIALS}; where the KeyboardInterrupt landed: {dict(places)}")
    inside = TRIALS - places["outside save()"]
    assert inside >= TRIALS // 2, f"only {inside}/{TRIALS} interrupts landed inside save()"
