"""When a save is due: pure functions over (policy, the last save, step, time), no disk.

A Checkpointer with a policy is called at every step (`ck.save(step, metrics)`) and saves only
when a save is due; the rest of the calls return False at once. A save is due at step `s`,
time `t` when any of these holds:

* nothing was saved or restored yet by this Checkpointer (the first save is always due, so a
  run has a checkpoint as early as possible);
* `s` is a multiple of `save_every` (saved steps line up with `keep_every` milestones
  whatever step a run resumed from, as with Orbax's `save_interval_steps`);
* `save_interval_s` seconds have passed since the last permanent save (or restore);
* `temporary_interval_s` seconds have passed since the last save of any kind (or restore):
  this save is *temporary*, replaced by the next one (Levanter's time-based checkpoints).

A step equal to the last saved (or restored) one is never due: there is nothing new in it. A
lower step is judged by the same rules (the Checkpointer then refuses it with `StepOrderError`
unless `overwrite=True`, instead of skipping it in silence). Forced saves (`force=True`,
`final_save`) skip the policy. Times are `time.monotonic()` seconds, passed in by the caller.
"""

from __future__ import annotations

import dataclasses
import enum

from ._errors import InvalidArgumentError


class Decision(enum.Enum):
    """What to do with one `save()` call."""

    SKIP = "skip"
    PERMANENT = "permanent"
    TEMPORARY = "temporary"


@dataclasses.dataclass(frozen=True)
class SavePolicy:
    """When saves are due. With every field None, every `save()` call saves (no policy).

    Attributes:
        save_every: a save is due at every step that is a multiple of this.
        save_interval_s: a save is due once this many seconds passed since the last
            permanent save.
        temporary_interval_s: a temporary save is due once this many seconds passed since
            the last save of any kind.
    """

    save_every: int | None = None
    save_interval_s: float | None = None
    temporary_interval_s: float | None = None

    @property
    def active(self) -> bool:
        """True when some rule is set (otherwise every call saves)."""
        return (
            self.save_every is not None
            or self.save_interval_s is not None
            or self.temporary_interval_s is not None
        )


@dataclasses.dataclass(frozen=True)
class LastSave:
    """The clock of a policy: the last step saved or restored, and when.

    Attributes:
        step: the last step saved (or restored); None before the first.
        time: when the last save of any kind started (or the restore ran).
        permanent_time: when the last permanent save started (or the restore ran).
    """

    step: int | None = None
    time: float | None = None
    permanent_time: float | None = None


def check(policy: SavePolicy) -> SavePolicy:
    """Refuse a policy whose temporary saves could never happen; return it otherwise.

    A temporary save is due `temporary_interval_s` after the last save of any kind, a
    permanent one `save_interval_s` after the last permanent save, which is never later: with
    `temporary_interval_s >= save_interval_s` the permanent save always comes due first.
    """
    temporary, permanent = policy.temporary_interval_s, policy.save_interval_s
    if temporary is not None and permanent is not None and temporary >= permanent:
        raise InvalidArgumentError(
            f"temporary_interval_s={temporary:g} is not shorter than save_interval_s="
            f"{permanent:g}: a permanent save would always come due first, so no temporary "
            "checkpoint would ever be made. Make temporary_interval_s shorter (e.g. "
            f"temporary_interval_s={permanent / 4:g}), or drop one of the two.",
            name="temporary_interval_s",
            value=temporary,
        )
    return policy


def decide(policy: SavePolicy, last: LastSave, step: int, now: float) -> Decision:
    """Whether a save is due at `step`, time `now`, and if so of which kind.

    Args:
        policy: the rules.
        last: the last step saved or restored, and when.
        step: the step of this call.
        now: the current `time.monotonic()`.

    Returns:
        `PERMANENT` when a permanent rule (or the first save) makes it due, else `TEMPORARY`
        when only the temporary interval does, else `SKIP`. Without any rule, `PERMANENT`.
    """
    if not policy.active:
        return Decision.PERMANENT
    if last.step is None or last.time is None:
        return Decision.PERMANENT
    if step == last.step:
        return Decision.SKIP
    if policy.save_every is not None and step % policy.save_every == 0:
        return Decision.PERMANENT
    since_permanent = now - (last.time if last.permanent_time is None else last.permanent_time)
    if policy.save_interval_s is not None and since_permanent >= policy.save_interval_s:
        return Decision.PERMANENT
    if policy.temporary_interval_s is not None and now - last.time >= policy.temporary_interval_s:
        return Decision.TEMPORARY
    return Decision.SKIP


def saved(last: LastSave, step: int, now: float, *, temporary: bool) -> LastSave:
    """The clock after a save of `step` started at `now`."""
    return LastSave(step=step, time=now, permanent_time=last.permanent_time if temporary else now)


def restored(step: int, now: float) -> LastSave:
    """The clock after restoring `step` at `now`: the state is that checkpoint, so the
    intervals count from the restore and `step` itself is not due again."""
    return LastSave(step=step, time=now, permanent_time=now)
