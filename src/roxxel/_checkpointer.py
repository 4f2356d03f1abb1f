"""`Checkpointer`: the public object that saves and restores a model and its optimizer."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal

import jax
from flax import nnx

from . import (
    _diagnose,
    _format,
    _integrity,
    _lifecycle,
    _lock,
    _paths,
    _restore,
    _state,
    _validate,
)
from ._compat import PageManager
from ._errors import (
    BackgroundWriteError,
    CheckpointerClosedError,
    CorruptCheckpointError,
    InvalidArgumentError,
    NoCheckpointError,
    ReadOnlyError,
    RestoreMismatchError,
    RoxxelError,
    StepExistsError,
    StepNotFoundError,
    StepOrderError,
)
from ._orbax import Store, run_bounded
from ._restore import OnMismatch, RestoreReport
from ._retention import Retention, best_step

logger = logging.getLogger("roxxel")

OnSigterm = Literal["exit", "flag"]
OnCorrupt = Literal["fallback", "error"]
Staging = Literal["auto", "view", "copy"]


class Checkpointer:
    """Saves a Flax NNX model and its optimizer asynchronously, and restores them in place.

    `save()` hands the arrays to background threads and returns; the checkpoint is committed
    (atomically, with its metrics) while training goes on. Every save still running when the
    program exits, returns from `main`, or receives SIGTERM is committed first.

    Retention keeps the `max_to_keep` newest checkpoints for resuming *and* the `keep_best`
    best ones by `best_metric`, plus every multiple of `keep_every`; the newest checkpoint is
    never deleted, and NaN or infinite metrics are never best.

    `restore()` reads into the *current* model: leaves that still fit are restored, new
    leaves keep their values, and the result is described by `last_restore_report`.

    Args:
        checkpoint_path: a local folder (created if needed) or a URL such as `gs://bucket/run`.
        model: the `nnx.Module` to save and restore in place.
        optimizer: its `nnx.Optimizer` (or None to checkpoint the model alone).
        max_to_keep: how many of the newest checkpoints to keep; None keeps all.
        timeout: seconds any wait for background work may take before it fails.
        best_metric: the `metrics_dict` key that ranks checkpoints, or None for no ranking.
        best_mode: "min" if lower `best_metric` is better, "max" if higher is.
        keep_best: how many of the best checkpoints to keep besides the newest ones.
        keep_every: keep every step that is a multiple of this forever (None: none).
        read_only: open for restoring only; `save()` then raises `ReadOnlyError`.
        compression: compress arrays with zstd (smaller files, 2-5x slower saves on few
            cores). Such steps are written through Orbax's TensorStore path (format 1), with
            `save()` blocking for Orbax's host copy, and without per-shard checksums.
        on_sigterm: "exit" commits in-flight saves and exits with status 143 on SIGTERM;
            "flag" only sets `preemption_requested`, so the loop can save once more and stop.
        on_corrupt: what `restore()` without a step does when the newest checkpoint fails its
            checksums: "fallback" (default) logs a warning naming the step and files and
            restores the newest intact one; "error" raises `CorruptCheckpointError`. A step
            asked for by number or with `best=True` always raises.
        staging: how `save()` captures the arrays. "copy" copies them into a host buffer
            kept for the next save: `save()` blocks for a memory copy, the buffer holds about
            the state's size, and the next jitted step can donate its buffers. "view" keeps
            zero-copy host views while the background write runs: the shortest `save()`, but
            XLA declines to donate a buffer a view holds, so the next step allocates fresh
            ones (0.87-0.90 of the training speed against 0.95-0.97 with "copy" at a save
            every 92 steps, docs/benchmarks.md). "auto" (default): "copy" for arrays on CPU,
            "view" on an accelerator, where capturing is the device-to-host copy anyway.
        staging_limit_bytes: with `staging="copy"`, copy at most this many bytes (the other
            arrays are held as views); bounds the host memory a save holds.

    Raises:
        CheckpointPathError: `checkpoint_path` is a file, or cannot be created or written.
        InvalidArgumentError: an option has the wrong type or value.

    Example:
        ```python
        ck = Checkpointer("./checkpoints", model, optimizer, max_to_keep=3)
        start = ck.restore()            # 0 when there is no checkpoint yet
        for step in range(start, 1000):
            loss = train_step(model, optimizer, batch)
            if step % 100 == 0:
                ck.save(step, {"loss": float(loss)})
        ```
    """

    def __init__(
        self,
        checkpoint_path: str,
        model: nnx.Module,
        optimizer: nnx.Optimizer[Any] | None,
        max_to_keep: int | None = 3,
        timeout: int | float = 1000,
        *,
        best_metric: str | None = "loss",
        best_mode: Literal["min", "max"] = "min",
        keep_best: int = 1,
        keep_every: int | None = None,
        read_only: bool = False,
        compression: bool = False,
        on_sigterm: OnSigterm = "exit",
        on_corrupt: OnCorrupt = "fallback",
        staging: Staging = "auto",
        staging_limit_bytes: int | None = None,
    ) -> None:
        _validate.instance(
            model,
            nnx.Module,
            name="model",
            hint="Pass the flax.nnx.Module whose parameters you train.",
        )
        if optimizer is not None:
            _validate.instance(
                optimizer,
                nnx.Optimizer,
                name="optimizer",
                hint="Pass nnx.Optimizer(model, optax_tx, wrt=nnx.Param), or None to save the "
                "model alone.",
            )
        if best_metric is not None and (not isinstance(best_metric, str) or not best_metric):
            raise InvalidArgumentError(
                f"best_metric must be a metric name such as 'loss', or None, got {best_metric!r}.",
                name="best_metric",
                value=best_metric,
            )
        self._retention = Retention(
            max_to_keep=_validate.count(
                max_to_keep, name="max_to_keep", minimum=1, allow_none=True
            ),
            keep_best=_validate.count(keep_best, name="keep_best", minimum=0) or 0,
            best_metric=best_metric,
            best_mode=_validate.choice(best_mode, name="best_mode", options=("min", "max")),  # type: ignore[arg-type]
            keep_every=_validate.count(keep_every, name="keep_every", minimum=1, allow_none=True),
        )
        self._timeout = _validate.positive_seconds(timeout, name="timeout")
        self._on_sigterm_mode = _validate.choice(
            on_sigterm, name="on_sigterm", options=("exit", "flag")
        )
        self._on_corrupt = _validate.choice(
            on_corrupt, name="on_corrupt", options=("fallback", "error")
        )
        self._staging = _validate.choice(staging, name="staging", options=("auto", "view", "copy"))
        self._staging_limit = _validate.count(
            staging_limit_bytes, name="staging_limit_bytes", minimum=0, allow_none=True
        )
        self._staging_pool = _format.StagingPool()
        for flag_name, flag in (("read_only", read_only), ("compression", compression)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(
                    f"{flag_name} must be True or False, got {flag!r}.", name=flag_name, value=flag
                )
        self._read_only = read_only
        self.directory = _paths.resolve(checkpoint_path, create=not read_only)
        self.model = model
        self.optimizer = optimizer
        # The writer lock comes first: partial folders may be another live writer's saves.
        self._writer_lock = None if read_only else _lock.acquire(self.directory)
        try:
            self._store = Store(
                self.directory,
                self._retention,
                timeout=self._timeout,
                read_only=read_only,
                compression=compression,
            )
        except BaseException:
            if self._writer_lock is not None:
                self._writer_lock.release()
            raise
        self._store.remove_partial()
        self._closed = False
        self._pending_step = None
        self._pending_bytes = 0
        self._restored_step: int | None = None
        self._lock = threading.RLock()
        self.last_restore_report: RestoreReport | None = None
        self.preemption_requested = False
        """True once SIGTERM arrived (with `on_sigterm="flag"` the loop should save and stop)."""
        self.last_save_seconds: float | None = None
        """How long the last `save()` call blocked the caller."""
        _lifecycle.track(self)
        _lifecycle.install_sigterm_handler()

    # ------------------------------------------------------------------------ views
    @property
    def checkpoint_path(self) -> str:
        """The checkpoint directory: the absolute local folder, or the URL as given.

        The same as `directory`, under the name the documentation page's source uses.
        """
        return self.directory

    @property
    def graphdef(self) -> nnx.GraphDef[Any]:
        """The `GraphDef` of `nnx.split((model, optimizer))`, computed when read.

        It is always that of the live model and optimizer (of the model alone when `optimizer`
        is None).
        """
        if self.optimizer is None:
            return nnx.split(self.model)[0]
        return nnx.split((self.model, self.optimizer))[0]

    @property
    def mngr(self) -> PageManager:
        """The Orbax `CheckpointManager` calls of the documentation page's code, answered here.

        `wait_until_finished()`, `latest_step()`, `all_steps()`, `best_step()` and `close()`
        delegate to this Checkpointer. For compatibility only: new code calls the
        Checkpointer's own methods. Other `CheckpointManager` names raise an `AttributeError`
        that names the Roxxel call to use instead.
        """
        return PageManager(self)

    def all_steps(self) -> list[int]:
        """Every committed step on disk, ascending."""
        self._check_open()
        return self._store.all_steps()

    def latest_step(self) -> int | None:
        """The newest committed step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The committed step with the best finite `best_metric`, or None."""
        self._check_open()
        return best_step(self._store.checkpoints(), self._retention)

    def metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved with `step` (None if it was saved without any).

        Raises:
            StepNotFoundError: `step` is not committed on disk.
        """
        step = _validate.step(step)
        self._require_step(step, self.all_steps())
        return self._store.metrics(step)

    # ------------------------------------------------------------------------- save
    def save(
        self, step: int, metrics_dict: Mapping[str, Any] | None = None, *, overwrite: bool = False
    ) -> bool:
        """Start saving the current model and optimizer as `step`; returns without waiting.

        The state is captured when `save()` is called: later training steps, even ones that
        donate their buffers, do not change what is written. If the previous save is still
        being written, this call first waits for it (one save is in flight at a time).

        Args:
            step: the training step, a non-negative integer (NumPy and JAX integers work).
            metrics_dict: metric name -> number; must hold `best_metric` unless that is None.
            overwrite: replace `step` if it is already on disk, or allow a step lower than
                the latest one.

        Returns:
            True if a save was started; False if `step` is the checkpoint just restored and
            the save was skipped (nothing new to write).

        Raises:
            InvalidStepError: `step` is not a non-negative integer.
            InvalidArgumentError: `metrics_dict` lacks `best_metric` or holds a non-number.
            StepExistsError: `step` is on disk and `overwrite` is False.
            StepOrderError: `step` is below the latest step and `overwrite` is False.
            BackgroundWriteError: the previous save failed in the background.
            ReadOnlyError: the Checkpointer was opened with `read_only=True`.
        """
        with self._lock:
            self._check_open()
            if self._read_only:
                raise ReadOnlyError(
                    f"cannot save step {step!r}: the Checkpointer for {self.directory} was opened "
                    "with read_only=True. Open it without read_only to save."
                )
            step = _validate.step(step)
            metrics = _validate.metrics(metrics_dict, best_metric=self._retention.best_metric)
            started = time.perf_counter()
            self._finish_pending()
            steps = self._store.all_steps()
            if step in steps:
                if step == self._restored_step and not overwrite:
                    logger.info(
                        "roxxel: step %d is the checkpoint just restored; not saving it again", step
                    )
                    return False
                if not overwrite:
                    raise StepExistsError(
                        f"step {step} is already saved in {self.directory}. Pass overwrite=True "
                        f"to replace it, or save a new step (latest is {steps[-1]}).",
                        step=step,
                    )
                self._store.delete(step)
            elif steps and step < steps[-1] and not overwrite:
                raise StepOrderError(
                    f"step {step} is lower than the latest saved step {steps[-1]} in "
                    f"{self.directory}. Steps must increase so that restore() resumes from the "
                    "newest state. Pass overwrite=True to save it anyway (restore() still "
                    f"resumes from step {steps[-1]}), or use a higher step.",
                    step=step,
                    latest=steps[-1],
                )
            tree, keys = self._snapshot()
            try:
                if self._store.array_format == 1:  # object stores: TensorStore
                    self._pending_bytes = _diagnose.tree_bytes(tree)
                    self._store.save_tree(step, tree, {"keys": keys}, metrics)
                else:
                    snap = _format.snapshot(
                        tree,
                        process=jax.process_index(),
                        staging=self._staging,
                        staging_limit=self._staging_limit,
                        pool=self._staging_pool,
                    )
                    self._pending_bytes = snap.nbytes
                    self._store.save(step, snap, {"keys": keys}, metrics)
            except TimeoutError:
                self._pending_step = step  # later waits name it, and stay bounded
                raise
            except Exception as exc:
                self._recover_store()
                raise BackgroundWriteError(
                    f"could not start saving step {step} to {self.directory}: "
                    f"{type(exc).__name__}: {exc}."
                    f"{_diagnose.explain(exc, self.directory, self._pending_bytes)}"
                    f"{_peer_hint()}",
                    step=step,
                ) from exc
            self._pending_step = step
            self._restored_step = None
            self.last_save_seconds = time.perf_counter() - started
            return True

    @property
    def _pending_step(self) -> int | None:
        """The step being written in the background, if any."""
        return self._pending

    @_pending_step.setter
    def _pending_step(self, step: int | None) -> None:
        self._pending = step
        _lifecycle.hold(self, pending=step is not None)

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, str]]:
        tree: dict[str, Any] = {}
        keys: dict[str, str] = {}
        for path, variable in _state.variables(self.model, self.optimizer).items():
            value = _state.value_of(variable)
            if _state.is_key(value):
                keys[path] = _state.key_impl_name(value)
            tree[path] = _state.to_saved(value)
        return tree, keys

    def _finish_pending(self) -> None:
        """Wait for the save in flight; turn its failure into a BackgroundWriteError."""
        step = self._pending_step
        try:
            self._wait_bounded()
        except TimeoutError:
            raise
        except Exception as exc:
            self._pending_step = None
            self._recover_store()
            raise BackgroundWriteError(
                f"saving step {step} to {self.directory} failed in the background: "
                f"{type(exc).__name__}: {exc}."
                f"{_diagnose.explain(exc, self.directory, self._pending_bytes)} "
                f"Step {step} was not committed; earlier "
                "checkpoints are intact. Fix the cause (disk space, permissions) and save "
                f"again.{_peer_hint()}",
                step=step,
            ) from exc
        self._pending_step = None

    def _wait_bounded(self) -> None:
        """`Store.wait()`, but failing with TimeoutError after `timeout` seconds."""
        if not self._store.is_saving() and self._pending_step is None:
            self._store.wait()
            return
        waiter = run_bounded(self._store.wait, timeout=self._timeout, name="roxxel-wait")
        if waiter is not None and waiter.is_alive():
            raise TimeoutError(
                f"saving step {self._pending_step} to {self.directory} did not finish within "
                f"timeout={self._timeout:g} s. The storage may be unreachable or very slow; "
                "raise timeout= or check the storage."
            )

    def _recover_store(self) -> None:
        """`Store.recover()`, which must not hide the error being reported.

        Reopening syncs all JAX processes, so it fails too when a peer process is gone.
        """
        try:
            self._store.recover()
        except Exception:  # the caller raises the original error
            logger.warning(
                "roxxel: could not reopen %s after a failed save", self.directory, exc_info=True
            )

    def wait_until_finished(self) -> None:
        """Block until the save in flight is committed (and old steps are deleted).

        Raises:
            BackgroundWriteError: the save failed; the step is not on disk.
            TimeoutError: it did not finish within `timeout` seconds.
        """
        with self._lock:
            self._check_open()
            self._finish_pending()

    # ---------------------------------------------------------------------- restore
    def restore(
        self,
        step: int | None = None,
        *,
        best: bool = False,
        rename: Mapping[str, str] | None = None,
        on_mismatch: OnMismatch = "error",
        allow_partial: bool = False,
    ) -> int:
        """Restore a checkpoint into the model and optimizer in place; return its step.

        Without arguments the newest committed checkpoint is restored, and 0 is returned when
        there is none (a fresh start). Leaves that still fit the current model are restored
        (read into the current dtype and sharding); leaves the checkpoint lacks keep their
        values. What happened, leaf by leaf, is in `last_restore_report`, and its one-line
        summary is logged (a warning unless the restore was exact, and always when not every
        parameter was restored). Either every planned leaf is set or, on any error, none is.

        A restore that would set none of the model's parameters (`nnx.Param`), such as after
        the model was moved under a parent module (`self.inner = Net(...)`, so every path
        gained `inner/`), is refused unless `allow_partial=True`; the error and
        `report.suggested_rename` give the `rename=` that fits (here
        `{"model/inner": "model"}`). Suggested renames are never applied by themselves. The
        optimizer's counters (`optimizer/step`, the `count` of its transforms) are never
        restored when no parameter and no optimizer moment is: they are in
        `report.withheld`, with the reason.

        Args:
            step: restore this step instead of the newest.
            best: restore the step with the best `best_metric` instead.
            rename: `{current name: saved name}` for renamed attributes: with the saved
                `encoder` now called `enc`, pass `{"enc": "encoder"}`. A name renames every
                path component of that name (the optimizer's state too); a path such as
                `{"model/enc": "model/encoder"}` renames that part of the model and the
                optimizer's state for it.
            on_mismatch: "error" (default) refuses leaves whose shape changed and leaves the
                model untouched; "skip" restores the rest and keeps those at their values.
            allow_partial: restore what matches even when none of the model's parameters
                does (the model then keeps its current weights; the optimizer's counters are
                still withheld). Restores that set some of the parameters never need it; the
                report's `params_restored` of `params_total` says how many.

        Returns:
            The restored step, or 0 when the directory has no checkpoint.

        Raises:
            StepNotFoundError: `step` is not on disk (the message lists the steps that are).
            NoCheckpointError: `best=True` but no checkpoint has a finite `best_metric`.
            RestoreMismatchError: a saved leaf's shape differs and `on_mismatch="error"`; or
                none of the model's parameters would be restored and `allow_partial` is False
                (the message gives the `rename=` when the paths only moved).
            InvalidArgumentError: a `rename` key names nothing in the current model (the
                message gives the reversed map when that is the likely slip).
            CorruptCheckpointError: the step's files fail their checksums (checked before
                anything is read; without `step`, see `on_corrupt`) or its metadata cannot be
                parsed; the model is unchanged.
            TimeoutError: a save in flight did not finish within `timeout` seconds.
        """
        with self._lock:
            damaged: set[int] = set()
            while True:
                planned = self._plan(
                    step,
                    best=best,
                    rename=rename,
                    on_mismatch=on_mismatch,
                    allow_partial=allow_partial,
                    exclude=damaged,
                )
                if planned is None:
                    return 0
                try:
                    self._apply(*planned)
                except CorruptCheckpointError as exc:
                    # A shard failed its checksum while being read (the model is untouched).
                    if step is not None or best or self._on_corrupt != "fallback":
                        raise
                    damaged.add(planned[0].report.step)
                    logger.warning(
                        "roxxel: step %d in %s is damaged, falling back to an older step: %s",
                        planned[0].report.step,
                        self.directory,
                        "; ".join(exc.problems[:5]),
                    )
                    continue
                return planned[0].report.step

    def plan_restore(
        self,
        step: int | None = None,
        *,
        best: bool = False,
        rename: Mapping[str, str] | None = None,
    ) -> RestoreReport | None:
        """A dry run of `restore()`: the report of what it would do, without touching the model.

        Only metadata is read. Mismatched shapes are listed in the report, not raised.

        Returns:
            The report (`applied` is False), or None when the directory has no checkpoint.

        Raises:
            StepNotFoundError: `step` is not on disk.
            NoCheckpointError: `best=True` but no checkpoint has a finite `best_metric`.
            InvalidArgumentError: a `rename` key names nothing in the current model.
        """
        with self._lock:
            planned = self._plan(
                step, best=best, rename=rename, on_mismatch="skip", allow_partial=True
            )
            return None if planned is None else planned[0].report

    def _choose_step(self, step: int | None, best: bool, exclude: set[int]) -> int | None:
        steps = self._store.all_steps()
        if best:
            if step is not None:
                raise InvalidArgumentError(
                    "pass either step= or best=True to restore(), not both.",
                    name="best",
                    value=best,
                )
            if self._retention.best_metric is None:
                raise NoCheckpointError(
                    f"restore(best=True) needs a metric to rank the checkpoints of "
                    f"{self.directory}, but this Checkpointer was created with "
                    "best_metric=None. Create it with best_metric=<a name in metrics_dict> "
                    '(e.g. best_metric="loss"), or restore the newest with restore(), or a '
                    f"given step with restore(step=N) (steps on disk: {steps})."
                )
            chosen = best_step(self._store.checkpoints(), self._retention)
            if chosen is None:
                raise NoCheckpointError(
                    f"restore(best=True): no checkpoint in {self.directory} has a finite "
                    f"{self._retention.best_metric!r} metric (steps on disk: {steps}). Restore the "
                    "newest with restore(), or a given one with restore(step=N)."
                )
            return chosen
        if step is None:
            if steps and exclude and all(s in exclude for s in steps):
                raise CorruptCheckpointError(
                    f"every checkpoint in {self.directory} is damaged (steps {sorted(exclude)}); "
                    f"nothing was restored. Run `roxxel verify {self.directory}` for the full "
                    "list; start from scratch with a new checkpoint_path if none can be repaired.",
                    step=max(exclude),
                    path=self.directory,
                    problems=(),
                )
            steps = [s for s in steps if s not in exclude]
            return steps[-1] if steps else None
        step = _validate.step(step)
        self._require_step(step, steps)
        return step

    def _verified(
        self,
        chosen: int | None,
        *,
        may_fall_back: bool,
        exclude: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> int | None:
        """Check `chosen` against its checksums before any of it is read.

        A damaged step raises `CorruptCheckpointError`, or, when `may_fall_back` and
        `on_corrupt="fallback"`, is skipped with a warning for the newest older intact step.
        """
        if chosen is None or not self._store.verifies_checksums:
            return chosen
        candidates = [chosen]
        if may_fall_back and self._on_corrupt == "fallback":
            candidates += sorted(
                (s for s in self._store.all_steps() if s < chosen and s not in exclude),
                reverse=True,
            )
        damaged: list[CorruptCheckpointError] = []
        for candidate in candidates:
            # Shards are checked while they are read; here only the small files and sizes.
            result = _integrity.check(self._store.step_dir(candidate), candidate, deep=False)
            if result.ok:
                if damaged:
                    logger.warning(
                        "roxxel: restoring step %d, the newest intact checkpoint in %s; the "
                        "newer steps %s are damaged (run `roxxel verify` for details)",
                        candidate,
                        self.directory,
                        [e.step for e in damaged],
                    )
                return candidate
            damaged.append(_integrity.corrupt_error(self.directory, result))
            if len(candidates) == 1:
                raise damaged[0]
            logger.warning(
                "roxxel: step %d in %s is damaged, falling back to an older step: %s",
                candidate,
                self.directory,
                "; ".join(result.problems[:5]),
            )
        raise CorruptCheckpointError(
            f"every checkpoint in {self.directory} is damaged (steps "
            f"{[e.step for e in damaged]}); nothing was restored. The first problems: "
            f"{damaged[0].problems[:3]}. Run `roxxel verify {self.directory}` for the full "
            "list; start from scratch with a new checkpoint_path if none can be repaired.",
            step=damaged[0].step,
            path=damaged[0].path,
            problems=damaged[0].problems,
        )

    def _require_step(self, step: int, steps: list[int]) -> None:
        if step not in steps:
            raise StepNotFoundError(
                f"step {step} is not a committed checkpoint in {self.directory}; the steps there "
                f"are {steps or 'none'}.",
                step=step,
                available=steps,
            )

    def _plan(
        self,
        step: int | None,
        *,
        best: bool,
        rename: Mapping[str, str] | None,
        on_mismatch: str,
        allow_partial: bool = False,
        exclude: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> tuple[_restore.RestorePlan, dict[str, _state.LeafSpec]] | None:
        self._check_open()
        _validate.choice(on_mismatch, name="on_mismatch", options=("error", "skip"))
        if not isinstance(allow_partial, bool):
            raise InvalidArgumentError(
                f"allow_partial must be True or False, got {allow_partial!r}.",
                name="allow_partial",
                value=allow_partial,
            )
        renames = _restore.check_rename(rename)
        if self._pending_step is not None:
            self._finish_pending()
        chosen = self._choose_step(step, best, exclude)
        chosen = self._verified(chosen, may_fall_back=step is None and not best, exclude=exclude)
        if chosen is None:
            self.last_restore_report = None
            return None
        live = _state.variables(self.model, self.optimizer)
        current = {path: _state.spec_of(variable.get_value()) for path, variable in live.items()}
        params = {
            path
            for path, variable in live.items()
            if path.startswith("model/") and isinstance(variable, nnx.Param)
        }
        saved = self._store.leaf_specs(chosen)
        planned = _restore.plan(chosen, saved, current, rename=renames, params=params)
        report = planned.report
        if report.mismatched and on_mismatch == "error":
            raise RestoreMismatchError(
                _restore.mismatch_message(report, self.directory),
                mismatched=dict(report.mismatched),
                report=report,
            )
        if report.params_total and not report.params_restored and not allow_partial:
            raise RestoreMismatchError(
                _restore.no_params_message(report, self.directory),
                mismatched=dict(report.mismatched),
                report=report,
            )
        return planned, saved

    def _apply(self, planned: _restore.RestorePlan, saved: dict[str, _state.LeafSpec]) -> None:
        """Read the planned leaves, convert them all, then set them: all or nothing."""
        step = planned.report.step
        live = _state.variables(self.model, self.optimizer)
        targets = {
            source: _state.read_target(live[path].get_value(), saved[source])
            for path, source in planned.reads.items()
        }
        arrays = self._store.read(step, targets)
        new_values = {}
        for path, source in planned.reads.items():
            current = live[path].get_value()
            spec = _state.spec_of(current)
            new_values[path] = _state.from_saved(arrays[source], current, spec)
        for path, value in new_values.items():
            live[path].set_value(value)
        report = dataclasses.replace(planned.report, applied=True)
        self.last_restore_report = report
        self._restored_step = step
        level = logging.INFO if report.exact and report.all_params_restored else logging.WARNING
        logger.log(level, "roxxel: restored %s", report.summary())

    # -------------------------------------------------------------------- lifecycle
    def final_save(self, step: int, metrics_dict: Mapping[str, Any] | None = None) -> int:
        """Save the current state as `step`, wait until it is committed, then close.

        The call to make once when training stops, for whatever reason: the loop finished,
        or `preemption_requested` became True after a SIGTERM (with `on_sigterm="flag"`).
        If `step` is already on disk or is the save in flight, nothing new is written.
        Waiting is bounded by `timeout`.

        Args:
            step: the step of the current state.
            metrics_dict: as for `save()`.

        Returns:
            `step`, now committed on disk.

        Raises:
            BackgroundWriteError: this save or the one before failed; `step` is not on disk.
            TimeoutError: the save did not finish within `timeout` seconds.

        Example:
            ```python norun
            ck = Checkpointer("./checkpoints", model, optimizer, on_sigterm="flag")
            step = ck.restore()
            while step < total_steps and not ck.preemption_requested:
                loss = train_step(model, optimizer, batch)
                step += 1
                if step % 100 == 0:
                    ck.save(step, {"loss": float(loss)})
            ck.final_save(step, {"loss": float(loss)})
            ```
        """
        with self._lock:
            self._check_open()
            step = _validate.step(step)
            if step != self._pending_step:
                self._finish_pending()
                if step not in self._store.all_steps():
                    self.save(step, metrics_dict)
            self.close()
            return step

    def close(self) -> None:
        """Commit the save in flight and release resources; later calls raise.

        Calling `close()` again does nothing.

        Raises:
            BackgroundWriteError: the last save failed; it is not on disk.
        """
        with self._lock:
            if self._closed:
                return
            try:
                self._finish_pending()
            finally:
                self._closed = True
                self._staging_pool = _format.StagingPool()  # give its memory back now
                _lifecycle.untrack(self)
                try:
                    self._close_store()
                finally:
                    if self._writer_lock is not None:
                        self._writer_lock.release(clean=not self._store.is_saving())

    def _close_store(self) -> None:
        """`Store.close()`, its failure reported as a Roxxel error.

        A save whose start timed out (storage unreachable) may fail later in Orbax's threads;
        Orbax raises that from `close()` as the storage client's own exception.
        """
        try:
            self._store.close()
        except (RoxxelError, TimeoutError):
            raise
        except Exception as exc:
            raise BackgroundWriteError(
                f"closing the Checkpointer on {self.directory}: a save that was still running "
                f"in the background failed: {type(exc).__name__}: {exc}. Steps committed "
                "before it are intact; restore() returns the newest of them.",
                step=None,
            ) from exc

    def __enter__(self) -> Checkpointer:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointerClosedError(
                f"this Checkpointer for {self.directory} is closed. Create a new Checkpointer "
                "to save or restore again."
            )

    def _drain_at_exit(self) -> None:
        if not self._closed:
            self.close()

    def _on_sigterm(self) -> bool:
        self.preemption_requested = True
        return self._on_sigterm_mode == "exit"

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Checkpointer({self.directory!r}, {state})"


def _peer_hint() -> str:
    """In a multi-process job, the likely cause of a failed collective save."""
    count = jax.process_count()
    if count == 1:
        return ""
    return (
        f" This job has {count} JAX processes and every one must call save() with the same "
        "step; this failure often means a peer process died or stopped (see its log and the "
        "JAX coordination service messages). Restart the whole job; restore() resumes from "
        "the newest committed step."
    )


Checkpointer.__module__ = "roxxel.checkpoint"
