"""Preemption agreed by every process: real 2-process `jax.distributed` jobs on CPU.

The processes run `tests/preempt_worker.py` and train a model sharded over both. The test
sends a real SIGTERM to process 1 only; both processes must stop at the same step, save it
into one committed checkpoint, and exit with the documented status; a new 2-process job then
restores exactly the state of that step (recomputed by training from scratch). Every wait is
bounded: a deadlock fails the test instead of hanging it. The single-process behaviour of
`reached_preemption()` and `request_preemption()` is checked at the end, in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optax
import pytest
from flax import nnx

from conftest import REPO
from roxxel.checkpoint import Checkpointer, InvalidArgumentError
from servers import free_port

WORKER = REPO / "tests" / "preempt_worker.py"
LIMIT = 240  # seconds for a whole job (2 busy cores); a deadlocked job is killed, the test fails


class Job:
    def __init__(self, mode: str, ckpt: Path, on_sigterm: str = "flag") -> None:
        env = {
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_PLATFORMS": "cpu",
            "PYTHONUNBUFFERED": "1",
        }
        port = str(free_port())
        self.started = time.monotonic()
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER), mode, str(ckpt), str(pid), "2", port, on_sigterm],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            for pid in (0, 1)
        ]
        self.outputs = ["", ""]

    def sigterm_after(self, pid: int, line: str) -> None:
        """Send SIGTERM to process `pid` once it printed `line` (training is under way)."""
        proc = self.procs[pid]
        assert proc.stdout is not None
        seen = []
        for text in proc.stdout:  # EOF ends the loop if the process dies early
            seen.append(text)
            if text.strip() == line:
                proc.send_signal(signal.SIGTERM)
                break
        self.outputs[pid] += "".join(seen)
        assert seen and seen[-1].strip() == line, "".join(seen)[-4000:]

    def finish(self) -> list[int]:
        """Wait for both processes, killing them at the time limit (that fails the test)."""
        codes = []
        for pid, proc in enumerate(self.procs):
            left = max(1.0, LIMIT - (time.monotonic() - self.started))
            try:
                self.outputs[pid] += proc.communicate(timeout=left)[0]
            except subprocess.TimeoutExpired:
                for other in self.procs:
                    other.kill()
                self.outputs[pid] += proc.communicate()[0]
                pytest.fail(
                    f"process {pid} did not finish within {LIMIT} s (deadlock?):\n"
                    f"{self.outputs[pid][-4000:]}"
                )
            codes.append(proc.returncode)
        return codes

    def result(self, pid: int, key: str) -> object:
        for line in self.outputs[pid].splitlines():
            if line.startswith("RESULT "):
                fields = json.loads(line[len("RESULT ") :])
                if key in fields:
                    return fields[key]
        raise AssertionError(f"process {pid} printed no {key!r}:\n{self.outputs[pid][-4000:]}")


def committed(ckpt: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


def assert_one_committed_step(ckpt: Path, step: int) -> None:
    names = [p.name for p in ckpt.iterdir()]
    assert not [n for n in names if "tmp" in n], names
    assert names.count(str(step)) == 1
    assert committed(ckpt)[-1] == step
    assert (ckpt / str(step) / "_CHECKPOINT_METADATA").is_file()
    for process in (0, 1):  # both processes wrote their shards into that one step
        assert (ckpt / str(step) / "arrays" / f"index.process_{process}.json").is_file()


def assert_resumes(ckpt: Path, step: int) -> None:
    job = Job("resume", ckpt)
    assert job.finish() == [0, 0], job.outputs
    for pid in (0, 1):
        assert job.result(pid, "restored") == step
        assert job.result(pid, "equal") is True  # exactly the state after `step` steps


@pytest.mark.slow
@pytest.mark.parametrize(("on_sigterm", "status"), [("flag", 0), ("exit", 143)])
def test_sigterm_to_one_process_stops_both_at_one_saved_step(
    tmp_path: Path, on_sigterm: str, status: int
) -> None:
    ckpt = tmp_path / "ck"
    job = Job("train", ckpt, on_sigterm)
    job.sigterm_after(1, "step 30")  # process 0 gets no signal
    codes = job.finish()
    assert codes == [status, status], job.outputs
    key = "stopped_at" if on_sigterm == "flag" else "exited_at"
    agreed = job.result(0, key)
    assert job.result(1, key) == agreed
    assert isinstance(agreed, int) and agreed > 30
    # process 0 learned of the notice only through the agreement, at the same step
    assert job.result(0, "flag") is True and job.result(1, "flag") is True
    if on_sigterm == "exit":
        assert job.result(0, "code") == 143 and job.result(1, "code") == 143
    else:
        assert job.result(0, "final") == agreed and job.result(1, "final") == agreed
    assert "Traceback" not in job.outputs[0] + job.outputs[1], job.outputs
    assert_one_committed_step(ckpt, agreed)
    assert_resumes(ckpt, agreed)


@pytest.mark.slow
def test_request_preemption_in_one_process_stops_both(tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    job = Job("request", ckpt)
    assert job.finish() == [0, 0], job.outputs
    assert job.result(1, "requested_at") == 40
    # the flag is not set on the requesting process alone: loops that test it stay in step
    assert job.result(1, "flag_after_request") is False
    agreed = job.result(0, "stopped_at")
    assert job.result(1, "stopped_at") == agreed
    assert isinstance(agreed, int) and agreed > 40
    assert_one_committed_step(ckpt, agreed)


@pytest.mark.slow
def test_final_save_in_a_two_process_job(tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    job = Job("final", ckpt)
    assert job.finish() == [0, 0], job.outputs
    assert job.result(0, "returned") == 12 and job.result(1, "returned") == 12
    assert committed(ckpt) == [10, 12]  # step 10 was in flight; both committed
    assert_one_committed_step(ckpt, 12)
    assert_resumes(ckpt, 12)


@pytest.mark.slow
def test_without_jax_preemption_service_the_calls_refuse_clearly(tmp_path: Path) -> None:
    job = Job("noservice", tmp_path / "ck")
    assert job.finish() == [0, 0], job.outputs
    for pid in (0, 1):
        # no JAX notifier to leave SIGTERM to: Roxxel's own handler is installed, as before
        assert job.result(pid, "handler") == "roxxel._lifecycle"
        for call in ("reached", "request"):
            message = str(job.result(pid, call))
            assert message.startswith("PreemptionSyncError: "), message
            assert "jax_enable_preemption_service" in message


# ------------------------------------------------------------------ single process
def _tiny() -> tuple[nnx.Linear, nnx.Optimizer[nnx.Linear]]:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    return model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)


def test_single_process_reached_preemption_follows_the_request(tmp_path: Path) -> None:
    model, optimizer = _tiny()
    ck = Checkpointer(str(tmp_path / "ck"), model, optimizer, on_sigterm="flag")
    assert [ck.reached_preemption(step) for step in (1, 2)] == [False, False]
    ck.request_preemption()
    assert ck.preemption_requested is True
    assert ck.reached_preemption(3) is True
    assert ck.reached_preemption(4) is True  # stays True after the stop step
    assert ck.final_save(3, {"loss": 1.0}) == 3
    assert committed(tmp_path / "ck") == [3]


def test_single_process_exit_mode_saves_the_step_then_exits_143(tmp_path: Path) -> None:
    model, optimizer = _tiny()
    ck = Checkpointer(str(tmp_path / "ck"), model, optimizer, on_sigterm="exit")
    assert ck.reached_preemption(1, {"loss": 1.0}) is False
    ck.request_preemption()
    with pytest.raises(SystemExit) as exited:
        ck.reached_preemption(2, {"loss": 0.5})
    assert exited.value.code == 143
    assert committed(tmp_path / "ck") == [2]
    with Checkpointer(str(tmp_path / "ck"), *_tiny(), read_only=True) as again:
        assert again.restore() == 2
        assert again.metrics(2) == {"loss": 0.5}


def test_exit_mode_without_metrics_fails_at_the_first_call(tmp_path: Path) -> None:
    model, optimizer = _tiny()
    with Checkpointer(str(tmp_path / "ck"), model, optimizer, on_sigterm="exit") as ck:
        with pytest.raises(InvalidArgumentError, match="metrics_dict is required"):
            ck.reached_preemption(1)  # long before any preemption
        with pytest.raises(InvalidArgumentError, match="step"):
            ck.reached_preemption(-1, {"loss": 1.0})
