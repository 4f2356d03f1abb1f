"""Preemption agreed by every process of a multi-process JAX job.

`jax.distributed.initialize` starts JAX's preemption sync manager (on by default, config
`jax_enable_preemption_service`). It installs a C-level SIGTERM handler that Python does not
see (`signal.getsignal` still answers `SIG_DFL`); a SIGTERM to any one process is posted to
the coordination service, and every process's manager then agrees, in the background, on the
step after the highest step any process had reached. `reached_sync_point(step)`, called by
every process at every step, is True on all of them at that step. It costs about 0.3 us.

A Python SIGTERM handler installed after `initialize` replaces JAX's C handler, and the sync
point then never comes (measured: docs/design.md, "Preemption across processes"). So in a
multi-process job Roxxel leaves SIGTERM to JAX, and a notice from the user's own code is
reported the only way JAX's notifier accepts one: a SIGTERM to this process. No protocol of
our own, and no key of JAX's coordination service is written here.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import jax

from . import _lifecycle
from ._errors import PreemptionSyncError

logger = logging.getLogger("roxxel")

SYNC_STEP_LIMIT = 2**31
"""JAX's sync manager takes the step as a C `int`."""

_agreed_step: int | None = None
"""The step every process agreed to stop at (once agreed; JAX's protocol runs once a job)."""


def _sync_manager() -> Any:
    """JAX's preemption sync manager, or None when there is none (not distributed, disabled)."""
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover  JAX moved it: go by the config that starts it
        enabled = bool(getattr(jax.config, "jax_enable_preemption_service", False))
        return object() if enabled else None
    return getattr(distributed.global_state, "preemption_sync_manager", None)


def _sigterm_caught_below_python() -> bool | None:
    """Whether some handler is installed for SIGTERM at the C level (None: cannot tell)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except (OSError, ValueError):
        pass
    return None


def multi_process() -> bool:
    count: int = jax.process_count()
    return count > 1


def jax_notifier_active() -> bool:
    """True when a SIGTERM to this process reaches JAX's preemption notifier.

    That is: a multi-process job with JAX's preemption service on, and no Python handler
    installed over JAX's since (Roxxel's or the program's own).
    """
    if not multi_process() or _sync_manager() is None:
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    return _sigterm_caught_below_python() is not False


def install_sigterm_handler() -> bool:
    """Install Roxxel's SIGTERM handler, except where it would cut JAX's notifier off.

    Returns True if Roxxel's handler is installed.
    """
    if jax_notifier_active():
        logger.debug("roxxel: SIGTERM is left to JAX's preemption notifier (multi-process job)")
        return False
    return _lifecycle.install_sigterm_handler()


def reached(step: int) -> bool:
    """Collective: True on every process at the same step once any process got a notice.

    Every process must call it at every step, with the same steps. After the agreed step it
    keeps answering True.

    Raises:
        PreemptionSyncError: JAX's preemption service is off, or `step` is too large for it.
    """
    global _agreed_step
    if _agreed_step is not None:
        return True
    if step >= SYNC_STEP_LIMIT:
        raise PreemptionSyncError(
            f"step {step} is too large for JAX's preemption sync point, which takes steps "
            f"below 2**31 = {SYNC_STEP_LIMIT}. Pass a step counter that stays below it."
        )
    if _sync_manager() is None:
        raise PreemptionSyncError(_no_service_message("reached_preemption()"))
    from jax.experimental import multihost_utils

    try:
        if not multihost_utils.reached_preemption_sync_point(step):
            return False
    except RuntimeError as exc:  # the service was shut down or disabled
        raise PreemptionSyncError(
            f"{_no_service_message('reached_preemption()')} JAX said: {exc}"
        ) from exc
    _agreed_step = step
    logger.warning(
        "roxxel: every process agreed to stop at step %d after a preemption notice", step
    )
    return True


def notify() -> None:
    """Report a preemption notice to JAX's notifier, exactly as a scheduler's SIGTERM does.

    Raises:
        PreemptionSyncError: SIGTERM would not reach JAX's notifier in this process.
    """
    if _sync_manager() is None:
        raise PreemptionSyncError(_no_service_message("request_preemption()"))
    if not jax_notifier_active():
        raise PreemptionSyncError(
            "request_preemption() reports the notice through JAX's SIGTERM notifier, but a "
            f"Python SIGTERM handler ({signal.getsignal(signal.SIGTERM)!r}) was installed "
            "over it after jax.distributed.initialize(), so neither a SIGTERM nor this call "
            "reaches it. Remove that handler (signal.signal(signal.SIGTERM, signal.SIG_DFL) "
            "before jax.distributed.initialize() is not enough: install none afterwards)."
        )
    signal.raise_signal(signal.SIGTERM)


def _no_service_message(call: str) -> str:
    return (
        f"{call} in a multi-process job needs JAX's preemption sync manager, which "
        "jax.distributed.initialize() starts unless the jax_enable_preemption_service config "
        "is False. Leave that config at its default (True), and call "
        "jax.distributed.initialize() before creating the Checkpointer."
    )
