"""Every call into Orbax lives here: one `Store` per checkpoint directory.

The Store owns an Orbax `CheckpointManager` configured for Roxxel:

* retention is decided by `_retention.steps_to_keep` through a preservation policy, so the
  newest checkpoints and the best ones are both kept (Orbax's `best_fn` + `max_to_keep` would
  keep only the best and delete the newest);
* metrics are always written beside each step, so retention works across restarts;
* directories are created synchronously inside the background save (Orbax's asynchronous
  directory creation can leave a 300 s wait behind at interpreter exit);
* the arrays are written by Roxxel's own handler (`_ArrayHandler`, format in `_format`):
  Orbax keeps the step folder, the atomic commit, metrics, retention and the multi-process
  barriers; steps written by Roxxel 0.1.0 (TensorStore, item `state`) are still read through
  Orbax's `PyTreeCheckpointHandler`;
* `CheckpointManager.save()` runs on a background thread, so `save()` blocks only for the
  snapshot (`_format.snapshot`), never for Orbax's fixed cost per call;
* an overwritten step is set aside (`_overwrite`) until the new one has committed, and the
  writing Stores of one directory in one process never remove each other's saves in flight
  (`remove_partial`, `wait_for_others`).

Nothing outside this module imports `orbax`, except `_storage`, which routes `s3://` paths
inside Orbax's TensorStore layer for reading 0.1.0 steps (`Store._open` picks commit-file
atomicity for object stores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from . import (
    _directory,
    _format,
    _integrity,
    _layout,
    _lifecycle,
    _migrate,
    _overwrite,
    _paths,
    _storage,
)
from ._errors import PARSE_ERRORS, CorruptCheckpointError, RoxxelError
from ._extras import ARRAY_KINDS
from ._retention import Retention, steps_to_keep
from ._state import STRING, LeafSpec, flatten, nest

logger = logging.getLogger("roxxel")


class _DropReadOnlyNotices(logging.Filter):
    """Orbax's absl warnings that are not news: two on every read-only open (`read_only=True`
    is the caller's choice), and one on every read of a PyTree item folder of a migrated step
    (such a folder never has step metadata of its own)."""

    _PREFIXES = (
        "CheckpointManagerOptions.read_only=True, setting save_interval_steps=0",
        "Given directory is read only=",
        "Metadata file does not exist:",
        "Failed to get item metadata from directory",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self._PREFIXES)


logging.getLogger("absl").addFilter(_DropReadOnlyNotices())

STATE_ITEM = _layout.STATE_ITEM
"""The item of Roxxel 0.1.0 (format 1): a PyTree written by Orbax through TensorStore."""
ARRAYS_ITEM = _layout.ARRAYS_ITEM
"""The item of format 2: Roxxel's own flat files and index (`_format`)."""
META_ITEM = _layout.META_ITEM
EXTRAS_ITEM = _layout.EXTRAS_ITEM
"""The JSON states of a step's non-array extras (`_extras.capture`), beside `META_ITEM`."""
FORMAT_VERSION = _format.FORMAT
_TMP_MARKER = _layout.TMP_MARKER
# Retention moves a step here with one rename, then Roxxel empties it: a crash in the middle
# of a deletion never leaves a half-deleted folder that looks like a committed step.
TRASH = _layout.TRASH
# `save(step, overwrite=True)` sets the old step aside as `<step>.roxxel-replaced` and deletes it
# only once the new one has committed; a writer that finds it with no `<step>` puts it back.
REPLACED = _layout.REPLACED

# The writing Stores of each local directory in this process. Several Checkpointers on one
# directory share its writer lock (a notebook cell run twice), so each must leave the others'
# saves in flight alone: `remove_partial` skips their folders, a new one waits for them.
_writers_guard = threading.Lock()
_writers: dict[str, weakref.WeakSet[Store]] = {}


def run_bounded(call: Callable[[], Any], *, timeout: float, name: str) -> threading.Thread | None:
    """Run `call` on a daemon thread and wait at most `timeout` seconds; re-raise its error.

    Returns the thread that ran `call`; if it is still alive, time ran out (the caller raises
    its own TimeoutError). A daemon thread, so a call stuck on storage does not
    keep the process from exiting. Late in interpreter shutdown no thread can start; `call`
    then runs here, unbounded but sure.
    """
    outcome: list[BaseException] = []

    def run() -> None:
        _lifecycle.signals_to_main_thread()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001  handed to the caller below
            outcome.append(exc)

    worker = threading.Thread(target=run, name=name, daemon=True)
    try:
        worker.start()
    except RuntimeError:
        call()
        return None
    worker.join(timeout)
    if outcome:
        raise outcome[0]
    return worker


class _RetentionPolicy:
    """An Orbax preservation policy that defers to `_retention.steps_to_keep`.

    Orbax asks it when a save starts (the new step included) and deletes what it does not
    keep after that step commits: a temporary step is replaced, never lost.
    """

    def __init__(
        self,
        retention: Retention,
        is_temporary: Callable[[int], bool],
        pinned: Callable[[], Collection[int]] = lambda: (),
    ) -> None:
        self.retention = retention
        self.is_temporary = is_temporary
        self.pinned = pinned  # steps kept whatever the rules say (a promotion reading them)

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        temporary = {c.step for c in checkpoints if self.is_temporary(c.step)}
        keep = steps_to_keep(
            [(c.step, c.metrics) for c in checkpoints], self.retention, temporary=temporary
        )
        keep.update(self.pinned())
        return [c.step in keep for c in checkpoints]


