"""Reading a checkpoint directory without a model: what the `roxxel` command shows.

`CheckpointDir` opens a directory read-only and answers the questions a person asks of it:
which steps are committed and which saves never finished (`<step>.orbax-checkpoint-tmp*`
folders), their metrics, sizes and commit times, the best step, the saved leaves of a step
(path, shape, dtype, bytes, from metadata only), and the arrays themselves for export.

Nothing here writes to the directory. JAX and Orbax are imported only when a directory is
opened, so that `roxxel verify` (which needs neither) starts fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import _paths
from ._errors import CheckpointPathError, NoCheckpointError, StepNotFoundError
from ._retention import Retention, best_step

if TYPE_CHECKING:
    from ._state import LeafSpec

_TMP_MARKER = ".orbax-checkpoint-tmp"
_LEADING_STEP = re.compile(r"^(\d+)")


@dataclasses.dataclass(frozen=True)
class StepEntry:
    """One checkpoint folder: a committed step, or a save that never finished.

    Attributes:
        step: the step number (parsed from the folder name for an incomplete save).
        committed: False for a `<step>.orbax-checkpoint-tmp*` folder left by an interrupted save.
        name: the folder name inside the checkpoint directory.
        metrics: the metrics saved with the step (None when none, or when incomplete).
        size_bytes: bytes on disk (None for cloud storage).
        committed_at: commit time, seconds since the epoch (None when unknown).
        best: True for the best step by the chosen metric.
        latest: True for the newest committed step.
    """

    step: int
    committed: bool
    name: str
    metrics: Mapping[str, float] | None
    size_bytes: int | None
    committed_at: float | None
    best: bool = False
    latest: bool = False


def leaf_bytes(spec: LeafSpec) -> int:
    """Bytes of one saved leaf, uncompressed."""
    import jax

    return math.prod(spec.shape) * int(np.dtype(jax.numpy.dtype(spec.dtype)).itemsize)


def no_checkpoint_error(directory: str) -> NoCheckpointError:
    """The error for a directory without a committed step, saying what the folder holds."""
    detail = "it is empty"
    if not _paths.is_url(directory):
        names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
        pending = [name for name in names if _TMP_MARKER in name]
        if pending:
            detail = (
                f"it holds only saves that never finished: {pending} (the training "
                "process stopped before committing them)"
            )
        elif os.path.exists(os.path.join(directory, "_CHECKPOINT_METADATA")):
            parent = os.path.dirname(directory)
            detail = f"it looks like one step's folder; pass its parent {parent!r}"
        elif names:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            detail = f"it holds no step folders, only: {shown}"
    return NoCheckpointError(
        f"no committed checkpoint in {directory}: {detail}. Pass the folder given to "
        "Checkpointer(checkpoint_path=...)."
    )


def _folder_size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _commit_time(path: str) -> float | None:
    """The commit time Orbax records in `_CHECKPOINT_METADATA`, else the folder's mtime."""
    try:
        with open(os.path.join(path, "_CHECKPOINT_METADATA")) as f:
            nanos = json.load(f).get("commit_timestamp_nsecs")
        if isinstance(nanos, int) and nanos > 0:
            return nanos / 1e9
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


