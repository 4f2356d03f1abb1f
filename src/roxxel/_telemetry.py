"""The figures of each save, and the `on_commit` callback that receives them.

A save has two halves seen from two threads: `save()` returns on the training thread (how
long it blocked), and Orbax's finalize thread sees the step commit (how long the whole save
took). `Telemetry` joins them, whichever comes second, into one `SaveStats`: it becomes
`Checkpointer.last_save`, joins a bounded history, is logged in one INFO line, and is handed to
the user's `on_commit` callback on a thread of its own, so that a slow or failing callback
never delays a commit or a `save()`. A callback's exception is logged with its traceback.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _lifecycle
from ._errors import InvalidArgumentError
from ._inspect import human_bytes

logger = logging.getLogger("roxxel")

HISTORY = 100
"""How many `SaveStats` `Checkpointer.save_history` holds (the newest)."""

OnCommit = Callable[["SaveStats"], Any]


@dataclasses.dataclass(frozen=True)
class SaveStats:
    """The figures of one committed save (`Checkpointer.last_save`, `save_history`).

    Attributes:
        step: the step saved.
        temporary: True for a temporary checkpoint (replaced by the next one).
        format: the array format written: 2 (Roxxel's files) or 1 (TensorStore: object
            stores, `compression=True`).
        size_bytes: bytes of array data this process saved (before compression).
        blocking_seconds: how long `save()` blocked the caller, including any wait for the
            previous save (one save is in flight at a time).
        commit_seconds: from the start of `save()` to the step being committed on storage
            (before old steps are deleted).
        throughput: `size_bytes / commit_seconds`, in bytes per second.
        committed_at: when the step was committed, seconds since the epoch.
    """

    step: int
    temporary: bool
    format: int
    size_bytes: int
    blocking_seconds: float
    commit_seconds: float
    throughput: float
    committed_at: float

    def as_dict(self) -> dict[str, int | float | bool]:
        """The figures as a flat dict of plain numbers (for JSON or an experiment tracker)."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for a log: step, size, time to commit, throughput, time blocked."""
        kind = " (temporary)" if self.temporary else ""
        return (
            f"step {self.step}{kind}: {human_bytes(self.size_bytes)} in "
            f"{self.commit_seconds:.3f} s ({human_bytes(int(self.throughput))}/s), save() "
            f"blocked {self.blocking_seconds * 1000:.1f} ms"
        )


def check_callback(on_commit: object) -> OnCommit | None:
    """Return `on_commit` if it is None or callable; raise at the call otherwise."""
    if on_commit is None or callable(on_commit):
        return on_commit  # type: ignore[return-value]
    raise InvalidArgumentError(
        f"on_commit must be a callable taking a SaveStats, or None, got {on_commit!r} (type "
        f"{type(on_commit).__name__}). Pass a function, e.g. on_commit=lambda stats: "
        "print(stats.as_dict()).",
        name="on_commit",
        value=on_commit,
    )


@dataclasses.dataclass
class _Pending:
    started: float  # perf_counter at the start of save()
    temporary: bool
    format: int
    size_bytes: int
    blocking_seconds: float | None = None
    committed: float | None = None  # perf_counter at the commit
    committed_at: float | None = None  # time.time() at the commit


class Telemetry:
    """Joins the two halves of every save into a `SaveStats`, and delivers it.

    Args:
        directory: the checkpoint directory (for the log line).
        on_commit: called with each `SaveStats` on the telemetry thread, or None.
    """

    def __init__(self, directory: str, on_commit: OnCommit | None) -> None:
        self.directory = directory
        self.on_commit = on_commit
        self.last: SaveStats | None = None
        self.history: collections.deque[SaveStats] = collections.deque(maxlen=HISTORY)
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._calls: queue.SimpleQueue[SaveStats | None] = queue.SimpleQueue()
        self._unfinished = 0  # callbacks queued or running
        self._done = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- the two halves
    def begin(self, step: int, *, started: float, temporary: bool, fmt: int, size: int) -> None:
        """A save of `step` is about to be handed to Orbax (training thread)."""
        with self._lock:
            self._pending[step] = _Pending(started, temporary, fmt, size)

    def returned(self, step: int, blocking_seconds: float) -> None:
        """`save()` of `step` returns after blocking this long (training thread)."""
        with self._lock:
            pending = self._pending.get(step)
            if pending is None:
                return
            pending.blocking_seconds = blocking_seconds
            stats = self._complete(step, pending)
        if stats is not None:
            self._deliver(stats)

    def abandon(self, step: int) -> None:
        """The save of `step` did not start: forget it."""
        with self._lock:
            self._pending.pop(step, None)

    def committed(self, step: int) -> None:
        """`step` is committed on storage (Orbax's finalize thread)."""
        now, wall = time.perf_counter(), time.time()
        with self._lock:
            pending = self._pending.get(step)
            if pending is None:
                return
            pending.committed, pending.committed_at = now, wall
            stats = self._complete(step, pending)
        if stats is not None:
            self._deliver(stats)

    def _complete(self, step: int, pending: _Pending) -> SaveStats | None:
        """The stats once both halves are known (called with the lock held)."""
        if pending.blocking_seconds is None or pending.committed is None:
            return None
        del self._pending[step]
        seconds = max(pending.committed - pending.started, 1e-9)
        stats = SaveStats(
            step=step,
            temporary=pending.temporary,
            format=pending.format,
            size_bytes=pending.size_bytes,
            blocking_seconds=pending.blocking_seconds,
            commit_seconds=seconds,
            throughput=pending.size_bytes / seconds,
            committed_at=pending.committed_at or time.time(),
        )
        self.last = stats
        self.history.append(stats)
        if self.on_commit is not None:
            self._unfinished += 1
        return stats

    # ---------------------------------------------------------------- delivery
    def _deliver(self, stats: SaveStats) -> None:
        logger.info("roxxel: committed %s, in %s", stats.summary(), self.directory)
        if self.on_commit is None:
            return
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="roxxel-on-commit", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # late in interpreter shutdown: no new threads
                self._call(stats)
                return
            self._thread = thread
        self._calls.put(stats)

    def _run(self) -> None:
        _lifecycle.signals_to_main_thread()
        while True:
            stats = self._calls.get()
            if stats is None:
                return
            self._call(stats)

    def _call(self, stats: SaveStats) -> None:
        assert self.on_commit is not None
        try:
            self.on_commit(stats)
        except Exception:
            logger.exception(
                "roxxel: the on_commit callback raised for step %d (the step is committed "
                "in %s; later commits still call it)",
                stats.step,
                self.directory,
            )
        finally:
            with self._done:
                self._unfinished -= 1
                self._done.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for queued callbacks; False if some are still due."""
        deadline = time.monotonic() + timeout
        with self._done:
            while self._unfinished > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True

    def close(self, timeout: float) -> None:
        """Deliver the queued callbacks (bounded by `timeout`), then end the thread."""
        if not self.flush(timeout):
            logger.warning(
                "roxxel: %d on_commit call(s) for %s did not finish within %g s; not waiting "
                "for them",
                self._unfinished,
                self.directory,
                timeout,
            )
        if self._thread is not None:
            self._calls.put(None)
            self._thread = None
