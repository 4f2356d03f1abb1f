"""Every error Roxxel raises, in one hierarchy.

```
RoxxelError
├── CheckpointPathError (ValueError)        the checkpoint directory is unusable
├── InvalidArgumentError (ValueError)       a bad value passed to a call
│   └── InvalidStepError                    a step that is not a non-negative integer
├── StepExistsError (FileExistsError)       saving a step that is already on disk
├── StepOrderError (ValueError)             saving a step below the latest one
├── StepNotFoundError (FileNotFoundError)   restoring a step that is not on disk
├── NoCheckpointError (FileNotFoundError)   asking for the best step where none is
├── RestoreMismatchError (ValueError)       saved leaves that cannot go into the current model
├── BackgroundWriteError (RuntimeError)     a background save failed
│   └── PromotionError                      a promotion to the remote tier failed
├── CheckpointerClosedError (RuntimeError)  a call after `close()`
├── StorageUnreachableError (ConnectionError) the object store's endpoint does not answer
├── CorruptCheckpointError (ValueError)     a step's files fail their checksums or cannot be parsed
├── CheckpointLockedError (RuntimeError)    another process is writing to the directory
├── ReadOnlyError (PermissionError)         a save on a read-only Checkpointer
├── PreemptionSyncError (RuntimeError)      JAX's preemption sync point is unavailable
├── WeightsFileError (ValueError)           a weights file that is not (whole) safetensors
└── UnavailableManagerAPIError (AttributeError)  `checkpointer.mngr`'s refusals (in _compat)
```

Each error subclasses the builtin a user would already catch, and each message says what was
wrong, which value or path it was, and what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._restore import RestoreReport

__all__ = [
    "BackgroundWriteError",
    "CheckpointPathError",
    "CheckpointerClosedError",
    "CheckpointLockedError",
    "CorruptCheckpointError",
    "InvalidArgumentError",
    "InvalidStepError",
    "NoCheckpointError",
    "PreemptionSyncError",
    "PromotionError",
    "ReadOnlyError",
    "RestoreMismatchError",
    "RoxxelError",
    "StepExistsError",
    "StepNotFoundError",
    "StepOrderError",
    "StorageUnreachableError",
    "WeightsFileError",
]


PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RecursionError,
    OverflowError,
    AssertionError,
)
"""What a parser raises on malformed content (an OSError is the storage, not the content)."""


class RoxxelError(Exception):
    """Base class of every error Roxxel raises."""


class CheckpointPathError(RoxxelError, ValueError):
    """The checkpoint directory cannot be used: it is a file, or cannot be created or written."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class InvalidArgumentError(RoxxelError, ValueError):
    """An argument has the wrong type or value."""

    def __init__(self, message: str, *, name: str, value: object) -> None:
        super().__init__(message)
        self.name = name
        self.value = value


class InvalidStepError(InvalidArgumentError):
    """A step that is not a non-negative integer."""


class StepExistsError(RoxxelError, FileExistsError):
    """A save of a step that is already committed on disk."""

    def __init__(self, message: str, *, step: int) -> None:
        super().__init__(message)
        self.step = step


class StepOrderError(RoxxelError, ValueError):
    """A save of a step lower than the latest committed one."""

    def __init__(self, message: str, *, step: int, latest: int) -> None:
        super().__init__(message)
        self.step = step
        self.latest = latest


class StepNotFoundError(RoxxelError, FileNotFoundError):
    """A restore of a step that is not committed on disk."""

    def __init__(self, message: str, *, step: int, available: list[int]) -> None:
        super().__init__(message)
        self.step = step
        self.available = available


class NoCheckpointError(RoxxelError, FileNotFoundError):
    """A request that needs a checkpoint (or one with metrics) where there is none."""


class RestoreMismatchError(RoxxelError, ValueError):
    """Saved leaves whose shape does not fit the current model; nothing was changed.

    `.mismatched` maps each such path to `(saved shape, current shape)`; `.report` is the whole
    `RestoreReport` of the refused restore (`applied` is False).
    """

    def __init__(
        self,
        message: str,
        *,
        mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
        report: RestoreReport | None = None,
    ) -> None:
        super().__init__(message)
        self.mismatched = mismatched
        self.report = report


class BackgroundWriteError(RoxxelError, RuntimeError):
    """A save that was running in the background failed; the step is not on disk."""

    def __init__(self, message: str, *, step: int | None) -> None:
        super().__init__(message)
        self.step = step


class PromotionError(BackgroundWriteError):
    """Promoting a committed local step to the remote tier failed; the local step is intact."""


class CheckpointerClosedError(RoxxelError, RuntimeError):
    """A call on a Checkpointer after `close()`."""


class StorageUnreachableError(RoxxelError, ConnectionError):
    """The endpoint of a `gs://` or `s3://` checkpoint directory did not answer."""

    def __init__(self, message: str, *, path: str, endpoint: str) -> None:
        super().__init__(message)
        self.path = path
        self.endpoint = endpoint


class CorruptCheckpointError(RoxxelError, ValueError):
    """A committed step whose files are damaged: a checksum, size or parse failure.

    Attributes:
        step: the step that is damaged (None when the directory as a whole cannot be read).
        path: the step's folder (or the directory).
        problems: one line per damaged file, naming it and what is wrong.
    """

    def __init__(
        self, message: str, *, step: int | None, path: str, problems: tuple[str, ...]
    ) -> None:
        super().__init__(message)
        self.step = step
        self.path = path
        self.problems = problems


class CheckpointLockedError(RoxxelError, RuntimeError):
    """Another live process holds the writer lock of the checkpoint directory.

    Attributes:
        path: the lock file.
        host: the host name of the holder.
        pid: its process id.
    """

    def __init__(self, message: str, *, path: str, host: str, pid: int) -> None:
        super().__init__(message)
        self.path = path
        self.host = host
        self.pid = pid


class ReadOnlyError(RoxxelError, PermissionError):
    """A save or delete on a Checkpointer opened with `read_only=True`."""


class PreemptionSyncError(RoxxelError, RuntimeError):
    """In a multi-process job, processes cannot agree on a step to stop at.

    JAX's preemption sync manager is off (`jax_enable_preemption_service=False`), or a
    SIGTERM cannot reach its notifier.
    """


class WeightsFileError(RoxxelError, ValueError):
    """A weights file `load_weights` cannot read: not a safetensors file, truncated, or
    holding a dtype or key it cannot use. Nothing was changed.

    Attributes:
        path: the file.
        problem: what is wrong with it, in a few words.
    """

    def __init__(self, message: str, *, path: str, problem: str) -> None:
        super().__init__(message)
        self.path = path
        self.problem = problem
