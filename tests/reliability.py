"""Helpers of the reliability tests: state that is a known function of the step, and mounts.

`stamp(model, optimizer, step)` sets every leaf to a value computed from the step and the
leaf's position, so that a restored state proves which step it came from. The mount helpers
make real size-limited or read-only filesystems and always unmount them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from roxxel._state import is_key, variables


class Tiny(nnx.Module):
    """A model built without any XLA compile, so a fresh process has it in a fraction of a s."""

    def __init__(self, size: int = 64) -> None:
        self.w = nnx.Param(jnp.asarray(np.zeros((size, size), np.float32)))
        self.b = nnx.Param(jnp.asarray(np.zeros((size,), np.float32)))


def tiny(size: int = 64) -> tuple[Tiny, nnx.Optimizer[Any]]:
    """A Tiny model and its adam optimizer (9 array leaves with the optimizer's state)."""
    import optax

    model = Tiny(size)
    return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)


def _leaves(model: nnx.Module, optimizer: Any) -> list[tuple[str, Any]]:
    return [
        (path, variable)
        for path, variable in sorted(variables(model, optimizer).items())
        if not is_key(variable.get_value())
        and not isinstance(variable.get_value(), (bool, int, float, complex))
    ]


def stamp(model: nnx.Module, optimizer: Any, step: int) -> None:
    """Set every array leaf to `step * 1000 + its index` (exact in float32 below 16k steps)."""
    for index, (_, variable) in enumerate(_leaves(model, optimizer)):
        value = variable.get_value()
        # NumPy, then one transfer: no XLA compile per shape (it costs seconds on 2 cores).
        full = np.full(value.shape, step * 1000 + index, np.dtype(value.dtype))
        variable.set_value(jnp.asarray(full))


def stamped_step(model: nnx.Module, optimizer: Any) -> int:
    """The step that `stamp` wrote into the state; fails if the leaves disagree."""
    steps = set()
    for index, (path, variable) in enumerate(_leaves(model, optimizer)):
        values = np.unique(np.asarray(variable.get_value()))
        assert values.size == 1, f"{path} holds several values: {values[:5]}"
        steps.add((int(values[0]) - index) / 1000)
    assert len(steps) == 1, f"leaves come from several steps: {sorted(steps)}"
    return int(steps.pop())


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` (e.g. "8m") mounted at `where`; skipped where mount is denied."""
    where.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        # Lazy unmount: a test that failed mid-write must not leave the mount behind.
        _run("umount", "-l", str(where))


def remount(where: Path, mode: str) -> None:
    """Remount `where` read-only ("ro") or read-write ("rw")."""
    done = _run("mount", "-o", f"remount,{mode}", str(where))
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def ext4(where: Path, size_mb: int = 64) -> Iterator[Path]:
    """A loop-mounted ext4 filesystem at `where` (its loop device goes with the unmount)."""
    image = where.with_suffix(".img")
    where.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(size_mb << 20)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 is not usable here: {made.stderr.strip()}")
    done = _run("mount", "-o", "loop", str(image), str(where))
    if done.returncode != 0:
        reason = done.stderr.strip()
        pytest.skip(f"cannot loop-mount ext4 (needs root and /dev/loop-control): {reason}")
    try:
        yield where
    finally:
        _run("fsfreeze", "-u", str(where))  # never leave it frozen
        _run("umount", str(where))
        image.unlink(missing_ok=True)


class LineReader:
    """Lines from a child's pipe, each waited for with a deadline (select on the raw fd).

    A buffered `readline()` after `select()` can leave lines in Python's buffer where
    `select()` no longer sees them; this reads the fd directly.
    """

    def __init__(self, stream: Any) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.seen: list[str] = []

    def next(self, seconds: float) -> str:
        """The next line; AssertionError after `seconds`, or at end of file."""
        import os
        import select
        import time

        deadline = time.monotonic() + seconds
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line within {seconds} s; last lines: {self.seen[-20:]}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(
                        f"the child closed its output; last lines: {self.seen[-20:]}"
                    )
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        text = line.decode(errors="replace")
        self.seen.append(text)
        return text

    def until(self, needle: str, seconds: float) -> list[str]:
        """Every line up to and including the first that contains `needle`."""
        import time

        deadline = time.monotonic() + seconds
        start = len(self.seen)
        while needle not in self.next(max(0.1, deadline - time.monotonic())):
            pass
        return self.seen[start:]


class Zygote:
    """A `tests/crash_writer.py` process: forks one writer per trial, which the test kills.

    `env` is added to the environment (object-store endpoints, XLA device count).
    """

    def __init__(self, process: int, processes: int, cwd: Path, env: dict[str, str]) -> None:
        import os
        import sys

        script = Path(__file__).with_name("crash_writer.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(process), str(processes)],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **env},
        )
        assert self.proc.stdout is not None
        self.output = LineReader(self.proc.stdout)

    def fork(self, directory: str, port: int = 0, command: str = "write") -> int:
        """Start a writer (or a checker) on `directory`; its pid."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command} {directory} {port}\n".encode())
        self.proc.stdin.flush()
        line = self.output.next(60)
        assert line.startswith("pid "), line
        return int(line.split()[1])

    def kill_and_reap(self, pid: int) -> int:
        """SIGKILL the writer (if still alive), wait until the zygote reaped it, and return
        the step it last began to save (0: none)."""
        import os
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.output.until("reaped", 60)
        for line in reversed(self.output.seen):
            if line.startswith("saving "):
                return int(line.split()[1])
            if line.startswith("pid "):
                break
        return 0

    def restarted_job(self, directory: str, *, read_only: bool = True) -> tuple[int, int]:
        """(step restored, step its values show) in a forked restarted job (read-only, or a
        writing job's `reopen`); AssertionError with the error's text if `restore()` raised."""
        self.fork(directory, command="check" if read_only else "reopen")
        line = self.output.until("checked", 120)[-1]
        self.output.until("reaped", 60)
        assert not line.startswith("checked error"), line
        _, step, stamped = line.split()
        return int(step), int(stamped)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@dataclasses.dataclass
class TrialCounts:
    """What a run of crash trials saw, printed at its end."""

    kind: str
    trials: int = 0
    mid_write: int = 0  # the kill left an unfinished step behind
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    restored: list[int] = dataclasses.field(default_factory=list)

    def outcome(self, name: str) -> None:
        self.outcomes[name] = self.outcomes.get(name, 0) + 1

    def report(self) -> str:
        return (
            f"crash trials ({self.kind}): {self.trials} trials; killed mid-write in "
            f"{self.mid_write}; outcomes {dict(sorted(self.outcomes.items()))}; restored steps "
            f"{self.restored}"
        )
