"""Every call into Orbax lives here: one `Store` per checkpoint directory.

The Store owns an Orbax `CheckpointManager` configured for Roxxel:

* retention is decided by `_retention.steps_to_keep` through a preservation policy, so the
  newest checkpoints and the best ones are both kept (Orbax's `best_fn` + `max_to_keep` would
  keep only the best and delete the newest);
* metrics are always written beside each step, so retention works across restarts;
* directories are created synchronously inside the background save (Orbax's asynchronous
  directory creation can leave a 300 s wait behind at interpreter exit);
* the state item is written without compression by default (see `Store.__init__`).

Nothing outside this module imports `orbax`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from . import _paths
from ._retention import Retention, steps_to_keep
from ._state import LeafSpec, flatten, nest

logger = logging.getLogger("roxxel")

STATE_ITEM = "state"
META_ITEM = "roxxel"
FORMAT_VERSION = 1
_TMP_MARKER = ".orbax-checkpoint-tmp"


class _RetentionPolicy:
    """An Orbax preservation policy that defers to `_retention.steps_to_keep`."""

    def __init__(self, retention: Retention) -> None:
        self.retention = retention

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        keep = steps_to_keep([(c.step, c.metrics) for c in checkpoints], self.retention)
        return [c.step in keep for c in checkpoints]


def _ranking_value(retention: Retention) -> Any:
    """Orbax's `best_fn`: must be set for metrics to be written; never ranks NaN as best."""
    worst = math.inf if retention.best_mode == "min" else -math.inf

    def best_fn(metrics: Mapping[str, float]) -> float:
        if retention.best_metric is None:
            return 0.0
        value = metrics.get(retention.best_metric, worst)
        return float(value) if math.isfinite(value) else worst

    return best_fn


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
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_RetentionPolicy(self.retention),
            best_fn=_ranking_value(self.retention),
            best_mode=self.retention.best_mode,
            create=not self.read_only,
            read_only=self.read_only,
            async_options=ocp.AsyncOptions(
                timeout_secs=max(1, math.ceil(self.timeout)),
                create_directories_asynchronously=False,
            ),
        )
        return ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                STATE_ITEM: ocp.PyTreeCheckpointHandler(use_compression=self.compression),
                META_ITEM: ocp.JsonCheckpointHandler(),
            },
        )

    # ----------------------------------------------------------------- what is on disk
    def all_steps(self) -> list[int]:
        """Committed steps, ascending, as they are on disk now."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved with `step`, or None if it has none."""
        try:
            value = self._manager.metrics(step)
        except (FileNotFoundError, ValueError, OSError):
            return None
        if value is None:
            return None
        return {str(k): float(v) for k, v in dict(value).items()}

    def checkpoints(self) -> list[tuple[int, dict[str, float] | None]]:
        """`(step, metrics)` for every committed step, ascending."""
        return [(step, self.metrics(step)) for step in self.all_steps()]

    def leaf_specs(self, step: int) -> dict[str, LeafSpec]:
        """Shape and dtype of every saved leaf of `step`, read from metadata (no array data)."""
        metadata = self._manager.item_metadata(step)
        tree = metadata[STATE_ITEM]
        tree = getattr(tree, "tree", tree)
        meta = self.meta(step)
        keys: Mapping[str, str] = meta.get("keys", {}) if meta else {}
        specs: dict[str, LeafSpec] = {}
        for path, leaf in flatten(tree).items():
            specs[path] = LeafSpec(
                tuple(int(d) for d in leaf.shape), str(np.dtype(leaf.dtype)), keys.get(path)
            )
        return specs

    def meta(self, step: int) -> dict[str, Any]:
        """Roxxel's own record of a step (format version, PRNG key implementations)."""
        result = self._manager.restore(
            step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
        )
        return dict(result[META_ITEM] or {})

    # ----------------------------------------------------------------------- writing
    def save(
        self,
        step: int,
        tree: Mapping[str, Any],
        meta: Mapping[str, Any],
        metrics: Mapping[str, float] | None,
    ) -> None:
        """Start an asynchronous save of `tree`; returns once arrays are handed off."""
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.PyTreeSave(nest(tree)),
                META_ITEM: ocp.args.JsonSave({"format": FORMAT_VERSION, **meta}),
            }
        )
        self._manager.save(step, args=args, metrics=dict(metrics or {}), force=True)

    def delete(self, step: int) -> None:
        """Delete a committed step."""
        self._manager.delete(step)

    def is_saving(self) -> bool:
        return bool(self._manager.is_saving_in_progress())

    def wait(self) -> None:
        """Block until the running save is committed; re-raises its error if it failed."""
        self._manager.wait_until_finished()

    def recover(self) -> None:
        """After a failed background save: drop the broken manager and its partial folders.

        Orbax keeps re-raising a failed save's error from every later wait, so a fresh
        manager is opened; the steps already committed are untouched.
        """
        try:
            self._manager.close()
        except Exception:  # the error was already reported by the caller
            logger.debug("closing the failed Orbax manager raised", exc_info=True)
        self.remove_partial()
        self._manager = self._open()

    def close(self) -> None:
        self._manager.close()

    def remove_partial(self) -> list[str]:
        """Delete folders of saves that never committed (`<step>.orbax-checkpoint-tmp*`)."""
        if self.read_only or _paths.is_url(self.directory) or jax.process_index() != 0:
            return []
        removed = []
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return []
        for entry in entries:
            if _TMP_MARKER in entry.name and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
        if removed:
            logger.info("roxxel: removed unfinished checkpoint folders %s", sorted(removed))
        return removed

    # ----------------------------------------------------------------------- reading
    def read(self, step: int, targets: Mapping[str, jax.ShapeDtypeStruct]) -> dict[str, Any]:
        """Read the saved leaves named in `targets`, placed with the targets' shardings."""
        if not targets:
            return {}
        item = nest(dict(targets))
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
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
