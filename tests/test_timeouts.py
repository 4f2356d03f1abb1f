"""Timeouts: storage that stops answering never hangs the program.

The checkpoint directory is on a loop-mounted ext4 filesystem that the test freezes with
`fsfreeze -f`: every write to it blocks in the kernel until it is thawed, the way a hung
network filesystem behaves. A training process with `timeout=2` must get a `TimeoutError`
naming the step and what was waited for from `wait_until_finished()` and `restore()` (its
`save()` returns after the snapshot, as always), and must exit on its own, all while the
filesystem is still frozen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from reliability import LineReader, ext4

CALLS = ("save", "wait", "restore")

CHILD = f"""
import sys, time
sys.path.insert(0, {str(REPO / "tests")!r})
from reliability import stamp, tiny
from roxxel.checkpoint import Checkpointer
model, optimizer = tiny(64)
ck = Checkpointer(sys.argv[1], model, optimizer, timeout=2)
ck.save(1, {{"loss": 1.0}})
ck.wait_until_finished()
print("ready", flush=True)
sys.stdin.readline()  # the test freezes the filesystem now
stamp(model, optimizer, 2)
for name, call in [  # the calls of CALLS
    ("save", lambda: ck.save(2, {{"loss": 0.5}})),
    ("wait", ck.wait_until_finished),
    ("restore", ck.restore),
]:
    started = time.monotonic()
    try:
        call()
        print(name, "returned", flush=True)
    except TimeoutError as exc:
        print(name, "TimeoutError", round(time.monotonic() - started), exc, flush=True)
print("exiting", flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mount and fsfreeze need root")
def test_a_frozen_filesystem_gives_timeout_errors_and_a_bounded_exit(tmp_path: Path) -> None:
    if shutil.which("fsfreeze") is None:
        pytest.skip("fsfreeze (util-linux) is not installed")
    with ext4(tmp_path / "mnt") as mount:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(mount / "ck")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert child.stdin is not None
            output = LineReader(child.stdout)
            output.until("ready", 120)
            subprocess.run(["fsfreeze", "-f", str(mount)], check=True, timeout=30)
            child.stdin.write(b"go\n")
            child.stdin.flush()
            # Everything below happens while the filesystem is still frozen.
            lines = output.until("roxxel: exiting now", 60)
        finally:
            subprocess.run(["fsfreeze", "-u", str(mount)], timeout=30)
            # A thread blocked inside the frozen filesystem cannot die before the thaw (the
            # kernel finishes os._exit only then); after it, the child is gone at once.
            try:
                child.wait(timeout=60)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(timeout=30)
                for stream in (child.stdin, child.stdout):
                    if stream is not None:
                        stream.close()
        assert child.returncode == 1
        results = {line.split()[0]: line for line in lines if line.split()[0] in CALLS}
        # save() blocks only for the snapshot: it returns, and the write waits in the
        # background; every later wait names the step and gives up after `timeout`.
        assert results["save"] == "save returned", lines
        for name in ("wait", "restore"):
            line = results[name]
            assert " TimeoutError " in line, lines
            assert "step 2" in line and "timeout=2 s" in line, line
            assert int(line.split()[2]) <= 30, line  # bounded, with slack for a busy host
        assert any("could not be committed at exit" in line for line in lines)