class _ArrayHandler(ocp.AsyncCheckpointHandler):  # type: ignore[misc]  # no stubs
    """Orbax's hook for Roxxel's array format: `async_save` hands the snapshot to a writer.

    Orbax calls it inside the step's temporary folder (`<step>.orbax-checkpoint-tmp/arrays`,
    created before the call) and commits the step once the returned future is done. Reading
    goes around Orbax (`Store.read` calls `_format` directly): Orbax's restore adds nothing.
    """

    def __init__(self, *, process_records: bool = False) -> None:
        self.last: _format.Written | None = None
        # In a multi-process job each process records its own files (`_integrity`), here,
        # on its commit thread, once they are written and before Orbax's barrier.
        self.process_records = process_records

    async def async_save(self, directory: Any, args: _ArraysSave) -> list[Any]:
        async def write() -> None:
            self.save(directory, args)

        return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="roxxel_write")]

    def save(self, directory: Any, args: _ArraysSave) -> None:
        self.last = _format.write(str(directory), args.snapshot)
        if self.process_records:
            _integrity.record_process(str(directory), jax.process_index())

    def restore(self, directory: Any, args: Any = None) -> Any:
        raise NotImplementedError("Roxxel reads its array format through Store.read")

    def metadata(self, directory: Any) -> Any:
        return None

    def finalize(self, directory: Any) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(_ArrayHandler, for_save=True)  # type: ignore[misc]
@dataclasses.dataclass
class _ArraysSave(ocp.args.CheckpointArgs):  # type: ignore[misc]
    snapshot: _format.Snapshot


@ocp.args.register_with_handler(_ArrayHandler, for_restore=True)  # type: ignore[misc]
@dataclasses.dataclass
class _ArraysRestore(ocp.args.CheckpointArgs):  # type: ignore[misc]
    """Registered because Orbax requires a pair; Roxxel reads around Orbax (`Store.read`)."""


def _meta(version: int, meta: Mapping[str, Any], temporary: bool) -> dict[str, Any]:
    """A step's META_ITEM record; `"temporary": true` only on temporary steps."""
    record = {"format": version, **meta}
    if temporary:
        record["temporary"] = True
    return record


def _extras_item(states: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Orbax item of a step's extras' JSON states (none when there are none)."""
    return {EXTRAS_ITEM: ocp.args.JsonSave(dict(states))} if states else {}


def _ranking_value(retention: Retention) -> Any:
    """Orbax's `best_fn`: must be set for metrics to be written; never ranks NaN as best."""
    worst = math.inf if retention.best_mode == "min" else -math.inf

    def best_fn(metrics: Mapping[str, float]) -> float:
        if retention.best_metric is None:
            return 0.0
        value = metrics.get(retention.best_metric, worst)
        return float(value) if math.isfinite(value) else worst

    return best_fn


def _written_by_roxxel(directory: str, name: str) -> bool:
    found = _directory.classify(directory, name)
    return isinstance(found, _layout.StepFolder) and found.layout == "roxxel"


class _RoxxelSteps(ocp.step.NameFormat):  # type: ignore[misc]  # no stubs
    """Orbax's standard step names, listing only the steps Roxxel wrote (`_directory`).

    Orbax counts every folder named by a number as a step. With this name format the manager
    never sees a folder Roxxel did not write (a Hydra job folder `0/`, plots in `7/`, a step of
    the page's sketch): it does not fail on their metadata, and retention never deletes them.
    Steps of the layouts Roxxel migrates from are read beside the manager (`Store.read`).
    """

    def __init__(self, directory: str, atomicity: Any, *, asides: bool = False) -> None:
        self._directory = directory
        self._standard = ocp.step.standard_name_format(atomicity_options=atomicity)
        # A reader's manager also lists a step from its aside (`_directory.scan`, `asides`).
        self._asides = asides

    def build_name(self, step: int) -> str:
        return str(self._standard.build_name(step))

    def find_all(self, base_path: Any) -> Iterator[Any]:
        found: set[int] = set()
        for metadata in self._standard.find_all(base_path):
            if _written_by_roxxel(self._directory, metadata.path.name):
                found.add(metadata.step)
                yield metadata
        if self._asides:
            for folder in _directory.scan(self._directory, asides=True).folders:
                if folder.step not in found and folder.name == _layout.aside_name(folder.step):
                    yield ocp.step.Metadata(step=folder.step, path=base_path / folder.name)

    def find_step(self, base_path: Any, step: int) -> Any:
        try:
            metadata = self._standard.find_step(base_path, step)
        except ValueError:
            aside = _layout.aside_name(step)
            if self._asides and _directory.classify_aside(self._directory, aside) is not None:
                return ocp.step.Metadata(step=step, path=base_path / aside)
            raise
        if not _written_by_roxxel(self._directory, metadata.path.name):
            raise ValueError(f"step folder {metadata.path} was not written by Roxxel")
        return metadata

    def __str__(self) -> str:
        return f"RoxxelSteps({self._standard})"


class _Manager(ocp.CheckpointManager):  # type: ignore[misc]  # Orbax ships no stubs
    """Orbax's manager, reading each step's metrics file defensively.

    Orbax 0.12.8 reads every step's `metrics/metrics` JSON when it opens a directory and on
    every reload, and lets anything but a missing file escape: one damaged or hostile metrics
    file would make the whole directory unopenable. Here such a file counts as "no metrics"
    (logged), which retention already handles.

    Private Orbax methods overridden: `_finalize` (empty the trash after deletions),
    `_finalize_checkpoint` (report the commit: Orbax calls it on its finalize thread only
    once the step's commit thread finished without error, before old steps are deleted) and
    `_get_metrics`.
    """

    # Set by Store: empties TRASH right after Orbax moved the deleted steps there.
    after_delete: Callable[[], None] | None = None
    # Set by Store: told the step as soon as it is committed (on Orbax's finalize thread).
    after_commit: Callable[[int], None] | None = None

    def _finalize_checkpoint(self, step: int) -> None:
        super()._finalize_checkpoint(step)
        if self.after_commit is not None:
            self.after_commit(step)

    def _finalize(self, step: int, steps_to_remove: list[int]) -> None:
        super()._finalize(step, steps_to_remove)  # on Orbax's save_finalize thread
        if steps_to_remove and self.after_delete is not None:
            self.after_delete()

    def delete(self, step: int) -> None:
        super().delete(step)
        if self.after_delete is not None:
            self.after_delete()

    def _get_metrics(self, step: int) -> Any:
        try:
            value = super()._get_metrics(step)
        except (ValueError, TypeError, OSError, RecursionError) as exc:
            logger.warning("roxxel: ignoring the unreadable metrics of step %d: %s", step, exc)
            return None
        if value is None:
            return None
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) for k, v in value.items()
        ):
            logger.warning("roxxel: ignoring the malformed metrics of step %d: %.200r", step, value)
            return None
        return value


