"""Two writers: the second process gets an error naming the first; stale locks are taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from reliability import stamp, stamped_step, tiny
from roxxel._lock import LOCK_NAME
from roxxel.checkpoint import Checkpointer, CheckpointLockedError

HOLDER = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from reliability import stamp, tiny
from roxxel.checkpoint import Checkpointer
model, optimizer = tiny()
ck = Checkpointer(sys.argv[1], model, optimizer)
stamp(model, optimizer, 4)
ck.save(4, {{"loss": 0.5}})
ck.wait_until_finished()
print("holding", flush=True)
sys.stdin.read()  # hold the lock until the test closes stdin or kills this process
"""


def test_a_second_writer_is_refused_naming_the_holder_until_it_dies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "ck"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()  # the child exits (EOF) rather than hang if it fails
        assert line.strip() == "holding", holder.stderr.read() if holder.stderr else ""
        model, optimizer = tiny()

        with pytest.raises(CheckpointLockedError) as info:
            Checkpointer(str(directory), model, optimizer)
        error = info.value
        assert (error.host, error.pid) == (socket.gethostname(), holder.pid)
        assert f"pid {holder.pid}" in str(error) and socket.gethostname() in str(error)
        assert "read_only=True" in str(error)

        reader = Checkpointer(str(directory), model, optimizer, read_only=True)
        assert reader.restore() == 4 and stamped_step(model, optimizer) == 4
        reader.close()

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        caplog.set_level(logging.WARNING, logger="roxxel")
        with Checkpointer(str(directory), model, optimizer) as ck:
            assert ck.restore() == 4
            stamp(model, optimizer, 5)
            ck.save(5, {"loss": 0.4})
        assert any(
            "took over" in r.getMessage() and f"pid {holder.pid}" in r.getMessage()
            for r in caplog.records
        )
        assert (directory / LOCK_NAME).read_text() == ""  # a clean close empties the lock
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=30)
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()


def test_a_stale_lock_file_from_a_dead_process_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "ck"
    directory.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        timeout=60,
    )
    dead_pid = int(dead.stdout)
    (directory / LOCK_NAME).write_text(
        json.dumps({"host": "gone-host", "pid": dead_pid, "since": 0})
    )
    model, optimizer = tiny()
    caplog.set_level(logging.WARNING, logger="roxxel")
    with Checkpointer(str(directory), model, optimizer) as ck:
        holder = json.loads((directory / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        ck.save(1, {"loss": 1.0})
    assert any(f"gone-host pid {dead_pid}" in r.getMessage() for r in caplog.records)


def test_checkpointers_of_one_process_share_the_lock(tmp_path: Path) -> None:
    directory = tmp_path / "ck"
    model, optimizer = tiny()
    first = Checkpointer(str(directory), model, optimizer)
    second = Checkpointer(str(directory), model, optimizer)  # e.g. a notebook cell run again
    first.close()
    assert json.loads((directory / LOCK_NAME).read_text())["pid"] == os.getpid()
    second.save(1, {"loss": 1.0})
    second.close()
    assert (directory / LOCK_NAME).read_text() == ""
