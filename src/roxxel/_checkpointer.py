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
    _directory,
    _extras,
    _format,
    _inplace,
    _integrity,
    _lifecycle,
    _lock,
    _paths,
    _policy,
    _preemption,
    _restore,
    _state,
    _telemetry,
    _tiers,
    _validate,
)
from ._compat import PageManager
from ._errors import (
    BackgroundWriteError,
    CheckpointerClosedError,
    CorruptCheckpointError,
    InvalidArgumentError,
    ReadOnlyError,
    RoxxelError,
    StepExistsError,
    StepNotFoundError,
    StepOrderError,
    StorageUnreachableError,
)
from ._orbax import Store, run_bounded
from ._restore import OnMismatch, RestoreReport
from ._retention import Retention, best_step
from ._telemetry import OnCommit, SaveStats

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
            In a multi-process job SIGTERM is left to JAX's preemption notifier and acts at
            the step `reached_preemption()` agrees on: see that method.
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
        save_every: save only at steps that are multiples of this: `save()` is then called
            at every step and returns False when no save is due (see `should_save`).
        save_interval_s: save once this many seconds passed since the last permanent save.
        temporary_interval_s: make a *temporary* save once this many seconds passed since
            the last save of any kind: it is kept only until a newer step commits, never
            counts against `max_to_keep` and is never best. Must be shorter than
            `save_interval_s`.
        on_commit: called with the `SaveStats` of every step once it is committed, on a
            thread of its own (it never delays a save or a commit); its exceptions are
            logged with their traceback.
        extras: more state saved in the same checkpoint, `{name: object}`: a Grain iterator
            or any object with `get_state()`/`set_state(state)`, a dict of JSON values (a
            config), an `nnx.Module`/`nnx.State` or a dict of arrays (EMA weights), a
            `numpy.random.Generator`. Each `save()` captures them when called, with the
            model; `restore()` sets them in place and reports each in
            `last_restore_report.extras`. Names are simple identifiers; see the guide
            "Extra state in the checkpoint".
        local_path: save on two tiers: every step commits in this local folder (at local
            speed), and some are promoted to `checkpoint_path` (a `gs://`/`s3://` URL or
            another folder) in the background: see the guide "Two tiers". `restore()` then
            takes the newest intact step of both tiers.
        promote_every: with `local_path`, promote every this-many-th committed local step
            (default 1: each one; the first is always promoted).
        promote_interval_s: with `local_path`, promote the first step committed once this many
            seconds passed since the last promotion started (with or without `promote_every`).
        remote_max_to_keep: with `local_path`, how many of the newest promoted steps the
            remote tier keeps (plus its `keep_best` best ones and `keep_every` multiples).
        promote_grace_s: with `local_path`, how long `close()` (and so the exit drain and
            SIGTERM) waits for the newest local step to be promoted; what is not done by
            then stays on the local tier, and the remote keeps its older steps.

    Raises:
        CheckpointPathError: `checkpoint_path` is a file, or cannot be created or written.
        InvalidArgumentError: an option has the wrong type or value; an extra has a bad
            name, is of no supported kind, or shares state with the model or another extra.

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
        save_every: int | None = None,
        save_interval_s: float | None = None,
        temporary_interval_s: float | None = None,
        on_commit: OnCommit | None = None,
        extras: Mapping[str, Any] | None = None,
        local_path: str | None = None,
        promote_every: int | None = None,
        promote_interval_s: float | None = None,
        remote_max_to_keep: int | None = 1,
        promote_grace_s: float = 60.0,
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
        self._policy = _policy.check(
            _policy.SavePolicy(
                save_every=_validate.count(
                    save_every, name="save_every", minimum=1, allow_none=True
                ),
                save_interval_s=_optional_seconds(save_interval_s, "save_interval_s"),
                temporary_interval_s=_optional_seconds(
                    temporary_interval_s, "temporary_interval_s"
                ),
            )
        )
        self._last_save = _policy.LastSave()
        on_commit = _telemetry.check_callback(on_commit)
        for flag_name, flag in (("read_only", read_only), ("compression", compression)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(
                    f"{flag_name} must be True or False, got {flag!r}.", name=flag_name, value=flag
                )
        self._read_only = read_only
        self._extras = _extras.check(extras, model, optimizer, process_count=jax.process_count())
        self.remote_path: str | None = None
        """The remote tier of a two-tier Checkpointer (`checkpoint_path`), else None."""
        promoter_args = _tier_options(
            local_path,
            read_only=read_only,
            promote_every=promote_every,
            promote_interval_s=promote_interval_s,
            remote_max_to_keep=remote_max_to_keep,
            promote_grace_s=promote_grace_s,
        )
        if local_path is not None:
            self.remote_path = _paths.resolve(checkpoint_path, create=True)
            checkpoint_path = local_path
        self.directory = _paths.resolve(checkpoint_path, create=not read_only)
        if self.remote_path is not None:
            if self.remote_path == self.directory:
                raise InvalidArgumentError(
                    f"local_path {self.directory!r} is the checkpoint_path itself; the local "
                    "tier must be another folder (a fast local disk).",
                    name="local_path",
                    value=local_path,
                )
            _tiers.prepare_remote(self.remote_path, timeout=self._timeout)
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
        # Another Checkpointer of this process may be saving here (a notebook cell run twice):
        # wait for it, bounded, and never remove its unfinished folder.
        if not read_only:
            self._store.wait_for_others()
        self._store.settle()
        self._telemetry = _telemetry.Telemetry(self.directory, on_commit)
        self._store.on_commit = self._telemetry.committed
        self._promoter: _tiers.Promoter | None = None
        self._promote_grace = promote_grace_s
        if self.remote_path is not None and promoter_args is not None:
            policy, remote_keep = promoter_args
            # The remote tier ranks and keeps milestones as the local one does.
            try:
                self._start_promoter(
                    policy, dataclasses.replace(self._retention, max_to_keep=remote_keep)
                )
            except BaseException:
                self._store.close()
                if self._writer_lock is not None:
                    self._writer_lock.release()
                raise
        self._closed = False
        self._pending_step = None
        self._pending_bytes = 0
        self._restored_step: int | None = None
        self._lock = threading.RLock()
        self.last_restore_report: RestoreReport | None = None
        self.preemption_requested = False
        """True once SIGTERM arrived (with `on_sigterm="flag"` the loop should save and stop).

        In a multi-process job it turns True on every process together, at the step
        `reached_preemption()` agreed on.
        """
        self.last_save_seconds: float | None = None
        """How long the last `save()` call that saved blocked the caller (also in
        `last_save.blocking_seconds` once that step is committed)."""
        _lifecycle.track(self)
        _preemption.install_sigterm_handler()

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

    @property
    def last_save(self) -> SaveStats | None:
        """The figures of the newest committed save of this Checkpointer (None before one)."""
        return self._telemetry.last

    @property
    def save_history(self) -> tuple[SaveStats, ...]:
        """The `SaveStats` of this Checkpointer's last 100 committed saves, oldest first."""
        return tuple(self._telemetry.history)

    @property
    def last_promoted(self) -> int | None:
        """The newest step this two-tier Checkpointer promoted to the remote tier (or None)."""
        return None if self._promoter is None else self._promoter.last_promoted

    def remote_steps(self) -> list[int]:
        """The committed steps of the remote tier, ascending (two-tier Checkpointers only).

        Raises:
            InvalidArgumentError: this Checkpointer has no remote tier (no `local_path`).
            StorageUnreachableError: the remote tier could not be listed within `timeout`.
        """
        self._check_open()
        remote = self._require_tiers("remote_steps")
        listing = _tiers.remote_listing(remote, self._timeout)
        if listing is None:
            raise StorageUnreachableError(
                f"cannot list the remote tier {remote} within timeout={self._timeout:g} s (see "
                "the warning logged). Check the storage; the local tier is not affected.",
                path=remote,
                endpoint=remote,
            )
        return [f.step for f in listing.folders if f.layout == "roxxel"]

    def wait_until_promoted(self) -> int | None:
        """Block until the save in flight is committed and no promotion waits or runs;
        return the newest step this Checkpointer promoted.

        Raises:
            BackgroundWriteError: the save in flight failed.
            InvalidArgumentError: this Checkpointer has no remote tier (no `local_path`).
            PromotionError: a promotion failed since the last call (the oldest such failure;
                the step is committed on the local tier).
            TimeoutError: promotions did not finish within `timeout` seconds.
        """
        with self._lock:
            self._check_open()
            self._require_tiers("wait_until_promoted")
            self._finish_pending()  # its commit queues its promotion when it is due
        assert self._promoter is not None
        if not self._promoter.wait(self._timeout):
            raise TimeoutError(
                f"promotion to {self.remote_path} did not finish within timeout="
                f"{self._timeout:g} s; the steps are committed on the local tier."
            )
        error = self._promoter.take_error()
        if error is not None:
            raise error
        return self._promoter.last_promoted

    def all_steps(self) -> list[int]:
        """Every committed step on disk, ascending (steps of migrated layouts included).

        On a two-tier Checkpointer: the local tier's steps (see `remote_steps()`).
        """
        self._check_open()
        return self._store.listing().steps

    def latest_step(self) -> int | None:
        """The newest committed step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The committed step with the best finite `best_metric`, or None."""
        self._check_open()
        return best_step(
            self._store.checkpoints(), self._retention, temporary=self._store.temporary_steps()
        )

    def metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved with `step` (None if it was saved without any).

        Raises:
            StepNotFoundError: `step` is not committed on disk.
        """
        step = _validate.step(step)
        self._require_step(step, self.all_steps())
        return self._store.metrics(step)

    # ------------------------------------------------------------------------- save
    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` would save now under `save_every`, `save_interval_s`
        and `temporary_interval_s` (always True without them).

        Ask first when the metrics cost something to compute:
        `if ck.should_save(step): ck.save(step, {"loss": evaluate()})`.

        Raises:
            InvalidStepError: `step` is not a non-negative integer.
            CheckpointerClosedError: the Checkpointer is closed.
        """
        self._check_open()
        step = _validate.step(step)
        if step == self._restored_step:
            return False  # `save()` skips the checkpoint just restored
        decision = _policy.decide(self._policy, self._last_save, step, time.monotonic())
        return decision is not _policy.Decision.SKIP

    def save(
        self,
        step: int,
        metrics_dict: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
        force: bool = False,
        temporary: bool | None = None,
    ) -> bool:
        """Start saving the current model and optimizer as `step`; returns without waiting.

        The state is captured when `save()` is called: later training steps, even ones that
        donate their buffers, do not change what is written; so are the `extras` (a copy of
        each state, taken in this call). If the previous save is still being written, this
        call first waits for it (one save is in flight at a time).

        With `save_every`, `save_interval_s` or `temporary_interval_s` set, a call when no
        save is due returns False at once (after checking its arguments), so the loop may
        call `save()` at every step.

        Args:
            step: the training step, a non-negative integer (NumPy and JAX integers work).
            metrics_dict: metric name -> number; must hold `best_metric` unless that is None.
            overwrite: replace `step` if it is already on disk, or allow a step lower than
                the latest one.
            force: save even if the save policy says no save is due.
            temporary: save as a temporary checkpoint (True), kept only until a newer step
                commits, or as a permanent one (False). None (default): temporary when only
                `temporary_interval_s` made the save due, else permanent.

        Returns:
            True if a save was started; False if no save is due under the save policy, or
            if `step` is the checkpoint just restored (nothing new to write).

        Raises:
            InvalidStepError: `step` is not a non-negative integer.
            InvalidArgumentError: `metrics_dict` lacks `best_metric` or holds a non-number,
                or `force` or `temporary` is not a bool; or an extra's state holds a value JSON
                cannot keep (nothing is written).
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
            if not isinstance(force, bool):
                raise InvalidArgumentError(
                    f"force must be True or False, got {force!r}.", name="force", value=force
                )
            if temporary is not None and not isinstance(temporary, bool):
                raise InvalidArgumentError(
                    f"temporary must be True, False or None (the policy decides), got "
                    f"{temporary!r}.",
                    name="temporary",
                    value=temporary,
                )
            now = time.monotonic()
            decision = (
                _policy.Decision.PERMANENT
                if force
                else _policy.decide(self._policy, self._last_save, step, now)
            )
            if decision is _policy.Decision.SKIP:
                return False
            if temporary is None:
                temporary = decision is _policy.Decision.TEMPORARY
            started = time.perf_counter()
            # The extras' non-array state, copied now (the caller's thread is held here).
            extra_states = _extras.capture(self._extras)
            self._finish_pending()
            self._wait_for_others()
            listing = self._store.listing()
            steps = listing.steps
            self._refuse_foreign(listing, step)
            replace = False
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
                replace = True  # the old step goes only once the new one has committed
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
            meta: dict[str, Any] = {"keys": keys}
            if self._extras:
                meta["extras"] = _extras.manifest(self._extras)
            # From setting an old step aside to the save being tracked, a Ctrl-C or SIGTERM
            # would leave a half-started save that no wait knows of: they are delivered once
            # this block, its error handling included, has run.
            with _lifecycle.interrupts_deferred():
                self._start_save(
                    step,
                    tree,
                    meta,
                    metrics,
                    extra_states,
                    replace=replace,
                    temporary=temporary,
                    started=started,
                )
            self._restored_step = None
            self.last_save_seconds = time.perf_counter() - started
            self._last_save = _policy.saved(self._last_save, step, now, temporary=temporary)
            self._telemetry.returned(step, self.last_save_seconds)
            return True

    def _start_save(
        self,
        step: int,
        tree: dict[str, Any],
        meta: dict[str, Any],
        metrics: Mapping[str, float] | None,
        extra_states: Mapping[str, Any],
        *,
        replace: bool,
        temporary: bool,
        started: float,
    ) -> None:
        """Capture `tree`, set an old `step` aside (`replace`), start the save, track it."""
        try:
            snap = None
            if self._store.array_format == 1:  # object stores: TensorStore
                self._pending_bytes = _diagnose.tree_bytes(tree)
            else:
                snap = _format.snapshot(
                    tree,
                    process=jax.process_index(),
                    staging=self._staging,
                    staging_limit=self._staging_limit,
                    pool=self._staging_pool,
                )
                self._pending_bytes = snap.nbytes
            if replace:
                self._store.set_aside(step)
            fmt = 1 if snap is None else 2
            self._telemetry.begin(
                step, started=started, temporary=temporary, fmt=fmt, size=self._pending_bytes
            )
            if snap is None:
                self._store.save_tree(step, tree, meta, metrics, extra_states, temporary=temporary)
            else:
                self._store.save(step, snap, meta, metrics, extra_states, temporary=temporary)
        except TimeoutError:
            self._pending_step = step  # later waits name it, and stay bounded
            raise
        except Exception as exc:
            self._telemetry.abandon(step)
            self._recover_store()
            raise BackgroundWriteError(
                f"could not start saving step {step} to {self.directory}: "
                f"{type(exc).__name__}: {exc}."
                f"{_diagnose.explain(exc, self.directory, self._pending_bytes)}"
                f"{_peer_hint()}",
                step=step,
            ) from exc
        self._pending_step = step

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
        for path, variable in self._variables().items():
            value = _state.value_of(variable)
            if _state.is_key(value):
                keys[path] = _state.key_impl_name(value)
            tree[path] = _state.to_saved(value)
        return tree, keys

    def _variables(self) -> dict[str, Any]:
        """The live leaves: the model's and optimizer's Variables, then the array extras'."""
        return {
            **_state.variables(self.model, self.optimizer),
            **_extras.variables(self._extras),
        }

    def _finish_pending(self) -> None:
        """Wait for the save in flight; turn its failure into a BackgroundWriteError."""
        step = self._pending_step
        try:
            self._wait_bounded()
        except TimeoutError:
            raise
        except Exception as exc:
            self._pending_step = None
            if step is not None:
                self._telemetry.abandon(step)  # no figures for a step that never committed
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
        if self._store.replacing is not None:
            self._store.remove_partial()  # the overwrite committed: its old step goes now

    def _wait_for_others(self) -> None:
        """One save in flight per directory in this process, across Checkpointers too."""
        still = self._store.wait_for_others()
        if still:
            raise TimeoutError(
                f"another Checkpointer on {self.directory} in this process is still saving step "
                f"{', '.join(map(str, still))} after timeout={self._timeout:g} s. Close it (or "
                "call its wait_until_finished()) before saving from this one."
            )

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
        The `extras` are restored with the model, in place; `last_restore_report.extras` says
        which were restored, absent from the checkpoint (they keep their state) or unused.

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
                (the message gives the `rename=` when the paths only moved); or an extra was
                saved as a kind its current object cannot take.
            InvalidArgumentError: a `rename` key names nothing in the current model (the
                message gives the reversed map when that is the likely slip).
            CorruptCheckpointError: the step's files fail their checksums (checked before
                anything is read; without `step`, see `on_corrupt`) or its metadata cannot be
                parsed; the model is unchanged.
            TimeoutError: a save in flight did not finish within `timeout` seconds.
        """
        with self._lock:
            damaged: set[int] = set()
            refetched: set[int] = set()
            if self._promoter is not None:
                self._bring_from_remote(step, best)
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
                    if self._refetch(planned[0].report.step, refetched):
                        continue
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

    # -------------------------------------------------------------------- two tiers
    def _start_promoter(self, policy: _tiers.PromotePolicy, remote_retention: Retention) -> None:
        assert self.remote_path is not None
        promoter = _tiers.Promoter(
            self.directory,
            self.remote_path,
            remote_retention,
            policy,
            is_temporary=self._store.is_temporary,
            local_steps=self._store.all_steps,
            timeout=self._timeout,
            process=jax.process_index(),
            process_count=jax.process_count(),
        )
        self._promoter = promoter
        self._store.pinned = promoter.pinned
        telemetry = self._telemetry.committed

        def committed(step: int) -> None:  # Orbax's finalize thread; never blocks
            try:
                telemetry(step)
            finally:
                promoter.committed(step)

        self._store.on_commit = committed

    def _require_tiers(self, what: str) -> str:
        if self.remote_path is None:
            raise InvalidArgumentError(
                f"{what}() needs a two-tier Checkpointer: create it with local_path=<a local "
                "folder> and checkpoint_path=<the remote tier>.",
                name="local_path",
                value=None,
            )
        return self.remote_path

    def _bring_from_remote(self, step: int | None, best: bool) -> None:
        """Before a restore: copy the step to read from the remote tier when it is newer
        than the newest intact local step (or missing or damaged locally)."""
        self._check_open()
        assert self.remote_path is not None
        if step is not None and best:
            return  # refused by the restore itself, before anything is fetched
        if step is not None:
            step = _validate.step(step)
        if self._pending_step is not None:
            self._finish_pending()
        local_steps = self._store.all_steps()

        def intact(candidate: int) -> bool:
            return _integrity.check(self._store.step_dir(candidate), candidate, deep=False).ok

        def best_of(remote: list[tuple[int, Mapping[str, float] | None]]) -> int | None:
            # The best of both tiers (a remote step wins only where the local tier lacks it).
            fetched = {s for s, _ in remote}
            local = [(s, m) for s, m in self._store.checkpoints() if s not in fetched]
            return best_step(
                [*local, *remote], self._retention, temporary=self._store.temporary_steps()
            )

        many = jax.process_count() > 1
        if not many or jax.process_index() == 0:
            # then restored by the ordinary path, from the local tier
            _tiers.bring_for_restore(
                self.remote_path,
                self.directory,
                local_steps=local_steps,
                intact=intact,
                step=None if best else step,
                timeout=self._timeout,
                seen=None if self._promoter is None else self._promoter.on_remote,
                best=best_of if best and self._retention.best_metric is not None else None,
            )
        if many:
            # The local tier is one folder of the job (as any format-2 step of a
            # multi-process job): process 0 fetched into it; the others wait for it.
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("roxxel-tiers-fetch")

    def _refetch(self, step: int, refetched: set[int]) -> bool:
        """A local step failed its shard checksums while read: replace it with the remote copy."""
        if self.remote_path is None or step in refetched or jax.process_count() > 1:
            return False  # many processes: each reads its own shards; no job-wide re-fetch
        refetched.add(step)
        fetched = _tiers.bring_for_restore(
            self.remote_path,
            self.directory,
            local_steps=self._store.all_steps(),
            intact=lambda candidate: candidate != step,
            step=step,
            timeout=self._timeout,
        )
        if fetched is None:
            return False
        if self._promoter is not None:
            self._promoter.on_remote.add(fetched)
        logger.warning(
            "roxxel: step %d in %s was damaged; restoring the copy from the remote tier %s",
            step,
            self.directory,
            self.remote_path,
        )
        return True

    def _refuse_foreign(self, listing: _directory.Listing, step: int) -> None:
        """Refuse a save whose folder holds something Roxxel did not write: it is never removed."""
        folder = listing.folder(step)
        ignored = [i for i in listing.ignored if i.name == str(step)]
        if folder is not None and folder.layout != "roxxel":
            what = f"a checkpoint written by Orbax without Roxxel ({folder.name or '.'})"
        elif ignored:
            what = f"a folder Roxxel did not write ({ignored[0].reason})"
        else:
            return
        raise StepExistsError(
            f"cannot save step {step} in {self.directory}: its folder {step}/ holds {what}. "
            "Roxxel never overwrites or deletes what it did not write. Save a higher step, "
            "move that folder away, or use another checkpoint_path.",
            step=step,
        )

    def _choose_step(self, step: int | None, best: bool, exclude: set[int]) -> int | None:
        if best and step is not None:
            raise InvalidArgumentError(
                "pass either step= or best=True to restore(), not both.", name="best", value=best
            )
        if step is not None:
            step = _validate.step(step)
        return _directory.choose_step(
            self._store.listing(),
            step=step,
            best=best,
            best_metric=self._retention.best_metric,
            best_step=lambda: best_step(
                self._store.checkpoints(), self._retention, temporary=self._store.temporary_steps()
            ),
            exclude=exclude,
        )

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
                (s for s in self._store.listing().steps if s < chosen and s not in exclude),
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
    ) -> tuple[_restore.RestorePlan, dict[str, _state.LeafSpec], _extras.ExtrasPlan] | None:
        self._check_open()
        _inplace.check_options(on_mismatch, allow_partial)
        renames = _restore.check_rename(rename)
        if self._pending_step is not None:
            self._finish_pending()
        chosen = self._choose_step(step, best, exclude)
        chosen = self._verified(chosen, may_fall_back=step is None and not best, exclude=exclude)
        if chosen is None:
            self.last_restore_report = None
            ignored = self._store.listing().ignored
            if ignored:
                logger.warning(
                    "roxxel: nothing to restore in %s: its step-named folders are not "
                    "checkpoints Roxxel wrote or can read, and are left alone: %s",
                    self.directory,
                    "; ".join(f"{i.name}/: {i.reason}" for i in ignored[:5]),
                )
            return None
        live = self._variables()
        saved = self._store.leaf_specs(chosen)
        foreign = self._store.foreign(chosen) is not None
        extras = _extras.plan(
            chosen,
            self._extras,
            {} if foreign else self._store.meta(chosen).get("extras", {}),
            lambda: self._store.extras(chosen),
            path=self._store.step_dir(chosen),
        )
        planned = _inplace.plan(
            live,
            chosen,
            saved,
            rename=renames,
            on_mismatch=on_mismatch,
            allow_partial=allow_partial,
            where=self.directory,
            extras=extras.outcome,
            **({"layout": self._store.source(chosen)} if foreign else {}),
        )
        return planned, saved, extras

    def _apply(
        self,
        planned: _restore.RestorePlan,
        saved: dict[str, _state.LeafSpec],
        extras: _extras.ExtrasPlan,
    ) -> None:
        """Read the planned leaves, convert them all, then set them: all or nothing."""
        step = planned.report.step
        report = _inplace.apply(
            self._variables(),
            planned,
            saved,
            lambda t: self._store.read(step, t),
            before_set=extras.apply,  # puts back what it set if one of them fails
        )
        self.last_restore_report = report
        self._restored_step = step
        self._last_save = _policy.restored(step, time.monotonic())
        level = logging.INFO if report.exact and report.all_params_restored else logging.WARNING
        logger.log(level, "roxxel: restored %s", report.summary())

    # ------------------------------------------------------------------- preemption
    def reached_preemption(self, step: int, metrics_dict: Mapping[str, Any] | None = None) -> bool:
        """Whether training should stop at `step` for a preemption, agreed by every process.

        Call it once per training step, after the step. In a multi-process job it is a
        collective: every process calls it at every step with the same `step`, and once any
        process got a SIGTERM (or called `request_preemption()`), it answers True on every
        process at the same step, the step after the highest one any process had reached
        (JAX's preemption sync point; about 0.3 us a call otherwise). In a single process it
        answers `preemption_requested`. After the agreed step it keeps answering True.

        With `on_sigterm="flag"` the loop then calls `final_save(step, ...)` and stops. With
        `on_sigterm="exit"` this call does that itself: it saves `step` with `metrics_dict`
        on every process, waits for the commit, and exits with status 143.

        Args:
            step: the current training step (below 2**31 in a multi-process job).
            metrics_dict: the metrics of the final save made with `on_sigterm="exit"`.

        Returns:
            True when every process is to stop at this step.

        Raises:
            InvalidArgumentError: `on_sigterm="exit"` needs `metrics_dict` (it must hold
                `best_metric`) and none was given; raised at the first call.
            PreemptionSyncError: a multi-process job without JAX's preemption service.
            SystemExit: with `on_sigterm="exit"`, at the agreed step, after the final save.
        """
        if type(step) is not int or step < 0:  # the common case skips the 7 us check
            step = _validate.step(step)
        if (
            self._on_sigterm_mode == "exit"
            and metrics_dict is None
            and self._retention.best_metric is not None
        ):
            _validate.metrics(metrics_dict, best_metric=self._retention.best_metric)
        if _preemption.multi_process():
            stop = _preemption.reached(step)
        else:
            stop = self.preemption_requested
        if not stop:
            return False
        self.preemption_requested = True
        if self._on_sigterm_mode == "exit":
            self.final_save(step, metrics_dict)
            logger.warning(
                "roxxel: preempted; step %d is committed, exiting with status %d",
                step,
                _lifecycle.SIGTERM_EXIT_CODE,
            )
            raise SystemExit(_lifecycle.SIGTERM_EXIT_CODE)
        return True

    def request_preemption(self) -> None:
        """Report a preemption notice from your own code, as a scheduler's SIGTERM would.

        For notices that do not come as a signal (a cloud's maintenance event, a deadline).
        In a single process it sets `preemption_requested`. In a multi-process job it sends
        this process a SIGTERM, which JAX's preemption notifier turns into a notice for every
        process; `reached_preemption()` then agrees on the step. Either way nothing stops
        here: the loop acts on it.

        Raises:
            PreemptionSyncError: a multi-process job where SIGTERM does not reach JAX's
                notifier (its service is off, or a Python SIGTERM handler replaced it).
        """
        self._check_open()
        if _preemption.multi_process():
            _preemption.notify()
        else:
            self.preemption_requested = True

    # -------------------------------------------------------------------- lifecycle
    def final_save(self, step: int, metrics_dict: Mapping[str, Any] | None = None) -> int:
        """Save the current state as `step`, wait until it is committed, then close.

        The call to make once when training stops, for whatever reason: the loop finished,
        or `preemption_requested` became True after a SIGTERM (with `on_sigterm="flag"`).
        If `step` is already on disk or is the save in flight, nothing new is written.
        Waiting is bounded by `timeout`. In a multi-process job it is a collective: every
        process calls it with the same step (after `reached_preemption()` agreed on it).

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
                    self.save(step, metrics_dict, force=True)  # due whatever the policy
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
                if self._promoter is not None:
                    self._promoter.close(self._promote_grace)
                self._telemetry.close(self._timeout)  # the queued on_commit calls
                self._staging_pool = _format.StagingPool()  # give its memory back now
                _lifecycle.untrack(self)
                try:
                    if self._store.replacing is not None:  # e.g. interrupted in save()
                        self._store.remove_partial()
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


def _tier_options(
    local_path: str | None,
    *,
    read_only: bool,
    promote_every: int | None,
    promote_interval_s: float | None,
    remote_max_to_keep: int | None,
    promote_grace_s: float,
) -> tuple[_tiers.PromotePolicy, int | None] | None:
    """Check the two-tier options; the promotion policy and the remote tier's max_to_keep."""
    if local_path is None:
        given = [
            name
            for name, value, default in (
                ("promote_every", promote_every, None),
                ("promote_interval_s", promote_interval_s, None),
                ("remote_max_to_keep", remote_max_to_keep, 1),
                ("promote_grace_s", promote_grace_s, 60.0),
            )
            if value != default
        ]
        if given:
            raise InvalidArgumentError(
                f"{given[0]} applies to two-tier checkpointing only: pass local_path=<a local "
                "folder> as well (checkpoint_path is then the remote tier), or drop it.",
                name=given[0],
                value=locals()[given[0]],
            )
        return None
    if not isinstance(local_path, str) or _paths.is_url(local_path):
        raise InvalidArgumentError(
            f"local_path must be a local folder such as '/local/ckpt', got {local_path!r}.",
            name="local_path",
            value=local_path,
        )
    if read_only:
        raise InvalidArgumentError(
            "read_only=True with local_path: a read-only Checkpointer has one tier. Open the "
            "remote tier (or the local folder) alone with read_only=True.",
            name="read_only",
            value=read_only,
        )
    every = _validate.count(promote_every, name="promote_every", minimum=1, allow_none=True)
    interval = _optional_seconds(promote_interval_s, "promote_interval_s")
    if interval is not None and jax.process_count() > 1:
        raise InvalidArgumentError(
            "promote_interval_s in a multi-process job: each process would decide by its own "
            "clock, and a step counts as promoted only when every process uploaded it. Use "
            "promote_every=N instead.",
            name="promote_interval_s",
            value=promote_interval_s,
        )
    _validate.positive_seconds(promote_grace_s, name="promote_grace_s")
    keep = _validate.count(
        remote_max_to_keep, name="remote_max_to_keep", minimum=1, allow_none=True
    )
    policy = _tiers.PromotePolicy(
        every=1 if every is None and interval is None else every, interval_s=interval
    )
    return policy, keep


def _optional_seconds(value: object, name: str) -> float | None:
    return None if value is None else _validate.positive_seconds(value, name=name)


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
