"""Telemetry: the figures of each save (`last_save`, `save_history`), the INFO line per commit,
and the `on_commit` callback, on real saves."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from conftest import make, run_python, state_arrays
from roxxel._telemetry import HISTORY, Telemetry
from roxxel.checkpoint import Checkpointer, SaveStats


def test_last_save_holds_the_figures_of_the_committed_step(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        assert ck.last_save is None and ck.save_history == ()
        wall = time.time()
        ck.save(1, {"loss": 1.0})
        ck.wait_until_finished()
        stats = ck.last_save
        assert isinstance(stats, SaveStats)
        assert (stats.step, stats.temporary, stats.format) == (1, False, 2)
        assert stats.size_bytes == sum(a.nbytes for a in state_arrays(model, optimizer).values())
        assert stats.blocking_seconds == ck.last_save_seconds
        assert 0 < stats.blocking_seconds <= stats.commit_seconds < 60
        assert stats.throughput == pytest.approx(stats.size_bytes / stats.commit_seconds)
        assert wall <= stats.committed_at <= time.time()
        assert (ckdir / "1").is_dir()
        record = stats.as_dict()
        assert json.loads(json.dumps(record)) == record  # plain numbers, ready for a tracker
        assert set(record) == {
            "step", "temporary", "format", "size_bytes", "blocking_seconds",
            "commit_seconds", "throughput", "committed_at",
        }  # fmt: skip

        ck.save(2, {"loss": 0.5})
        ck.save(3, {"loss": 0.4})
        ck.wait_until_finished()
        assert [s.step for s in ck.save_history] == [1, 2, 3]
        assert ck.last_save is ck.save_history[-1]


def test_format_one_saves_are_measured_too(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, compression=True) as ck:
        ck.save(1, {"loss": 1.0})
        ck.wait_until_finished()
        assert ck.last_save is not None
        assert (ck.last_save.step, ck.last_save.format) == (1, 1)
        assert ck.last_save.size_bytes > 0


def test_the_history_is_bounded_and_both_halves_may_come_in_either_order() -> None:
    telemetry = Telemetry("somewhere", None)
    for step in range(HISTORY + 50):
        telemetry.begin(step, started=time.perf_counter(), temporary=False, fmt=2, size=4096)
        if step % 2:  # the commit may be seen before save() returns
            telemetry.committed(step)
            assert telemetry.last is None or telemetry.last.step == step - 1
            telemetry.returned(step, 0.001)
        else:
            telemetry.returned(step, 0.001)
            telemetry.committed(step)
        assert telemetry.last is not None and telemetry.last.step == step
    assert len(telemetry.history) == HISTORY
    assert [s.step for s in telemetry.history] == list(range(50, HISTORY + 50))
    telemetry.begin(999, started=0.0, temporary=False, fmt=2, size=1)
    telemetry.abandon(999)  # a save that never started leaves no figures
    telemetry.committed(999)
    telemetry.returned(999, 0.1)
    assert telemetry.last.step == HISTORY + 49


def test_one_info_line_per_commit(ckdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, optimizer = make()
    with caplog.at_level(logging.INFO, logger="roxxel"):
        with Checkpointer(str(ckdir), model, optimizer, max_to_keep=None) as ck:
            for step in (1, 2, 3):
                ck.save(step, {"loss": 1.0})
            ck.save(4, {"loss": 1.0}, temporary=True)
    lines = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("roxxel: committed")
    ]
    assert len(lines) == 4, lines
    assert lines[0].startswith("roxxel: committed step 1: ")
    assert "(temporary)" in lines[3] and "save() blocked" in lines[3] and str(ckdir) in lines[3]


def test_on_commit_runs_off_the_training_thread_and_never_delays_a_commit(
    ckdir: Path,
) -> None:
    release = threading.Event()
    calls: list[tuple[int, str, bool]] = []

    def on_commit(stats: SaveStats) -> None:
        calls.append(
            (stats.step, threading.current_thread().name, (ckdir / str(stats.step)).is_dir())
        )
        release.wait(30)  # a tracker that hangs

    model, optimizer = make()
    ck = Checkpointer(str(ckdir), model, optimizer, max_to_keep=None, on_commit=on_commit)
    ck.save(1, {"loss": 1.0})
    ck.save(2, {"loss": 0.5})
    started = time.perf_counter()
    ck.wait_until_finished()
    assert time.perf_counter() - started < 20  # not held by the hanging callback
    assert ck.all_steps() == [1, 2]
    assert ck.last_save is not None and ck.last_save.step == 2
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [(1, "roxxel-on-commit", True)]  # step 1's call is still running
    release.set()
    ck.close()  # delivers the queued calls
    assert [c[0] for c in calls] == [1, 2]
    assert all(name != threading.main_thread().name for _, name, _ in calls)


def test_a_failing_callback_is_logged_with_its_traceback_and_saving_goes_on(
    ckdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    def on_commit(stats: SaveStats) -> None:
        seen.append(stats.step)
        if stats.step == 1:
            raise RuntimeError("tracker is down")

    model, optimizer = make()
    with caplog.at_level(logging.INFO, logger="roxxel"):
        with Checkpointer(str(ckdir), model, optimizer, on_commit=on_commit) as ck:
            ck.save(1, {"loss": 1.0})
            ck.save(2, {"loss": 0.5})
            ck.wait_until_finished()
            assert ck.all_steps() == [1, 2]
    assert seen == [1, 2]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "on_commit callback raised for step 1" in errors[0].getMessage()
    assert errors[0].exc_info is not None and "tracker is down" in str(errors[0].exc_info[1])


def test_callbacks_queued_at_exit_are_delivered(tmp_path: Path) -> None:
    """A script that ends without close(): the exit drain commits the step and the callback
    writes its line before the process ends."""
    script = """
import json
import time
from flax import nnx
import optax
from roxxel.checkpoint import Checkpointer

model = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

def on_commit(stats):
    time.sleep(0.5)  # a slow tracker: without the drain waiting for it, the line is lost
    with open("stats.jsonl", "a") as f:
        f.write(json.dumps(stats.as_dict()) + "\\n")

ck = Checkpointer("ck", model, optimizer, on_commit=on_commit)
for step in (10, 20):
    ck.save(step, {"loss": 1.0 / step})
"""
    result = run_python(script, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20]
