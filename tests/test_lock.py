"""Two writers: the second process gets an error naming the first; stale locks are taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from reliability import stamp, stamped_step, tiny
from roxxel._lock import LOCK_NAME
from roxxel.checkpoint import Checkpointer, CheckpointLockedError, verify

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


def _big() -> tuple[Any, Any]:
    """A state of about 200 MB (a 4096x4096 float32 weight and its two adam moments): its
    background write takes long enough that a second Checkpointer is made while it runs."""
    model, optimizer = tiny(4096)
    stamp(model, optimizer, 1)
    return model, optimizer


def _until_unfinished_folder(directory: Path) -> None:
    """Wait until the background save has made its unfinished folder (it does so on a thread)."""
    deadline = time.monotonic() + 30
    while not any(".orbax-checkpoint-tmp" in n for n in os.listdir(directory)):
        assert time.monotonic() < deadline, os.listdir(directory)
        time.sleep(0.002)


def test_a_second_checkpointer_in_the_same_process_waits_for_the_save_in_flight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """0.1.0's second Checkpointer removed the first one's unfinished folder: its save failed."""
    directory = tmp_path / "ck"
    model, optimizer = _big()
    caplog.set_level(logging.INFO, logger="roxxel")
    first = Checkpointer(str(directory), model, optimizer)
    first.save(1, {"loss": 1.0})
    assert first._store.is_saving(), "the save must still be in flight for this test to count"
    _until_unfinished_folder(directory)
    second = Checkpointer(str(directory), model, optimizer)  # the notebook cell run again
    assert os.listdir(directory).count("1") == 1  # it waited: step 1 is committed
    first.wait_until_finished()  # no error: nothing of the save was removed
    messages = [r.getMessage() for r in caplog.records]
    assert any("is saving step 1; waiting for it" in m for m in messages), messages
    assert any("waited" in m and "step 1 of another Checkpointer" in m for m in messages)
    assert any("committed" in m for m in messages if "waited" in m)
    stamp(model, optimizer, 0)
    assert second.restore() == 1 and stamped_step(model, optimizer) == 1
    assert all(result.ok for result in verify(str(directory)))
    first.close()
    second.close()


def test_a_second_checkpointer_that_stops_waiting_leaves_the_save_in_flight_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "ck"
    model, optimizer = _big()
    caplog.set_level(logging.INFO, logger="roxxel")
    first = Checkpointer(str(directory), model, optimizer)
    first.save(1, {"loss": 1.0})
    _until_unfinished_folder(directory)
    # A timeout far shorter than the write: it gives up waiting at construction.
    second = Checkpointer(str(directory), model, optimizer, timeout=0.001)
    assert first._store.is_saving(), "the write must outlast the second one's wait"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step 1 of another Checkpointer" in m and "left to it" in m for m in warnings)
    first.wait_until_finished()  # its unfinished folder was kept: it commits
    assert sorted(n for n in os.listdir(directory) if n.isdigit()) == ["1"]
    assert not any("tmp" in n for n in os.listdir(directory))
    second.close()
    first.close()
    model2, optimizer2 = tiny(4096)
    with Checkpointer(str(directory), model2, optimizer2, read_only=True) as reader:
        assert reader.restore() == 1 and stamped_step(model2, optimizer2) == 1


def test_a_second_checkpointer_does_not_save_over_the_first_ones_save_in_flight(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "ck"
    model, optimizer = _big()
    first = Checkpointer(str(directory), model, optimizer)
    second = Checkpointer(str(directory), model, optimizer, timeout=0.001)
    first.save(1, {"loss": 1.0})
    with pytest.raises(TimeoutError, match="still saving step 1"):
        second.save(2, {"loss": 0.5})
    assert second.all_steps() == []  # refused before anything was written
    first.wait_until_finished()
    second.close()
    with Checkpointer(str(directory), model, optimizer) as third:
        third.save(2, {"loss": 0.5})  # with the first one's save done, others save again
        third.wait_until_finished()
        assert third.all_steps() == [1, 2]
    first.close()