class CheckpointDir:
    """A checkpoint directory opened for reading only.

    Args:
        directory: the folder (or URL) given to `Checkpointer(checkpoint_path=...)`.
        best_metric: the metric that ranks steps for `best` (None: no best step).
        best_mode: "min" if a lower `best_metric` is better, "max" if a higher one is.

    Raises:
        CheckpointPathError: the folder does not exist or is not a folder.
    """

    def __init__(
        self,
        directory: str,
        *,
        best_metric: str | None = "loss",
        best_mode: Literal["min", "max"] = "min",
    ) -> None:
        self.directory = _paths.resolve(directory, create=False)
        self.is_local = not _paths.is_url(self.directory)
        if self.is_local and not os.path.isdir(self.directory):
            raise CheckpointPathError(
                f"checkpoint directory {self.directory!r} does not exist. Pass the folder "
                "given to Checkpointer(checkpoint_path=...); it holds one folder per step.",
                path=self.directory,
            )
        self.retention = Retention(
            max_to_keep=None, keep_best=0, best_metric=best_metric, best_mode=best_mode
        )
        from ._orbax import Store

        self._store = Store(
            self.directory, self.retention, timeout=60, read_only=True, compression=False
        )

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> CheckpointDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ listing
    def steps(self) -> list[int]:
        """Committed steps, ascending."""
        return self._store.all_steps()

    def incomplete(self) -> list[tuple[int | None, str]]:
        """`(step, folder name)` of saves that never committed (local folders only)."""
        if not self.is_local:
            return []
        found: list[tuple[int | None, str]] = []
        for entry in os.scandir(self.directory):
            if _TMP_MARKER in entry.name and entry.is_dir(follow_symlinks=False):
                match = _LEADING_STEP.match(entry.name)
                found.append((int(match.group(1)) if match else None, entry.name))
        return sorted(found, key=lambda item: (item[0] is None, item[0] or 0, item[1]))

    def best_step(self) -> int | None:
        """The committed step with the best finite metric, or None."""
        return best_step(self._store.checkpoints(), self.retention)

    def entries(self) -> list[StepEntry]:
        """Every committed step and every incomplete save, by step."""
        checkpoints = self._store.checkpoints()
        best = best_step(checkpoints, self.retention)
        latest = checkpoints[-1][0] if checkpoints else None
        result = []
        for step, metrics in checkpoints:
            path = os.path.join(self.directory, str(step))
            result.append(
                StepEntry(
                    step=step,
                    committed=True,
                    name=str(step),
                    metrics=metrics,
                    size_bytes=_folder_size(path) if self.is_local else None,
                    committed_at=_commit_time(path) if self.is_local else None,
                    best=step == best,
                    latest=step == latest,
                )
            )
        for step_or_none, name in self.incomplete():
            path = os.path.join(self.directory, name)
            result.append(
                StepEntry(
                    step=-1 if step_or_none is None else step_or_none,
                    committed=False,
                    name=name,
                    metrics=None,
                    size_bytes=_folder_size(path),
                    committed_at=None,
                )
            )
        return sorted(result, key=lambda e: (e.step, not e.committed))

    def require_checkpoints(self) -> list[int]:
        """The committed steps; raises NoCheckpointError when there is none."""
        steps = self.steps()
        if not steps:
            raise no_checkpoint_error(self.directory)
        return steps

    def choose_step(self, step: int | None, *, best: bool = False) -> int:
        """Resolve `--step N` / `--best` / neither (the newest) to a committed step."""
        steps = self.require_checkpoints()
        if best:
            if self.retention.best_metric is None:
                raise NoCheckpointError(
                    f"--best needs a metric to rank the checkpoints of {self.directory}, and "
                    f"none was named (steps: {steps}). Name it with --best-metric NAME (e.g. "
                    "--best-metric loss), or pick a step with --step N."
                )
            chosen = self.best_step()
            if chosen is None:
                raise NoCheckpointError(
                    f"no checkpoint in {self.directory} has a finite "
                    f"{self.retention.best_metric!r} metric (steps: {steps}). Pick a step "
                    "with --step N, or name the metric that ranks them with --best-metric."
                )
            return chosen
        if step is None:
            return steps[-1]
        if step not in steps:
            pending = [name for s, name in self.incomplete() if s == step]
            extra = (
                f" Step {step} was being saved but never committed ({pending[0]})."
                if pending
                else ""
            )
            raise StepNotFoundError(
                f"step {step} is not a committed checkpoint in {self.directory}; the steps "
                f"there are {steps}.{extra}",
                step=step,
                available=steps,
            )
        return step

    # ------------------------------------------------------------------ leaves
    def metrics(self, step: int) -> dict[str, float] | None:
        return self._store.metrics(step)

    def leaf_specs(self, step: int) -> dict[str, LeafSpec]:
        """Path -> shape/dtype of every saved leaf of `step`, sorted by path."""
        specs = self._store.leaf_specs(step)
        return {path: specs[path] for path in sorted(specs)}

    def extras(self, step: int) -> dict[str, tuple[str, Any]]:
        """The extras saved with `step`: `{name: (kind, state)}`, read without running anything.

        `state` is the saved JSON state of a config, Grain iterator, `get_state()` object or
        Generator (as `restore()` would set it); None for array extras, whose leaves are the
        `extras/<name>/...` paths of `leaf_specs`. Steps saved without extras give `{}`.
        """
        from . import _extras

        kinds = self._store.meta(step).get("extras", {})
        states = self._store.extras(step) if kinds else {}
        where = os.path.join(self.directory, str(step))
        return {
            str(name): (
                str(kind),
                _extras.decode_saved(states[name], step=step, name=name, path=where)
                if name in states
                else None,
            )
            for name, kind in kinds.items()
        }

    def read_chunks(
        self, step: int, paths: Iterable[str], *, chunk_bytes: int = 64 << 20
    ) -> Iterator[dict[str, np.ndarray[Any, Any]]]:
        """The saved arrays of `paths`, as NumPy, in path order, about `chunk_bytes` at a time.

        Reading in chunks bounds host memory on an export of a large checkpoint and lets the
        caller show progress. Paths that the step does not hold are skipped.
        """
        import jax

        specs = self._store.leaf_specs(step)
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        chunk: list[str] = []
        size = 0
        wanted = [path for path in paths if path in specs]
        for index, path in enumerate(wanted):
            chunk.append(path)
            size += leaf_bytes(specs[path])
            if size < chunk_bytes and index + 1 < len(wanted):
                continue
            targets = {
                p: jax.ShapeDtypeStruct(  # type: ignore[no-untyped-call]
                    specs[p].shape, jax.numpy.dtype(specs[p].dtype), sharding=sharding
                )
                for p in chunk
            }
            arrays = self._store.read(step, targets)
            yield {p: np.asarray(arrays[p]) for p in chunk}
            chunk, size = [], 0


def age(seconds_since_epoch: float | None, *, now: float | None = None) -> str:
    """A short human age: `42s`, `5m`, `3h`, `2d`."""
    if seconds_since_epoch is None:
        return "-"
    delta = max(0.0, (time.time() if now is None else now) - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit}"
    return f"{int(delta)}s"


def human_bytes(size: int | None) -> str:
    """`1.5 MiB` style sizes; `-` when unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
