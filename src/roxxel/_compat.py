"""`Checkpointer.mngr`: the part of Orbax's `CheckpointManager` that code written against the
documentation page's source of the Checkpointer uses, answered by the Checkpointer itself.

The page shows `self.mngr = ocp.CheckpointManager(...)`, so code written against it calls
`checkpointer.mngr.wait_until_finished()` and reads `checkpointer.mngr.latest_step()`,
`all_steps()` and `best_step()`. `PageManager` answers exactly those (and `close()`) by
delegating to the Checkpointer's public methods, so its answers are the Checkpointer's: the
newest committed step, only steps still on disk after retention, the best *finite* metric.

It never hands out Orbax's manager: Roxxel writes its own array format, runs its own
retention and restores into the live model, and an Orbax `save`, `restore` or `delete` on the
same folder would bypass all of that. Every other name of Orbax's `CheckpointManager` API
raises `UnavailableManagerAPIError` (an `AttributeError`), whose message names the Roxxel call
to make instead. This module imports no Orbax (only `_orbax.py` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from ._errors import RoxxelError

if TYPE_CHECKING:
    from ._checkpointer import Checkpointer

__all__ = ["PageManager", "UnavailableManagerAPIError", "SUPPORTED", "UNAVAILABLE"]

SUPPORTED = ("wait_until_finished", "latest_step", "all_steps", "best_step", "close")
"""The `CheckpointManager` methods `Checkpointer.mngr` answers."""

_NOT_ORBAX = "checkpointer.mngr is Roxxel's compatibility view, not Orbax's CheckpointManager"

# name -> (is a method, why it is not offered, what to use instead). The keys are every public
# name of Orbax 0.12's `CheckpointManager` besides SUPPORTED (tests/test_page_compat.py checks
# this against the installed Orbax).
UNAVAILABLE: dict[str, tuple[bool, str, str]] = {
    "save": (
        True,
        "Roxxel writes its own array format, checksums and retention",
        "call checkpointer.save(step, metrics_dict) instead",
    ),
    "restore": (
        True,
        "Roxxel restores into the live model and optimizer in place, not into a returned tree",
        "call checkpointer.restore() (the newest step), checkpointer.restore(step) or "
        "checkpointer.restore(best=True) instead",
    ),
    "item_metadata": (
        True,
        "Roxxel's checkpoints are not Orbax items",
        "call checkpointer.plan_restore(step) for the saved leaves against the current model, "
        "or run `roxxel show <checkpoint_path>` instead",
    ),
    "metadata": (
        True,
        "Roxxel's checkpoints are not Orbax items",
        "call checkpointer.metrics(step) for a step's metrics, or "
        "checkpointer.plan_restore(step) for its leaves, instead",
    ),
    "metrics": (
        True,
        "Roxxel keeps the metrics of its own checkpoints",
        "call checkpointer.metrics(step) instead",
    ),
    "delete": (
        True,
        "Roxxel's retention deletes old steps (never the newest or the best)",
        "pass max_to_keep=, keep_best= or keep_every= to Checkpointer(...), or replace a step "
        "with checkpointer.save(step, metrics_dict, overwrite=True) instead",
    ),
    "directory": (
        False,
        _NOT_ORBAX,
        "read checkpointer.checkpoint_path (the absolute local folder, or the URL) instead",
    ),
    "reload": (
        True,
        "Roxxel reads the directory on every call",
        "call checkpointer.all_steps() instead",
    ),
    "should_save": (
        True,
        "Roxxel's save policy belongs to the Checkpointer",
        "create the Checkpointer with save_every=N or save_interval_s=T and call "
        "checkpointer.should_save(step), or just checkpointer.save(step, metrics_dict), "
        "which returns False when no save is due, instead",
    ),
    "reached_preemption": (
        True,
        "the Checkpointer answers it itself",
        "call checkpointer.reached_preemption(step) instead (with on_sigterm='flag', then "
        "checkpointer.final_save(step, metrics_dict))",
    ),
    "check_for_errors": (
        True,
        _NOT_ORBAX,
        "call checkpointer.wait_until_finished() instead (it raises BackgroundWriteError if "
        "the save in flight failed)",
    ),
    "is_saving_in_progress": (
        True,
        _NOT_ORBAX,
        "call checkpointer.wait_until_finished() to wait for the save in flight instead",
    ),
}


class UnavailableManagerAPIError(RoxxelError, AttributeError):
    """A name of Orbax's `CheckpointManager` that `Checkpointer.mngr` does not offer.

    Attributes:
        name: the name asked for, e.g. "save".
        instead: what to use instead, e.g. "call checkpointer.save(step, metrics_dict) instead".
    """

    def __init__(self, message: str, *, name: str, instead: str) -> None:
        super().__init__(message)
        self.name = name
        self.instead = instead


class PageManager:
    """`Checkpointer.mngr`: Orbax `CheckpointManager` calls the documentation page's code makes.

    A compatibility surface for code written against the page that shows the Checkpointer's
    source; new code calls the Checkpointer's own methods. Each method delegates to the
    Checkpointer, so the answers are the same; after `close()`, calls other than `close()`
    raise `CheckpointerClosedError` as the Checkpointer's do. Every other name of Orbax's
    `CheckpointManager` API raises `UnavailableManagerAPIError`, naming the Roxxel call to use.
    """

    __slots__ = ("_checkpointer",)

    def __init__(self, checkpointer: Checkpointer) -> None:
        self._checkpointer = checkpointer

    def wait_until_finished(self) -> None:
        """`checkpointer.wait_until_finished()`: block until the save in flight is committed.

        Raises:
            BackgroundWriteError: the save failed; the step is not on disk.
            TimeoutError: it did not finish within the Checkpointer's `timeout`.
        """
        self._checkpointer.wait_until_finished()

    def latest_step(self) -> int | None:
        """`checkpointer.latest_step()`: the newest committed step, or None."""
        return self._checkpointer.latest_step()

    def all_steps(self, read: bool = False) -> Sequence[int]:
        """`checkpointer.all_steps()`: every committed step on disk, ascending.

        Args:
            read: accepted for Orbax's signature; the directory is always read.
        """
        return self._checkpointer.all_steps()

    def best_step(self) -> int | None:
        """`checkpointer.best_step()`: the step with the best finite `best_metric`, or None.

        NaN and infinite metrics are never best. Unlike Orbax, a Checkpointer without a
        `best_metric` has no best step (None), rather than answering the latest one.
        """
        return self._checkpointer.best_step()

    def close(self) -> None:
        """`checkpointer.close()`: commit the save in flight and close the Checkpointer.

        Raises:
            BackgroundWriteError: the last save failed; it is not on disk.
        """
        self._checkpointer.close()

    def __getattr__(self, name: str) -> NoReturn:
        # Only names not found on the class arrive here.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise _unavailable(name)

    def __repr__(self) -> str:
        return f"<Checkpointer.mngr, a compatibility view of {self._checkpointer!r}>"


def _unavailable(name: str) -> UnavailableManagerAPIError:
    offered = ", ".join(f"{n}()" for n in SUPPORTED)
    known = UNAVAILABLE.get(name)
    if known is None:
        called = f"Checkpointer.mngr.{name}"
        why = f"{_NOT_ORBAX}; it offers only {offered}"
        instead = (
            "use the Checkpointer's own methods and attributes instead (checkpointer.save, "
            "restore, all_steps, metrics, checkpoint_path, ...; see the API page)"
        )
    else:
        is_method, why, instead = known
        called = f"Checkpointer.mngr.{name}{'()' if is_method else ''}"
    return UnavailableManagerAPIError(
        f"{called} is not available: {why}; {instead}.", name=name, instead=instead
    )
