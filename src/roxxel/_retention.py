"""Which checkpoints to keep: pure functions over (step, metrics), no disk and no Orbax.

A checkpoint is kept when any of these holds:

* it is among the `max_to_keep` newest steps (for resuming);
* it is among the `keep_best` best steps by `best_metric` (never lost to recency);
* its step is a multiple of `keep_every` (kept forever, like Orbax's `EveryNSteps`);
* it is the newest step of all (resuming always has a checkpoint to go back to).

A *temporary* step (saved by a time-based policy, `_policy`, or with `temporary=True`) is kept
only while it is the newest step: it never counts against `max_to_keep`, is never best and
never a milestone, and it goes once a newer step commits. Orbax asks the policy when the newer
step's save starts and deletes after that step commits, so a temporary step is never deleted
before its replacement is on disk.

Only finite metric values can be best: NaN and infinities rank after every finite value, so a
diverged run never evicts a good checkpoint. Ties go to the earlier step, as in Lightning's
`ModelCheckpoint`, which replaces a kept checkpoint only with a strictly better one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

BestMode = Literal["min", "max"]


@dataclasses.dataclass(frozen=True)
class Retention:
    """The retention rules of a Checkpointer.

    Attributes:
        max_to_keep: how many of the newest checkpoints to keep; None keeps all.
        keep_best: how many of the best checkpoints (by `best_metric`) to keep as well.
        best_metric: the metric that ranks checkpoints, or None to rank none.
        best_mode: "min" when lower is better (a loss), "max" when higher is (an accuracy).
        keep_every: keep every step that is a multiple of this forever; None keeps none.
    """

    max_to_keep: int | None = 3
    keep_best: int = 1
    best_metric: str | None = "loss"
    best_mode: BestMode = "min"
    keep_every: int | None = None


def metric_of(metrics: Mapping[str, float] | None, retention: Retention) -> float | None:
    """The finite value that ranks a checkpoint, or None if it cannot be ranked."""
    if retention.best_metric is None or metrics is None:
        return None
    value = metrics.get(retention.best_metric)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def ranked_best(
    checkpoints: Sequence[tuple[int, Mapping[str, float] | None]],
    retention: Retention,
    *,
    temporary: Collection[int] = (),
) -> list[int]:
    """Permanent steps with a finite metric, best first; ties keep the earlier step first."""
    scored = []
    for step, metrics in checkpoints:
        if step in temporary:
            continue
        value = metric_of(metrics, retention)
        if value is not None:
            scored.append((value if retention.best_mode == "min" else -value, step))
    scored.sort()
    return [step for _, step in scored]


def best_step(
    checkpoints: Sequence[tuple[int, Mapping[str, float] | None]],
    retention: Retention,
    *,
    temporary: Collection[int] = (),
) -> int | None:
    """The best permanent step, or None if none has a finite value of the metric."""
    ranked = ranked_best(checkpoints, retention, temporary=temporary)
    return ranked[0] if ranked else None


def steps_to_keep(
    checkpoints: Sequence[tuple[int, Mapping[str, float] | None]],
    retention: Retention,
    *,
    temporary: Collection[int] = (),
) -> set[int]:
    """The steps that `retention` keeps among `checkpoints` (the rest may be deleted).

    Args:
        checkpoints: `(step, metrics)` of every step, the one being saved included.
        retention: the rules.
        temporary: the steps saved as temporary; only the newest step of all can be one
            that is kept.
    """
    steps = sorted({step for step, _ in checkpoints})
    if not steps:
        return set()
    keep = {steps[-1]}
    permanent = [step for step in steps if step not in temporary]
    if retention.max_to_keep is None:
        keep.update(permanent)
    else:
        keep.update(permanent[-retention.max_to_keep :] if retention.max_to_keep > 0 else [])
    if retention.keep_best > 0:
        ranked = ranked_best(checkpoints, retention, temporary=temporary)
        keep.update(ranked[: retention.keep_best])
    if retention.keep_every is not None:
        keep.update(step for step in permanent if step % retention.keep_every == 0)
    return keep