def _step_of(name: str) -> int | None:
    """The step a folder name of Roxxel's or Orbax's belongs to (`12`, `12.orbax-...`)."""
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else None


class Store:
    """A checkpoint directory seen through Orbax."""

    def __init__(
        self,
        directory: str,
        retention: Retention,
        *,
        timeout: float,
        read_only: bool,
        compression: bool,
    ) -> None:
        self.directory = directory
        self.retention = retention
        self.timeout = timeout
        self.read_only = read_only
        # zstd costs 2-5x save throughput on a 2-core host for ~7.6% less space on float
        # weights (docs/design.md, "compression"), so it is off unless asked for.
        self.compression = compression
        _storage.prepare(directory, timeout=timeout)
        # Content checksums (`_integrity`), locally and on object stores; the step's record is
        # written by the primary process, each process's own array files by that process.
        self.verifies_checksums = True
        self.records_checksums = not read_only
        self._saving_step: int | None = None
        self._worker = threading.Thread()  # the last `_bounded` call (a finished placeholder)
        self._save_error: BaseException | None = None  # from the background `save` thread
        self._meta_memo: tuple[tuple[int, int, int, int], dict[str, Any]] | None = None
        self._foreign: dict[int, _layout.StepFolder] = {}
        # Read-only: steps listed from an overwrite's aside (`_directory.scan`, `asides`).
        self._asides: dict[int, _layout.StepFolder] = {}
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = threading.Event()  # set while the saver thread has nothing to do
        self._idle.set()
        self._saver: threading.Thread | None = None
        self._array_handler = _ArrayHandler(
            process_records=self.records_checksums and jax.process_count() > 1
        )
        # step -> saved as temporary (read from each step's META_ITEM once, then kept).
        self._temporary: dict[int, bool] = {}
        self._temporary_lock = threading.Lock()
        self.on_commit: Callable[[int], None] | None = None  # set by the Checkpointer
        # Steps retention must keep for now (set by a two-tier Checkpointer: being promoted).
        self.pinned: Callable[[], Collection[int]] = lambda: ()
        # The format new steps are written in: Roxxel's files locally, TensorStore on object
        # stores (see `save_tree`) and when zstd compression is asked for (format 2 has none).
        self.array_format = (
            1 if _storage.is_object_store(directory) or compression else FORMAT_VERSION
        )
        self._replacing: int | None = None  # the step an overwrite set aside (REPLACED)
        with self._parsing(None):
            self._manager = self._open()
        if not read_only and not _paths.is_url(directory):
            with _writers_guard:
                _writers.setdefault(directory, weakref.WeakSet()).add(self)
        if not read_only:
            self.temporary_steps()  # known before retention first runs, off Orbax's threads

    def _open(self) -> ocp.CheckpointManager:
        atomicity = (
            ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE)
            if _storage.is_object_store(self.directory)
            else None
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_RetentionPolicy(
                self.retention, self.is_temporary, lambda: self.pinned()
            ),
            best_fn=_ranking_value(self.retention),
            best_mode=self.retention.best_mode,
            create=not self.read_only,
            read_only=self.read_only,
            async_options=ocp.AsyncOptions(
                timeout_secs=max(1, math.ceil(self.timeout)),
                create_directories_asynchronously=False,
                post_finalization_callback=(
                    self._record_checksums if self.records_checksums else None
                ),
            ),
            todelete_subdir=(
                TRASH if not _paths.is_url(self.directory) and not self.read_only else None
            ),
            # Object stores cannot rename a folder: commit with commit_success.txt instead.
            atomicity_options=atomicity,
            step_name_format=_RoxxelSteps(self.directory, atomicity, asides=self.read_only),
        )
        manager = _Manager(
            self.directory,
            options=options,
            item_handlers={
                ARRAYS_ITEM: self._array_handler,
                STATE_ITEM: ocp.PyTreeCheckpointHandler(use_compression=self.compression),
                META_ITEM: ocp.JsonCheckpointHandler(),
                EXTRAS_ITEM: ocp.JsonCheckpointHandler(),
            },
        )
        if options.todelete_subdir is not None:
            manager.after_delete = self.empty_trash
        manager.after_commit = self._committed
        return manager

    def _committed(self, step: int) -> None:
        """Orbax's finalize thread: `step` is committed. A failing hook never fails the save."""
        hook = self.on_commit
        if hook is None:
            return
        try:
            hook(step)
        except Exception:  # the step is committed; the hook's failure is only reported
            logger.exception("roxxel: reporting the commit of step %d failed", step)

    # ----------------------------------------------------------------- what is on disk
    def listing(self) -> _directory.Listing:
        """What the directory holds now (`_directory.scan`), with the manager kept in step.

        The manager lists Roxxel's steps only (`_RoxxelSteps`); it re-reads the directory only
        when the Roxxel steps on disk differ from the ones it knows: Orbax's `reload()`
        re-reads every step's metadata on helper threads (10-30 ms on a busy 2-core host, a
        third of what `save()` blocks; benchmarks/README.md, B1).
        """
        listing = _directory.scan(self.directory, asides=self.read_only)
        self._foreign = {f.step: f for f in listing.folders if f.layout != "roxxel"}
        self._asides = {
            f.step: f for f in listing.folders if f.layout == "roxxel" and f.name != str(f.step)
        }
        ours = {f.step for f in listing.folders if f.layout == "roxxel"}
        with self._parsing(None):
            if ours != set(self._manager.all_steps()):
                self._manager.reload()
        return listing

    def all_steps(self) -> list[int]:
        """Committed steps Roxxel wrote, ascending, as they are on disk now."""
        return [f.step for f in self.listing().folders if f.layout == "roxxel"]

    def foreign(self, step: int) -> _layout.StepFolder | None:
        """The folder of `step` when it was written by Orbax alone (as of the last listing)."""
        return self._foreign.get(step)

    @contextlib.contextmanager
    def _parsing(self, step: int | None) -> Iterator[None]:
        """Turn a failure to parse a step's metadata into `CorruptCheckpointError`.

        Orbax reports malformed metadata with whatever its parser raised (KeyError, TypeError,
        ValueError, ...); OSErrors (the storage itself failing) pass through unchanged.
        """
        try:
            yield
        except RoxxelError:
            raise
        except PARSE_ERRORS as exc:
            where = self.directory if step is None else self.step_dir(step)
            what = "the checkpoint directory" if step is None else f"step {step}"
            problem = f"{type(exc).__name__}: {str(exc)[:500]}"
            folder = None if step is None else self.foreign(step)
            if folder is not None:
                item = "/".join(p for p in (folder.name, folder.item) if p) or "."
                raise CorruptCheckpointError(
                    f"step {step} in {self.directory} was written by Orbax without Roxxel (its "
                    f"PyTree is {item}), and that PyTree cannot be read: it is damaged or "
                    f"incomplete ({problem}). Nothing was restored. To fix: restore another "
                    "step with restore(step=N), or check the folder with Orbax itself.",
                    step=step,
                    path=where,
                    problems=(problem,),
                ) from exc
            raise CorruptCheckpointError(
                f"{what} in {self.directory} cannot be read: its metadata is malformed or was "
                f"not written by Roxxel ({problem}). Nothing was restored. To fix: 1) restore "
                "another step with restore(step=N); 2) run `roxxel verify` on the directory; "
                "3) move the damaged step folder away.",
                step=step,
                path=where,
                problems=(problem,),
            ) from exc

    def metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved with `step`, or None if it has none."""
        folder = self.foreign(step)
        if folder is not None:
            return _foreign_metrics(self.directory, folder)
        try:
            value = self._manager.metrics(step)
        except (FileNotFoundError, ValueError, OSError):
            return None
        if value is None:
            return None
        return {str(k): float(v) for k, v in dict(value).items()}

    def checkpoints(self) -> list[tuple[int, dict[str, float] | None]]:
        """`(step, metrics)` for every committed step (migrated layouts too), ascending."""
        return [(step, self.metrics(step)) for step in self.listing().steps]

    def is_temporary(self, step: int) -> bool:
        """Whether `step` was saved as temporary (recorded in its META_ITEM).

        Known for the steps this Store saved; read once for the others (a local step's small
        JSON file directly, so that Orbax's threads may ask too). Unreadable: permanent, the
        rule that deletes less.
        """
        with self._temporary_lock:
            known = self._temporary.get(step)
        if known is not None:
            return known
        temporary = self._read_temporary(step)
        with self._temporary_lock:
            self._temporary[step] = temporary
        return temporary

    def _read_temporary(self, step: int) -> bool:
        if _paths.is_url(self.directory):
            try:
                return self.meta(step).get("temporary") is True
            except Exception:  # noqa: BLE001  unreadable: counted as permanent
                return False
        try:
            with open(os.path.join(self.step_dir(step), META_ITEM, "metadata"), "rb") as f:
                meta = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            return False
        return isinstance(meta, Mapping) and meta.get("temporary") is True

    def temporary_steps(self) -> set[int]:
        """The committed steps saved as temporary."""
        return {step for step in self.all_steps() if self.is_temporary(step)}

    def format_of(self, step: int) -> int:
        """The format of a committed step: 2 (Roxxel's files), 1 (0.1.0, TensorStore) or 0
        (a PyTree written by Orbax alone, read for migration)."""
        if self.foreign(step) is not None:
            return 0
        version = self.meta(step).get("format", 1)
        return version if isinstance(version, int) and not isinstance(version, bool) else 1

    def index(self, step: int) -> _format.Index:
        """The array index of a format-2 step (checked before any array is allocated)."""
        directory = _directory.join(self.step_dir(step), ARRAYS_ITEM)
        try:
            return _format.load_index(directory, local=not _paths.is_url(self.directory))
        except CorruptCheckpointError as exc:
            exc.step = step
            raise
        except FileNotFoundError as exc:
            raise CorruptCheckpointError(
                f"step {step} in {self.directory} says it is in Roxxel's format {FORMAT_VERSION} "
                f"but its {ARRAYS_ITEM}/ folder is missing ({exc}). Nothing was restored. To "
                "fix: restore another step with restore(step=N), or run `roxxel verify`.",
                step=step,
                path=directory,
                problems=(f"{ARRAYS_ITEM}/: missing",),
            ) from exc

    def leaf_specs(self, step: int) -> dict[str, LeafSpec]:
        """Shape and dtype of every saved leaf of `step`, read from metadata (no array data)."""
        folder = self.foreign(step)
        if folder is not None:
            with self._parsing(step):
                saved = _tree_specs(self._foreign_item(folder))
            return {name: saved[path] for name, path in _migrate.roxxel_names(saved).items()}
        meta = self.meta(step)
        keys: Mapping[str, str] = meta.get("keys", {}) if meta else {}
        if self.format_of(step) >= 2:
            return {
                path: LeafSpec((), STRING)
                if leaf.is_string
                else LeafSpec(leaf.shape, leaf.dtype, keys.get(path))
                for path, leaf in self.index(step).leaves.items()
            }
        with self._parsing(step):
            metadata = self._manager.item_metadata(step)
            tree = metadata[STATE_ITEM]
            tree = getattr(tree, "tree", tree)
            specs: dict[str, LeafSpec] = {}
            for path, leaf in flatten(tree).items():
                if getattr(leaf, "shape", None) is None:  # a string (StringMetadata)
                    specs[path] = LeafSpec((), STRING)
                    continue
                specs[path] = LeafSpec(
                    tuple(int(d) for d in leaf.shape), str(np.dtype(leaf.dtype)), keys.get(path)
                )
            return specs

    def meta(self, step: int) -> dict[str, Any]:
        """Roxxel's own record of a step (format version, PRNG key implementations).

        A restore asks for it three times (specs, format, read): the last answer is kept for
        a local step whose file is unchanged (same inode, size and mtime), which saves two
        reads through Orbax (1.8 ms each here).
        """
        key = self._meta_key(step)
        if key is not None and self._meta_memo is not None and self._meta_memo[0] == key:
            return dict(self._meta_memo[1])
        with self._parsing(step):
            result = self._manager.restore(
                step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
            )
            meta = result[META_ITEM] or {}
            if not isinstance(meta, Mapping) or not all(
                isinstance(meta.get(field, {}), Mapping)
                and all(isinstance(v, str) for v in meta.get(field, {}).values())
                for field in ("keys", "extras")
            ):
                raise TypeError(f"{META_ITEM}/metadata is not a Roxxel record: {meta!r:.200}")
        self._meta_memo = None if key is None else (key, dict(meta))
        return dict(meta)

    def extras(self, step: int) -> dict[str, Any]:
        """The JSON states of `step`'s non-array extras (`{}` when it saved none)."""
        kinds = self.meta(step).get("extras", {}).values()
        if all(kind in ARRAY_KINDS for kind in kinds):
            return {}
        with self._parsing(step):
            result = self._manager.restore(
                step, args=ocp.args.Composite(**{EXTRAS_ITEM: ocp.args.JsonRestore()})
            )
            states = result[EXTRAS_ITEM]
            if not isinstance(states, Mapping):
                raise TypeError(f"{EXTRAS_ITEM}/metadata is not a mapping: {states!r:.200}")
        return dict(states)

    def _meta_key(self, step: int) -> tuple[int, int, int, int] | None:
        """What identifies the content of a local step's metadata file, or None."""
        if _paths.is_url(self.directory):
            return None
        try:
            info = os.stat(os.path.join(self.step_dir(step), META_ITEM, "metadata"))
        except OSError:
            return None
        return (step, info.st_ino, info.st_size, info.st_mtime_ns)

    # ----------------------------------------------------------------------- writing
    def save(
        self,
        step: int,
        snap: _format.Snapshot,
        meta: Mapping[str, Any],
        metrics: Mapping[str, float] | None,
        extras: Mapping[str, Any] | None = None,
        *,
        temporary: bool = False,
    ) -> None:
        """Start saving `snap` as `step` (format 2, `array_format == 2`) and return at once.

        `extras` (JSON values, see `_extras.capture`) is written as the step's `extras` item,
        committed with the arrays or not at all.

        Orbax's `CheckpointManager.save()` (folder creation, metadata, starting the commit
        thread: 20-40 ms on a busy 2-core host, more with many leaves) runs on a daemon thread;
        its error, if any, is raised by the next `wait()`.
        """
        args = ocp.args.Composite(
            **{
                ARRAYS_ITEM: _ArraysSave(snap),
                META_ITEM: ocp.args.JsonSave(_meta(FORMAT_VERSION, meta, temporary)),
                **_extras_item(extras),
            }
        )
        self._set_temporary(step, temporary)
        with _writers_guard:  # seen in flight by `remove_partial` from here on
            self._saving_step = step
            self._idle.clear()
        self._save_error = None
        metrics = dict(metrics or {})

        def call() -> None:
            self._manager.save(step, args=args, metrics=metrics, force=True)

        def start() -> None:
            try:
                call()
            except BaseException as exc:  # noqa: BLE001  raised by the next wait()
                self._save_error = exc

        if jax.process_count() > 1:
            # Orbax's save() runs collectives (broadcasts of the step's metadata) that every
            # process must issue in the same order as the training step's own; from a
            # background thread they interleave differently per process and deadlock (seen
            # with a 2-process job). So here it stays on the caller's thread, bounded.
            try:
                self._bounded(call, f"starting to save step {step}")
            finally:
                self._idle.set()  # a call still running keeps `_worker` alive
            return
        if self._saver is None:
            saver = threading.Thread(target=self._run_saves, name="roxxel-save", daemon=True)
            try:
                saver.start()
            except RuntimeError:  # late in interpreter shutdown: no new threads
                start()
                self._idle.set()
                return
            self._saver = saver
        self._jobs.put(start)

    def save_tree(
        self,
        step: int,
        tree: Mapping[str, Any],
        meta: Mapping[str, Any],
        metrics: Mapping[str, float] | None,
        extras: Mapping[str, Any] | None = None,
        *,
        temporary: bool = False,
    ) -> None:
        """Start saving `tree` in format 1 (TensorStore through Orbax): object stores, and
        `compression=True` (zstd, which format 2 does not offer).

        Measured on the local S3 and GCS servers (`benchmarks/object_store.py`, 96 MB),
        TensorStore's parallel uploads committed 1.4-2.1x sooner than format 2's streamed
        files, so object stores keep it. Orbax copies the arrays to the host inside its
        `save()`, so the call stays on the caller's thread (bounded by `timeout`): a later
        training step may donate the buffers.
        """
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.PyTreeSave(nest(tree)),
                META_ITEM: ocp.args.JsonSave(_meta(1, meta, temporary)),
                **_extras_item(extras),
            }
        )
        self._set_temporary(step, temporary)
        with _writers_guard:  # seen in flight by `remove_partial` from here on
            self._saving_step = step
            self._idle.clear()
        self._save_error = None
        try:
            self._bounded(
                lambda: self._manager.save(
                    step, args=args, metrics=dict(metrics or {}), force=True
                ),
                f"starting to save step {step}",
            )
        finally:
            self._idle.set()  # a call still running keeps `_worker` alive

    def _run_saves(self) -> None:
        """The Store's saver thread: one long-lived daemon thread, so that `save()` does not
        pay for starting a thread (1-2 ms on a busy 2-core host)."""
        _lifecycle.signals_to_main_thread()
        while True:
            job = self._jobs.get()
            if job is None:  # `close()`: the thread ends with its Store
                return
            try:
                job()
            finally:
                self._idle.set()

    def _bounded(self, call: Callable[[], Any], what: str) -> None:
        """Run `call` with `run_bounded`, failing with TimeoutError after `timeout` seconds.

        Orbax creates the step folder and copies arrays to the host on the caller's thread; on
        storage that stops answering (a frozen or hung filesystem) that never returns.
        """
        worker = run_bounded(call, timeout=self.timeout, name="roxxel-orbax-call")
        if worker is not None:
            self._worker = worker
        if worker is not None and worker.is_alive():
            raise TimeoutError(
                f"{what} in {self.directory} did not finish within timeout={self.timeout:g} s: "
                "the storage does not accept writes (frozen, hung or unreachable). The step is "
                "not committed. Check the storage, or raise timeout= if it is only slow."
            )

    def step_dir(self, step: int) -> str:
        """The folder of a committed step."""
        folder = self.foreign(step) or self._asides.get(step)
        return _directory.join(self.directory, str(step) if folder is None else folder.name)

    def source(self, step: int) -> str:
        """Who wrote `step`: "roxxel", or the Orbax layout read for migration, in words."""
        folder = self.foreign(step)
        if folder is None:
            return "roxxel"
        with self._parsing(step):
            saved = _tree_specs(self._foreign_item(folder))
        where = "/".join(part for part in (folder.name, folder.item) if part) or "."
        return f"orbax: {_migrate.describe(saved)} in {where}"

    def _foreign_item(self, folder: _layout.StepFolder) -> str:
        return _directory.join(self.directory, folder.name, folder.item)

    def _record_checksums(self) -> None:
        """Orbax's hook on the primary's commit thread, after every process's files are written
        (Orbax's barrier), before the rename (or, on object stores, the commit marker).

        A step is committed only with its record: when the record cannot be written, this
        raises, Orbax skips the commit, and the save fails with that error (`BackgroundWriteError`
        from the next call). A step that commits unverifiable would pass a crash unnoticed.
        """
        step = self._saving_step
        object_store = _storage.is_object_store(self.directory)
        candidates: list[str] = []
        if step is not None and object_store:  # commit-file atomicity: written in place
            candidates = [self.step_dir(step)]
        elif step is not None:
            prefix = f"{step}{_TMP_MARKER}"
            candidates = [e.path for e in os.scandir(self.directory) if e.name.startswith(prefix)]
        if step is None or len(candidates) != 1:
            raise RuntimeError(
                f"the checksums of step {step} were not written: its unfinished folder was not "
                f"found in {self.directory} (found {candidates}), so the step is not committed"
            )
        try:
            # Orbax writes `_CHECKPOINT_METADATA` through its metadata store's own thread: the
            # record must read it after that write (on a store that was briefly down, it read
            # the version of an earlier attempt at the step without this wait).
            metadata_store = getattr(
                getattr(self._manager, "_checkpointer", None), "_metadata_store", None
            )
            if metadata_store is not None:
                metadata_store.wait_until_finished()
            _integrity.record(
                candidates[0],
                process_records=(
                    jax.process_count()
                    if self._array_handler.process_records and self.array_format >= 2
                    else 0
                ),
                commit_marker=self.step_dir(step),  # Orbax writes it, then commits
            )
        except Exception as exc:
            raise RuntimeError(
                f"the checksums of step {step} could not be written ({type(exc).__name__}: "
                f"{exc}), so the step is not committed"
            ) from exc

    def _set_temporary(self, step: int, temporary: bool) -> None:
        """Known before Orbax's save starts: retention is asked then, the new step included."""
        with self._temporary_lock:
            self._temporary[step] = temporary

    def delete(self, step: int) -> None:
        """Delete a committed step."""
        self._manager.delete(step)
        with self._temporary_lock:
            self._temporary.pop(step, None)

    def set_aside(self, step: int) -> None:
        """Make room for a new `step` (an overwrite) without losing the old one yet.

        The old step becomes `<step>.roxxel-replaced` (`_overwrite`: a rename locally, a
        server-side copy with its commit marker last on object stores); `remove_partial`
        deletes it once the new step has committed and puts it back if the new one never does,
        so a crash or a failed write at any moment leaves one of the two. In a multi-process
        job the primary process does it and every process waits for it at a barrier.
        """
        primary = jax.process_index() == 0
        # Every process has listed the step (and so decided to replace it) before it moves.
        self._barrier(f"roxxel-setting-aside-{step}")
        if primary:
            _overwrite.set_aside(self.directory, step)
        self._barrier(f"roxxel-set-aside-{step}")
        self._replacing = step if primary else None
        _storage.forget_listings(self.directory)
        self._manager.reload()  # Orbax must forget the step, or its save() refuses it

    def _barrier(self, name: str) -> None:
        """Wait for every process of a multi-process job to reach `name` (no-op in one)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def settle(self) -> None:
        """When a writer opens the directory: `remove_partial` on the primary process, then, in
        a multi-process job, a barrier and a fresh listing, so every process sees the steps
        the primary put back."""
        self.remove_partial()
        if jax.process_count() > 1 and not self.read_only:
            self._barrier("roxxel-settle")
            _storage.forget_listings(self.directory)
            with self._parsing(None):
                self._manager.reload()

    @property
    def replacing(self) -> int | None:
        """The step whose old version is set aside until the new one commits."""
        return self._replacing

    def _live_steps(self, *, own: bool = True) -> set[int]:
        """Steps being saved now by this process's writers of this directory (this one's too,
        unless `own` is False).

        Called with `_writers_guard` held, under which every save marks itself in flight.
        """
        stores = {*_writers.get(self.directory, ()), self}
        if not own:
            stores.discard(self)
        return {s._saving_step for s in stores if s._saving_step is not None and s.is_saving()}

    def wait_for_others(self) -> list[int]:
        """Wait for saves in flight by other Checkpointers of this directory in this process.

        Waits at most `timeout` seconds and logs what it waited for and how that ended.
        Returns the steps still in flight when time ran out (their folders are left alone, and
        their own Checkpointer, or the exit drain, commits them).
        """
        with _writers_guard:
            others = [s for s in _writers.get(self.directory, ()) if s is not self]
        busy = {s: s._saving_step for s in others if s.is_saving()}
        if not busy:
            return []
        steps = sorted(step for step in busy.values() if step is not None)
        logger.info(
            "roxxel: another Checkpointer on %s in this process is saving step %s; waiting for "
            "it (at most timeout=%g s) before opening the directory",
            self.directory,
            ", ".join(map(str, steps)),
            self.timeout,
        )
        started = time.monotonic()
        while any(s.is_saving() for s in busy) and time.monotonic() - started < self.timeout:
            time.sleep(0.01)
        waited = time.monotonic() - started
        still = sorted(step for s, step in busy.items() if step is not None and s.is_saving())
        if still:
            logger.warning(
                "roxxel: step %s of another Checkpointer on %s in this process is still being "
                "saved after %.1f s; its unfinished folder is left to it (its close(), or the "
                "exit, commits it)",
                ", ".join(map(str, still)),
                self.directory,
                waited,
            )
            return still
        committed = [step for step in steps if os.path.isdir(self.step_dir(step))]
        logger.info(
            "roxxel: waited %.2f s for step %s of another Checkpointer on %s in this process: %s",
            waited,
            ", ".join(map(str, steps)),
            self.directory,
            "committed" if committed == steps else f"committed: {committed or 'none'}",
        )
        return []

    def is_saving(self) -> bool:
        return (
            not self._idle.is_set()
            or self._worker.is_alive()
            or bool(self._manager.is_saving_in_progress())
        )

    def wait(self) -> None:
        """Block until the running save is committed; re-raises its error if it failed."""
        self._idle.wait()
        if self._worker.is_alive():
            self._worker.join()
        error, self._save_error = self._save_error, None
        if error is not None:
            raise error
        self._manager.wait_until_finished()

    def last_write_direct(self) -> bool | None:
        """Whether the last save's data files were written with O_DIRECT (None: none yet)."""
        last = self._array_handler.last
        return None if last is None else last.direct

    def recover(self) -> None:
        """After a failed background save: drop that manager and the partial folder.

        Orbax reports a failed save from the next wait, and then again from `close()`
        (`tests/test_orbax_facts.py`), so the manager that saw the failure is closed here with
        its error discarded (the caller has reported it) and a fresh one takes its place.
        Committed steps are untouched.
        """
        try:
            self._manager.close()
        except Exception:  # already reported by the caller
            logger.debug("closing the Orbax manager after a failed save", exc_info=True)
        try:
            self.remove_partial(own_save_over=True)
        finally:  # a failed put-back (a store still down) must not leave the manager closed
            self._manager = self._open()

    def close(self) -> None:
        """Close the Orbax manager; if a save is stuck, give up after `timeout` seconds."""
        with _writers_guard:
            writers = _writers.get(self.directory)
            if writers is not None and not self.is_saving():
                writers.discard(self)
        if self._saver is not None:
            self._jobs.put(None)  # after any queued save: the saver thread then ends
            self._saver = None
        if not self.is_saving():
            self._manager.close()
            return
        try:
            self._bounded(self._manager.close, "closing (waiting for the save in flight)")
        except TimeoutError as exc:
            logger.error("roxxel: %s", exc)

    def remove_partial(self, *, own_save_over: bool = False) -> list[str]:
        """Delete folders of saves that never committed (`<step>.orbax-checkpoint-tmp*`), and
        settle overwrites (`_overwrite.settle`): an old step set aside
        (`<step>.roxxel-replaced`) is deleted if the new `<step>` committed and put back if
        not. On object stores only the overwrites are settled.

        Folders of saves in flight in this process (this Store's or another Checkpointer's on
        the same directory) are left alone; `own_save_over` says this Store's last save is
        over whatever its manager reports (`recover()` closed that manager).
        """
        if self.read_only or jax.process_index() != 0:
            return []
        remote = _paths.is_url(self.directory)
        removed: list[str] = []
        # Deferred Ctrl-C: a half-done pass would leave a folder behind at exit.
        with _lifecycle.interrupts_deferred(), _writers_guard:
            # A save that starts after this scan makes its folder after it.
            live = self._live_steps(own=not own_save_over)
            if not remote:
                try:
                    entries = list(os.scandir(self.directory))
                except OSError:
                    return []
                for entry in entries:
                    if (
                        _TMP_MARKER in entry.name
                        and _step_of(entry.name) not in live
                        and entry.is_dir(follow_symlinks=False)
                    ):
                        shutil.rmtree(entry.path, ignore_errors=True)
                        removed.append(entry.name)
            plan = _overwrite.settle_directory(
                self.directory,
                lambda: {f.step for f in _directory.scan(self.directory).folders},
                live,
            )
            if self._replacing is not None and self._replacing not in live:
                self._replacing = None
        if plan.put_back:
            _storage.forget_listings(self.directory)
            with self._parsing(None):
                self._manager.reload()
        if not remote:
            self.empty_trash()
        if removed:
            logger.info("roxxel: removed unfinished checkpoint folders %s", sorted(removed))
        if plan.put_back:
            logger.warning(
                "roxxel: restored step %s in %s: it was being overwritten and the new version "
                "never committed",
                ", ".join(map(str, plan.put_back)),
                self.directory,
            )
        return removed

    def empty_trash(self) -> None:
        """Finish deleting the steps that retention moved to `TRASH`."""
        trash = os.path.join(self.directory, TRASH)
        if os.path.isdir(trash) and not os.path.islink(trash):
            for entry in list(os.scandir(trash)):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    # ----------------------------------------------------------------------- reading
    def read(self, step: int, targets: Mapping[str, Any]) -> dict[str, Any]:
        """Read the saved leaves named in `targets`, placed with the targets' shardings.

        A target is a `jax.ShapeDtypeStruct` (with a sharding: a device array; without: a NumPy
        array) or a `str` (a string leaf).
        """
        if not targets:
            return {}
        folder = self.foreign(step)
        if folder is not None:
            item_dir = self._foreign_item(folder)
            with self._parsing(step):
                names = _migrate.roxxel_names(_tree_specs(item_dir))
                found = _read_tree(item_dir, {names[name]: t for name, t in targets.items()})
            return {name: found[names[name]] for name in targets}
        if self.format_of(step) >= 2:
            index = self.index(step)
            wanted = {
                path: _format.Target(None, None)
                if isinstance(t, str)
                else _format.Target(t.dtype, getattr(t, "sharding", None))
                for path, t in targets.items()
            }
            try:
                return _format.read(
                    index, wanted, local=not _paths.is_url(self.directory), place=_format.place
                )
            except CorruptCheckpointError as exc:
                raise CorruptCheckpointError(
                    f"step {step} in {self.directory} is damaged: {exc} Nothing was restored. "
                    "To fix: 1) restore() without a step falls back to the newest intact "
                    'checkpoint (on_corrupt="fallback"); 2) restore an older step with '
                    "restore(step=N); 3) run `roxxel verify` on the directory.",
                    step=step,
                    path=exc.path,
                    problems=exc.problems,
                ) from exc
        item = nest(dict(targets))
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
        with self._parsing(step):  # array metadata (shapes, shardings) is parsed here too
            result = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.PyTreeRestore(
                            item=item, restore_args=restore_args, partial_restore=True
                        )
                    }
                ),
            )
        return flatten(result[STATE_ITEM])


