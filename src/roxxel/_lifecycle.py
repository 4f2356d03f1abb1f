"""Process lifecycle: commit in-flight saves at interpreter exit and on SIGTERM.

At exit, CPython's `threading._shutdown` first runs the callbacks registered with
`threading._register_atexit` (last registered first), then joins non-daemon threads, and only
then runs `atexit` callbacks. `concurrent.futures` shuts its executors down from one of those
threading callbacks; Orbax's background save still needs them, so a drain registered with
`atexit` comes too late (the save is lost and a later run may wait 300 s). The drain here is
registered with `threading._register_atexit` *after* `concurrent.futures.thread` has registered
its own, so it runs first and finishes every save while the executors still work.

SIGTERM's default action kills the process without any of this. `install_sigterm_handler`
replaces the default (and only the default) with a handler that records the request and, for
Checkpointers that asked to exit at once, raises `SystemExit(143)` so the drain runs.
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401  registers its exit hook before ours
import contextlib
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger("roxxel")

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
_DEFERRED = (signal.SIGINT, signal.SIGTERM)


class Drainable(Protocol):
    def _drain_at_exit(self) -> None: ...
    def _on_sigterm(self) -> bool: ...


_live: weakref.WeakSet[Drainable] = weakref.WeakSet()
# Checkpointers with a save in flight are also held strongly: a Checkpointer made inside a
# function that returns without close() must still be drained at exit, not collected first.
_held: set[Drainable] = set()
_lock = threading.Lock()
_registered = False
_handler_installed = False


def _drain() -> None:
    """Finish every live Checkpointer's saves; log (never raise) what fails.

    If a save timed out, Orbax's writer threads (and the executor workers that
    `concurrent.futures` joins at exit) may be stuck on storage that no longer answers, and
    CPython would join them forever after this hook. The process then ends here with status
    1 instead, skipping later exit handlers: the timeout bounds the exit too.
    """
    timed_out = False
    with _lock:
        checkpointers = list(set(_live) | _held)
    for checkpointer in checkpointers:
        try:
            checkpointer._drain_at_exit()
        except BaseException as exc:  # noqa: BLE001  an exit hook must not raise
            timed_out = timed_out or isinstance(exc, TimeoutError)
            logger.error("roxxel: a checkpoint could not be committed at exit: %s", exc)
            print(f"roxxel: a checkpoint could not be committed at exit: {exc}", file=sys.stderr)
    if timed_out:
        print(
            "roxxel: exiting now, without waiting for writer threads stuck on the storage",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(1)


def _register_exit_hook() -> None:
    global _registered
    if _registered:
        return
    register: Callable[[Callable[[], None]], None]
    try:
        register = threading._register_atexit  # type: ignore[attr-defined]
        register(_drain)
    except (AttributeError, RuntimeError):
        # Not CPython >= 3.9, or shutdown has begun: atexit is the best that is left.
        import atexit

        atexit.register(_drain)
    _registered = True


def track(checkpointer: Drainable) -> None:
    """Drain `checkpointer` at interpreter exit (it is held weakly)."""
    with _lock:
        _register_exit_hook()
        _live.add(checkpointer)


def untrack(checkpointer: Drainable) -> None:
    with _lock:
        _live.discard(checkpointer)
        _held.discard(checkpointer)


def hold(checkpointer: Drainable, pending: bool) -> None:
    """Keep `checkpointer` alive while it has a save in flight (`pending`), weakly otherwise."""
    with _lock:
        if pending:
            _held.add(checkpointer)
        else:
            _held.discard(checkpointer)


def _handle_sigterm(signum: int, frame: FrameType | None) -> None:
    exit_now = False
    for checkpointer in list(_live):
        exit_now = checkpointer._on_sigterm() or exit_now
    if exit_now or not _live:
        logger.warning("roxxel: SIGTERM received; committing in-flight saves, then exiting")
        raise SystemExit(SIGTERM_EXIT_CODE)
    logger.warning("roxxel: SIGTERM received; the training loop was asked to stop")


def install_sigterm_handler() -> bool:
    """Install the SIGTERM handler if SIGTERM still has its default action.

    Returns True if Roxxel's handler is (now) installed. Only the main thread can install
    signal handlers; elsewhere, and when the program set its own handler, nothing changes.
    """
    global _handler_installed
    if _handler_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _handle_sigterm)
    _handler_installed = True
    return True


def signals_to_main_thread() -> None:
    """Block SIGINT and SIGTERM in the calling (background) thread, and so in the threads it
    starts (Orbax's commit and metadata threads inherit the mask).

    The kernel hands a process-directed signal to any thread that does not block it. CPython
    runs the Python handler in the main thread, but a main thread blocked in a C call (say
    `time.sleep(120)`) is woken only when the signal lands on it: landing on a background
    thread, a SIGTERM waited until the sleep ended (seen as a 120 s "hang" in the SIGTERM
    test, once in 16 trials on a loaded host). Every thread Roxxel starts calls this first.
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Deliver SIGINT (KeyboardInterrupt) and SIGTERM only once the block has run.

    Python runs signal handlers in the main thread between any two bytecodes, so a Ctrl-C can
    land between two steps that must happen together (an old step renamed aside and the save
    that replaces it being tracked; a save marked in flight and queued). While the block runs,
    a Python handler of either signal is replaced by one that records the signal; the original
    handler is then called with it. Blocks must be short or bounded (Roxxel's are bounded by
    `timeout`). Outside the main thread, and for signals without a Python handler, nothing
    changes. Nested blocks deliver at the outermost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []

    def record(signum: int, frame: FrameType | None) -> None:
        caught.append((signum, frame))

    previous: dict[int, Callable[[int, FrameType | None], Any]] = {}
    try:
        for signum in _DEFERRED:
            handler = signal.getsignal(signum)
            if callable(handler):
                previous[signum] = handler
                signal.signal(signum, record)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for number, frame in caught:
            if number in previous:
                previous[number](number, frame)
