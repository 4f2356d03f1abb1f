"""Exit safety and background failures, with real processes, signals and a real full disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from roxxel.checkpoint import BackgroundWriteError, Checkpointer

TRAINER = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's stack dump on a hang
import jax, optax
from flax import nnx
from roxxel.checkpoint import Checkpointer

class Big(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(1024, 1024, rngs=rngs) for _ in range(16)])

model = Big(nnx.Rngs(0))
opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
ck = Checkpointer("ck", model, opt, max_to_keep=10)
step = ck.restore()
while True:
    step += 1
    ck.save(step, {"loss": 1.0 / step})
    print(f"saved {step}", flush=True)
    if step == 3:
        print("waiting for SIGTERM", flush=True)
        ck.wait_until_finished()
        ck.save(4, {"loss": 0.25})        # in flight when the signal lands
        print("save 4 started", flush=True)
        import time
        time.sleep(120)
"""


def test_sigterm_commits_the_save_in_flight(tmp_path: Path) -> None:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if "save 4 started" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # every thread's stack, to stderr
            time.sleep(3)
            proc.kill()
            _, stderr = proc.communicate()
            pytest.fail(
                f"no exit within 120 s of SIGTERM; the trainer's threads:\n{stderr[-12000:]}"
            )
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    names = os.listdir(tmp_path / "ck")
    assert sorted(n for n in names if n.isdigit()) == ["1", "2", "3", "4"], names
    assert not [n for n in names if "tmp" in n], names

    model_code = TRAINER.split("ck = Checkpointer")[0]
    check = model_code + "print(Checkpointer('ck', model, opt).restore())\n"
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip().splitlines()[-1] == "4", result.stderr


class Sized(nnx.Module):
    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(n)
        self.w = nnx.Param(rng.standard_normal((n, 1024)).astype(np.float32))


def test_failed_background_write_is_reported_and_earlier_steps_survive(small_disk: Path) -> None:
    ckdir = small_disk / "ck"
    small = Sized(256)  # 1 MiB: fits
    with Checkpointer(str(ckdir), small, None, best_metric=None) as ck:
        ck.save(1)
    big = Sized(8192)  # 32 MiB of random floats: cannot fit in 24 MiB
    ck = Checkpointer(str(ckdir), big, None, best_metric=None)
    ck.save(2)
    with pytest.raises(
        BackgroundWriteError, match=r"saving step 2 .* failed in the background"
    ) as info:
        ck.wait_until_finished()
    assert info.value.step == 2
    assert "No space left on device" in str(info.value) or "RESOURCE_EXHAUSTED" in str(info.value)
    assert ck.all_steps() == [1]
    assert not [p for p in os.listdir(ckdir) if "tmp" in p]
    # The same Checkpointer keeps saving once the state fits again.
    big.w.set_value(np.ones((16, 1024), np.float32))
    ck.save(3)
    ck.close()
    assert sorted(n for n in os.listdir(ckdir) if n.isdigit()) == ["1", "3"]

    restored = Sized(256)
    restored.w.set_value(np.zeros((256, 1024), np.float32))
    with Checkpointer(str(ckdir), restored, None, best_metric=None) as reader:
        assert reader.restore(step=1) == 1
    np.testing.assert_array_equal(
        np.asarray(restored.w.get_value()), np.asarray(small.w.get_value())
    )


def test_exit_hook_is_registered_before_executor_shutdown() -> None:
    """The fact the exit drain relies on: `threading._register_atexit` hooks run LIFO, so ours
    (registered after `concurrent.futures.thread` imported) runs while executors still work."""
    code = """
import concurrent.futures.thread, threading
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(1)
def hook():
    print("submit ok:", pool.submit(lambda: 42).result())
threading._register_atexit(hook)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert "submit ok: 42" in result.stdout, result.stderr