# ------------------------------------------------------------------ layouts migrated from
def _foreign_metrics(directory: str, folder: _layout.StepFolder) -> dict[str, float] | None:
    """The metrics CheckpointManager saved beside a step (`metrics/metrics`), or None."""
    from etils import epath

    path = _directory.join(directory, folder.name, _layout.METRICS_ITEM, _layout.METRICS_ITEM)
    try:
        raw = epath.Path(path).read_bytes()
    except OSError:
        return None
    return _directory.parse_metrics(raw)


def _tree_specs(item: str) -> dict[str, LeafSpec]:
    """Shape and dtype of every leaf of a PyTree checkpoint folder, by saved path."""
    metadata = ocp.PyTreeCheckpointer().metadata(item)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping) or not tree:
        raise ValueError(f"{item}/{_layout.PYTREE_METADATA} holds no PyTree Orbax can read")
    specs: dict[str, LeafSpec] = {}
    for path, leaf in flatten(tree).items():
        if getattr(leaf, "shape", None) is None:
            specs[path] = LeafSpec((), STRING)
        else:
            specs[path] = LeafSpec(tuple(int(d) for d in leaf.shape), str(np.dtype(leaf.dtype)))
    return specs


def _read_tree(item: str, targets: Mapping[str, Any]) -> dict[str, Any]:
    """Read the leaves `targets` names (by saved path) from a PyTree checkpoint folder."""
    tree = nest(dict(targets))
    restored = ocp.PyTreeCheckpointer().restore(
        item,
        args=ocp.args.PyTreeRestore(
            item=tree,
            restore_args=ocp.checkpoint_utils.construct_restore_args(tree),
            partial_restore=True,
        ),
    )
    return flatten(restored)
