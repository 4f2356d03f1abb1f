"""Restoring saved leaves into a live model and optimizer, whatever holds them.

`Checkpointer.restore()` (a checkpoint step) and `load_weights()` (a safetensors file) differ
only in where the saved leaves' specs and arrays come from. Both plan with `_restore.plan`
against the live Variables, refuse the same way, and apply the same way: every planned leaf is
read into the current dtype and sharding of the value it replaces (`_state.read_target`),
converted, and only then set, so a failure anywhere leaves the model as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from . import _restore, _state, _validate
from ._errors import InvalidArgumentError, RestoreMismatchError

Reader = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""Reads `{saved path: target}` (see `_state.read_target`) into `{saved path: array}`."""


def check_options(on_mismatch: object, allow_partial: object) -> None:
    """Validate `on_mismatch` and `allow_partial` as `restore()` takes them."""
    _validate.choice(on_mismatch, name="on_mismatch", options=("error", "skip"))
    if not isinstance(allow_partial, bool):
        raise InvalidArgumentError(
            f"allow_partial must be True or False, got {allow_partial!r}.",
            name="allow_partial",
            value=allow_partial,
        )


def plan(
    live: Mapping[str, nnx.Variable[Any]],
    step: int,
    saved: Mapping[str, _state.LeafSpec],
    *,
    rename: Mapping[str, str],
    on_mismatch: str,
    allow_partial: bool,
    where: str,
    **report_fields: Any,
) -> _restore.RestorePlan:
    """Plan restoring `saved` into the live `model` and `optimizer`; refuse what must be.

    Args:
        live: the live Variables by path (`_state.variables`, plus any array extras).
        step: the step for the report.
        saved: the specs of the saved leaves, by path.
        rename: a checked `{current name: saved name}` map.
        on_mismatch: "error" raises for leaves whose shape differs; "skip" plans the rest.
        allow_partial: plan even when none of the model's parameters matches.
        where: the directory (or file) named in error messages.
        report_fields: set on the report before anything is refused: `source` (the weights
            file of `load_weights`), `layout` (a migrated step), `extras` (their outcome).

    Raises:
        RestoreMismatchError: a shape differs and `on_mismatch="error"`, or no parameter
            matches and `allow_partial` is False. Nothing was read or changed.
        InvalidArgumentError: a `rename` key names nothing in the current model.
    """
    current = {path: _state.spec_of(variable.get_value()) for path, variable in live.items()}
    params = {
        path
        for path, variable in live.items()
        if path.startswith("model/") and isinstance(variable, nnx.Param)
    }
    planned = _restore.plan(step, saved, current, rename=rename, params=params)
    if report_fields:
        planned = dataclasses.replace(
            planned, report=dataclasses.replace(planned.report, **report_fields)
        )
    report = planned.report
    if report.mismatched and on_mismatch == "error":
        raise RestoreMismatchError(
            _restore.mismatch_message(report, where),
            mismatched=dict(report.mismatched),
            report=report,
        )
    if report.params_total and not report.params_restored and not allow_partial:
        raise RestoreMismatchError(
            _restore.no_params_message(report, where),
            mismatched=dict(report.mismatched),
            report=report,
        )
    return planned


def apply(
    live: Mapping[str, nnx.Variable[Any]],
    planned: _restore.RestorePlan,
    saved: Mapping[str, _state.LeafSpec],
    read: Reader,
    *,
    before_set: Callable[[], None] | None = None,
) -> _restore.RestoreReport:
    """Read the planned leaves with `read`, convert them all, then set them: all or nothing.

    `before_set` runs once every value is read and converted, just before any is set (the
    extras' states: it undoes its own changes when it fails, so nothing is set then).

    Returns:
        The plan's report with `applied=True`.
    """
    targets = {
        source: _state.read_target(live[path].get_value(), saved[source])
        for path, source in planned.reads.items()
    }
    arrays = read(targets)
    new_values = {}
    for path, source in planned.reads.items():
        current = live[path].get_value()
        spec = _state.spec_of(current)
        new_values[path] = _state.from_saved(arrays[source], current, spec)
    if before_set is not None:
        before_set()
    for path, value in new_values.items():
        live[path].set_value(value)
    return dataclasses.replace(planned.report, applied=True)
