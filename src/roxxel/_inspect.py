"""Reading a checkpoint directory without a model: `roxxel.open` and the `roxxel` command.

`CheckpointDir` (what `roxxel.open(path)` returns) opens a directory read-only and answers the
questions a person asks of it: which steps are committed (by `_directory.scan`, the one
reading the Checkpointer and `verify` share), which saves never finished, which folders are
not Roxxel's, their metrics, sizes and commit times, the best step, the saved leaves of a step
(path, shape, dtype, bytes, from metadata only), and the arrays themselves as NumPy.

Nothing here writes to the directory. JAX and Orbax are imported only when a directory is
opened, so that `roxxel verify` (which needs neither) starts fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import _directory, _layout, _paths, _validate
from ._errors import CheckpointPathError, NoCheckpointError
from ._retention import Retention, best_step

if TYPE_CHECKING:
    from ._state import LeafSpec


_PYTHON_WORDING = _directory.Wording(step="step=N", newest="step=None")


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
        layout: "roxxel", "orbax" (written by Orbax alone: read for migration), or "ignored"
            (a folder named like a step that is not a checkpoint; `note` says why).
        note: why an ignored folder is ignored.
        temporary: True for a step saved as temporary (deleted once a newer step commits).
    """

    step: int
    committed: bool
    name: str
    metrics: Mapping[str, float] | None
    size_bytes: int | None
    committed_at: float | None
    best: bool = False
    latest: bool = False
    layout: str = "roxxel"
    note: str = ""
    temporary: bool = False


def leaf_bytes(spec: LeafSpec) -> int:
    """Bytes of one saved leaf, uncompressed."""
    import jax

    return math.prod(spec.shape) * int(np.dtype(jax.numpy.dtype(spec.dtype)).itemsize)


def no_checkpoint_error(directory: str) -> NoCheckpointError:
    """The error for a directory without a committed step, saying what the folder holds."""
    return _directory.no_checkpoint_error(_directory.scan(directory))


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
        with open(os.path.join(path, _layout.CHECKPOINT_METADATA)) as f:
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
    def listing(self) -> _directory.Listing:
        """What the directory holds now."""
        return self._store.listing()

    @property
    def steps(self) -> list[int]:
        """Committed steps, ascending (steps of layouts Roxxel migrates from included)."""
        return self.listing().steps

    @property
    def latest(self) -> int | None:
        """The newest committed step, or None."""
        steps = self.steps
        return steps[-1] if steps else None

    @property
    def best(self) -> int | None:
        """The committed permanent step with the best finite `best_metric`, or None."""
        return best_step(
            self._store.checkpoints(), self.retention, temporary=self._store.temporary_steps()
        )

    def incomplete(self) -> list[tuple[int | None, str]]:
        """`(step, folder name)` of saves that never committed."""
        return list(self.listing().pending)

    def entries(self) -> list[StepEntry]:
        """Every committed step, every incomplete save and every ignored folder, by step."""
        listing = self.listing()
        checkpoints = self._store.checkpoints()
        temporary = {step for step, _ in checkpoints if self._store.is_temporary(step)}
        best = best_step(checkpoints, self.retention, temporary=temporary)
        latest = checkpoints[-1][0] if checkpoints else None
        result = []
        for step, metrics in checkpoints:
            folder = listing.folder(step)
            name = str(step) if folder is None else (folder.name or ".")
            path = listing.path(step)
            result.append(
                StepEntry(
                    step=step,
                    committed=True,
                    name=name,
                    metrics=metrics,
                    size_bytes=_folder_size(path) if self.is_local else None,
                    committed_at=_commit_time(path) if self.is_local else None,
                    best=step == best,
                    latest=step == latest,
                    layout="roxxel" if folder is None else folder.layout,
                    temporary=step in temporary,
                )
            )
        for step_or_none, name in listing.pending:
            path = _directory.join(self.directory, name)
            result.append(
                StepEntry(
                    step=-1 if step_or_none is None else step_or_none,
                    committed=False,
                    name=name,
                    metrics=None,
                    size_bytes=_folder_size(path) if self.is_local else None,
                    committed_at=None,
                )
            )
        for ignored in listing.ignored:
            result.append(
                StepEntry(
                    step=int(ignored.name) if ignored.name.isdigit() else -1,
                    committed=False,
                    name=ignored.name,
                    metrics=None,
                    size_bytes=None,
                    committed_at=None,
                    layout="ignored",
                    note=ignored.reason,
                )
            )
        return sorted(result, key=lambda e: (e.step, not e.committed, e.name))

    def require_checkpoints(self) -> list[int]:
        """The committed steps; raises NoCheckpointError when there is none."""
        listing = self.listing()
        if not listing.steps:
            raise _directory.no_checkpoint_error(listing)
        return listing.steps

    def choose_step(
        self,
        step: int | None,
        *,
        best: bool = False,
        wording: _directory.Wording = _directory.CLI_WORDING,
    ) -> int:
        """Resolve `--step N` / `--best` / neither (the newest) to a committed step."""
        listing = self.listing()
        chosen = _directory.choose_step(
            listing,
            step=step,
            best=best,
            best_metric=self.retention.best_metric,
            best_step=lambda: self.best,
            wording=wording,
        )
        if chosen is None:
            raise _directory.no_checkpoint_error(listing)
        return chosen

    def _step(self, step: int | None) -> int:
        """`step` checked against the committed steps (None: the newest)."""
        if step is not None:
            step = _validate.step(step)
        return self.choose_step(step, wording=_PYTHON_WORDING)

    # ------------------------------------------------------------------ leaves
    def metrics(self, step: int | None = None) -> dict[str, float]:
        """The metrics saved with `step` (default: the newest); `{}` when it has none."""
        return dict(self._store.metrics(self._step(step)) or {})

    def leaf_specs(self, step: int) -> dict[str, LeafSpec]:
        """Path -> shape/dtype of every saved leaf of `step`, sorted by path."""
        specs = self._store.leaf_specs(step)
        return {path: specs[path] for path in sorted(specs)}

    def specs(self, step: int | None = None) -> dict[str, tuple[tuple[int, ...], str]]:
        """`{leaf name: (shape, dtype name)}` of `step` (default: the newest), from metadata.

        Names are Roxxel's: `model/<path>` and `optimizer/<path>`, as in a restore report.
        String leaves have the dtype "str".
        """
        from ._state import STRING

        return {
            path: (spec.shape, "str" if spec.dtype == STRING else spec.dtype)
            for path, spec in self.leaf_specs(self._step(step)).items()
        }

    def read(self, name: str, step: int | None = None) -> np.ndarray[Any, Any]:
        """One saved leaf of `step` (default: the newest) as a NumPy array.

        Only that leaf's bytes are read. A string leaf comes back as a 0-d array of `str`.

        Raises:
            KeyError: no leaf of that name (the message lists the names that are close).
        """
        chosen = self._step(step)
        specs = self._store.leaf_specs(chosen)
        if name not in specs:
            close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.5)
            hint = f" Did you mean {close}?" if close else ""
            raise KeyError(
                f"step {chosen} in {self.directory} has no leaf {name!r}.{hint} "
                f"specs(step={chosen}) lists its {len(specs)} leaves."
            )
        return next(iter(self.read_chunks(chosen, [name])))[name]

    def to_dict(self, step: int | None = None) -> dict[str, Any]:
        """Every saved leaf of `step` (default: the newest), as a nested dict of NumPy arrays.

        `to_dict()["model"]["linear"]["kernel"]` is the leaf `model/linear/kernel`.
        """
        from ._state import nest

        chosen = self._step(step)
        flat: dict[str, Any] = {}
        for chunk in self.read_chunks(chosen, self.leaf_specs(chosen)):
            flat.update(chunk)
        return nest(flat)

    def extras(self, step: int | None = None) -> dict[str, tuple[str, Any]]:
        """The extras saved with `step` (default: the newest): `{name: (kind, state)}`, read
        without running anything.

        `state` is the saved JSON state of a config, Grain iterator, `get_state()` object or
        Generator (as `restore()` would set it); None for array extras, whose leaves are the
        `extras/<name>/...` paths of `leaf_specs`. Steps saved without extras give `{}`.
        """
        from . import _extras

        step = self._step(step)
        if self._store.foreign(step) is not None:
            return {}
        kinds = self._store.meta(step).get("extras", {})
        states = self._store.extras(step) if kinds else {}
        where = self.listing().path(step)
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

        from ._format import _np_dtype
        from ._state import STRING

        specs = self._store.leaf_specs(step)
        chunk: list[str] = []
        size = 0
        wanted = [path for path in paths if path in specs]
        for index, path in enumerate(wanted):
            chunk.append(path)
            size += 0 if specs[path].dtype == STRING else leaf_bytes(specs[path])
            if size < chunk_bytes and index + 1 < len(wanted):
                continue
            # Host (NumPy) targets: a JAX array would narrow 64-bit leaves to 32 bits (x64 is
            # off by default), and the file would not hold the bytes its header promises.
            targets = {
                p: ""
                if specs[p].dtype == STRING
                else jax.ShapeDtypeStruct(specs[p].shape, _np_dtype(specs[p].dtype))  # type: ignore[no-untyped-call]
                for p in chunk
            }
            arrays = self._store.read(step, targets)
            yield {p: np.asarray(arrays[p]) for p in chunk}
            chunk, size = [], 0


def open_checkpoints(
    path: str | os.PathLike[str],
    *,
    best_metric: str | None = "loss",
    best_mode: Literal["min", "max"] = "min",
) -> CheckpointDir:
    """Open a checkpoint directory read-only, without the model's code.

    Works on any directory a Checkpointer wrote (local, `gs://` or `s3://`), and on those of
    the layouts Roxxel migrates from (Orbax's CheckpointManager with one PyTree item, or one
    `StandardCheckpointer` folder), in a process with any number of devices.

    Args:
        path: the folder (or URL) given to `Checkpointer(checkpoint_path=...)`.
        best_metric: the metric that ranks steps for `.best` (None: no best step).
        best_mode: "min" if a lower `best_metric` is better, "max" if a higher one is.

    Example:
        ```python norun
        ckpt = roxxel.open("runs/exp1")
        ckpt.steps, ckpt.latest, ckpt.best      # [700, 800, 900], 900, 700
        kernel = ckpt.read("model/linear/kernel")
        ```

    Raises:
        CheckpointPathError: the folder does not exist or is not a folder.
    """
    return CheckpointDir(os.fspath(path), best_metric=best_metric, best_mode=best_mode)


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
