"""A model moved into (or out of) a parent module is never half-restored without a word.

Saving a bare model and restoring into one wrapped as `self.inner = MLP(...)` (or the reverse)
changes every path by a leading component. Such a restore matches none of the parameters: it
is refused with the exact `rename=` to pass, and that rename restores everything bit for bit.
An explicit `allow_partial=True` restores what matches, never the optimizer's counters alone.
The pure planner's prefix detection is tested at the end, without disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import MLP, make, state_arrays, train_steps
from roxxel._restore import mirrors, plan, prefix_candidates, saved_name
from roxxel._state import LeafSpec
from roxxel.checkpoint import Checkpointer, RestoreMismatchError

WRAPPED = {"model/inner": "model"}  # current wrapped, saved bare
UNWRAPPED = {"model": "model/inner"}  # current bare, saved wrapped


class Wrapper(nnx.Module):
    """The MLP moved under a parent module; `epoch` is a non-parameter at the top."""

    def __init__(self, seed: int, *, epoch: bool = False) -> None:
        self.inner = MLP(nnx.Rngs(seed))
        if epoch:
            self.epoch = nnx.Variable(jnp.array(seed, jnp.int32))

    def __call__(self, x: Any) -> Any:
        return self.inner(x)


def wrapped(seed: int, **kwargs: Any) -> tuple[Wrapper, nnx.Optimizer[Wrapper]]:
    model = Wrapper(seed, **kwargs)
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


def save(directory: Path, model: nnx.Module, optimizer: nnx.Optimizer[Any]) -> dict[str, Any]:
    train_steps(model, optimizer, 3)  # type: ignore[arg-type]
    with Checkpointer(str(directory), model, optimizer) as ck:
        ck.save(3, {"loss": 1.0})
    return state_arrays(model, optimizer)


def strip(path: str) -> str:
    """The bare model's path for a wrapped one (`inner/` removed once)."""
    return path.replace("/inner/", "/", 1)


def restore_record(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    (record,) = [
        r
        for r in caplog.records
        if r.name == "roxxel" and r.getMessage().startswith("roxxel: restored")
    ]
    return record


@pytest.mark.parametrize("direction", ["bare-to-wrapped", "wrapped-to-bare"])
def test_a_moved_model_is_refused_with_the_rename_that_restores_it_bit_exactly(
    tmp_path: Path, direction: str
) -> None:
    model: nnx.Module
    optimizer: nnx.Optimizer[Any]
    if direction == "bare-to-wrapped":
        saved = save(tmp_path, *make(0))
        model, optimizer = wrapped(1)
        rename, moved = WRAPPED, "paths under model/ gained a leading inner/"
    else:
        saved = save(tmp_path, *wrapped(0))
        model, optimizer = make(1)
        rename, moved = UNWRAPPED, "paths under model/ lost a leading inner/"
    before = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)

    with pytest.raises(RestoreMismatchError) as info:
        ck.restore()
    message = str(info.value)
    assert "none of the model's 4 parameters (nnx.Param) is in the checkpoint" in message
    assert moved in message
    assert f"rename={rename!r}" in message
    assert "allow_partial=True" in message
    report = info.value.report
    assert report is not None and not report.applied
    assert report.suggested_rename == rename
    assert (report.params_restored, report.params_total) == (0, 4)
    assert set(report.withheld) == {"optimizer/step", "optimizer/opt_state/0/count"}
    # Nothing was changed, not even the optimizer's step.
    assert_all_equal(state_arrays(model, optimizer), before)
    assert ck.last_restore_report is None and int(optimizer.step.get_value()) == 0

    # The suggestion, passed as given, restores every leaf, the optimizer's moments included.
    assert ck.restore(rename=report.suggested_rename) == 3
    done = ck.last_restore_report
    assert done is not None and done.applied
    assert not (done.missing or done.unused or done.mismatched or done.withheld)
    assert (done.params_restored, done.params_total) == (4, 4)
    now = state_arrays(model, optimizer)
    assert set(done.restored) == set(now)
    source = strip if direction == "bare-to-wrapped" else moved_in
    for path in now:
        assert done.renamed.get(path, path) == source(path), path
        np.testing.assert_array_equal(now[path], saved[source(path)], err_msg=path)
    assert int(optimizer.step.get_value()) == 3


def moved_in(path: str) -> str:
    """The wrapped model's path for a bare one."""
    if path.startswith("model/"):
        return "model/inner/" + path[len("model/") :]
    for state in ("mu", "nu"):
        marker = f"/{state}/"
        if marker in path:
            head, tail = path.split(marker, 1)
            return f"{head}{marker}inner/{tail}"
    return path


def assert_all_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def test_plan_restore_shows_the_same_suggestion_without_raising(tmp_path: Path) -> None:
    save(tmp_path, *make(0))
    model, optimizer = wrapped(1)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    report = ck.plan_restore()
    assert report is not None and report.suggested_rename == WRAPPED
    assert report.summary() == (
        "step (not applied) 3: restored 0, missing 12, unused 12, withheld 2; none of the 4 "
        "model parameters restored; some missing leaves are on disk under another name: "
        "restore with rename={'model/inner': 'model'}"
    )
    checked = ck.plan_restore(rename=WRAPPED)
    assert checked is not None and checked.params_restored == checked.params_total == 4


def test_allow_partial_restores_what_matches_but_never_the_counters_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Saved wrapped with a top-level `epoch`; restored into another wrapper whose MLP sits
    # under a different name, so only `epoch` still matches.
    source, source_opt = wrapped(0, epoch=True)
    source.epoch.set_value(jnp.array(41, jnp.int32))
    saved = save(tmp_path, source, source_opt)

    class Renamed(nnx.Module):
        def __init__(self) -> None:
            self.body = MLP(nnx.Rngs(1))
            self.epoch = nnx.Variable(jnp.array(0, jnp.int32))

    model = Renamed()
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    before = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    with pytest.raises(RestoreMismatchError, match="none of the model's 4 parameters"):
        ck.restore()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="roxxel"):
        assert ck.restore(allow_partial=True) == 3
    report = ck.last_restore_report
    assert report is not None and report.applied
    assert report.restored == ("model/epoch",)
    assert int(model.epoch.get_value()) == 41 == int(saved["model/epoch"])
    # The optimizer's counters are on disk and fit, but are withheld, with the reason.
    assert set(report.withheld) == {"optimizer/step", "optimizer/opt_state/0/count"}
    assert "no parameter or optimizer moment" in report.withheld["optimizer/step"]
    assert int(optimizer.step.get_value()) == 0
    now = state_arrays(model, optimizer)
    for path in set(now) - {"model/epoch"}:
        np.testing.assert_array_equal(now[path], before[path], err_msg=path)
    assert (report.params_restored, report.params_total) == (0, 4)
    assert "withheld    optimizer/step" in str(report)
    assert report.to_dict()["params_total"] == 4
    record = restore_record(caplog)
    assert record.levelno == logging.WARNING
    assert "none of the 4 model parameters restored" in record.getMessage()
    assert "withheld 2" in record.getMessage()
    # The one-name rename is suggested (body <- inner), and it restores the rest.
    assert report.suggested_rename == {"body": "inner"}


def test_a_partial_restore_states_the_fraction_and_logs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save(tmp_path, *make(0))
    model, optimizer = make(1, hidden=16)  # the encoder and head's kernel changed shape
    ck = Checkpointer(str(tmp_path), model, optimizer)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="roxxel"):
        ck.restore(on_mismatch="skip")  # some parameters match: no allow_partial needed
    report = ck.last_restore_report
    assert report is not None
    assert (report.params_restored, report.params_total) == (1, 4)  # model/head/bias
    assert "optimizer/step" in report.restored and not report.withheld
    assert "1 of 4 model parameters restored (25%)" in report.summary()
    record = restore_record(caplog)
    assert record.levelno == logging.WARNING
    assert "1 of 4 model parameters restored (25%)" in record.getMessage()


def test_a_full_restore_counts_every_parameter(tmp_path: Path) -> None:
    save(tmp_path, *make(0))
    model, optimizer = make(1, extra=True)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    ck.restore()
    report = ck.last_restore_report
    assert report is not None
    assert (report.params_restored, report.params_total) == (4, 6)
    assert not report.all_params_restored
    assert "4 of 6 model parameters restored (67%)" in report.summary()


# ------------------------------------------------------------------- the pure planner
F = LeafSpec((4, 8), "float32")
B = LeafSpec((8,), "float32")
STEP = LeafSpec((), "int32")


def tree(prefix: str) -> dict[str, LeafSpec]:
    """A model with two layers at `model/<prefix>` and Adam's state for them."""
    leaves: dict[str, LeafSpec] = {}
    for root in ("model/", "optimizer/opt_state/0/mu/", "optimizer/opt_state/0/nu/"):
        for layer in ("encoder", "head"):
            leaves[f"{root}{prefix}{layer}/kernel"] = F
            leaves[f"{root}{prefix}{layer}/bias"] = B
    leaves["optimizer/step"] = STEP
    leaves["optimizer/opt_state/0/count"] = STEP
    return leaves


def params_of(leaves: dict[str, LeafSpec]) -> set[str]:
    return {p for p in leaves if p.startswith("model/")}


@pytest.mark.parametrize(
    ("saved_prefix", "current_prefix", "expected"),
    [
        ("", "inner/", {"model/inner": "model"}),
        ("inner/", "", {"model": "model/inner"}),
        ("", "a/b/", {"model/a/b": "model"}),
        ("wrap/", "wrap/inner/", {"model/wrap/inner": "model/wrap"}),
    ],
    ids=["wrapped", "unwrapped", "two-levels", "deeper"],
)
def test_prefix_changes_are_detected_and_the_suggestion_restores_everything(
    saved_prefix: str, current_prefix: str, expected: dict[str, str]
) -> None:
    saved, current = tree(saved_prefix), tree(current_prefix)
    report = plan(3, saved, current, params=params_of(current)).report
    assert report.suggested_rename == expected
    assert report.params_restored == 0 and report.params_total == 4
    assert set(report.withheld) == {"optimizer/step", "optimizer/opt_state/0/count"}
    assert not set(report.withheld) & set(report.restored)
    # Every current leaf is in exactly one group.
    groups = [*report.restored, *report.missing, *report.mismatched, *report.withheld]
    assert sorted(groups) == sorted(current)
    fixed = plan(3, saved, current, rename=expected, params=params_of(current)).report
    assert set(fixed.restored) == set(current) and not fixed.unused and not fixed.withheld
    assert fixed.params_restored == 4
    assert fixed.renamed[f"optimizer/opt_state/0/nu/{current_prefix}head/bias"] == (
        f"optimizer/opt_state/0/nu/{saved_prefix}head/bias"
    )


def test_an_unwrapping_rename_reaches_the_optimizer_only_through_its_mirror() -> None:
    current = tree("")
    mirrored = mirrors(current)
    assert mirrored["optimizer/opt_state/0/mu/encoder/kernel"] == 4
    assert "optimizer/step" not in mirrored and "optimizer/opt_state/0/count" not in mirrored
    path = "optimizer/opt_state/0/mu/encoder/kernel"
    assert saved_name(path, UNWRAPPED, mirror=4) == "optimizer/opt_state/0/mu/inner/encoder/kernel"
    assert saved_name(path, UNWRAPPED) == path  # without the mirror: no place to insert
    # Counters never move with a model rename.
    assert saved_name("optimizer/opt_state/0/count", UNWRAPPED) == "optimizer/opt_state/0/count"


def test_prefix_candidates_need_equal_shapes_and_never_move_the_leaf_name() -> None:
    saved = {"model/encoder/kernel": F, "model/kernel": F}
    current = {"model/inner/encoder/kernel": LeafSpec((4, 16), "float32")}
    assert prefix_candidates(current, saved, saved, current) == []  # shapes differ
    current = {"model/inner/encoder/kernel": F}
    # `model/kernel` pairs too (dropping inner/encoder/), but with fewer votes than the real
    # wrapper once more leaves agree.
    found = prefix_candidates(current, saved, saved, current)
    assert {"model/inner": "model"} in found and {"model/inner/encoder": "model"} in found
    saved = {"model/encoder/kernel": F, "model/encoder/bias": B, "model/kernel": F}
    current = {"model/inner/encoder/kernel": F, "model/inner/encoder/bias": B}
    assert prefix_candidates(current, saved, saved, current)[0] == {"model/inner": "model"}


def test_a_partial_match_keeps_the_counters_and_reports_the_fraction() -> None:
    saved, current = tree(""), tree("")
    current["model/encoder/kernel"] = LeafSpec((4, 16), "float32")
    del current["model/head/kernel"]
    del current["model/head/bias"]
    report = plan(3, saved, current, params=params_of(current)).report
    assert (report.params_restored, report.params_total) == (1, 2)
    assert "optimizer/step" in report.restored and not report.withheld
    assert "1 of 2 model parameters restored (50%)" in report.summary()


def test_without_parameters_known_nothing_is_counted_but_counters_still_need_state() -> None:
    report = plan(3, tree(""), tree("inner/")).report
    assert report.params_total == 0 and "parameters" not in report.summary()
    assert set(report.withheld) == {"optimizer/step", "optimizer/opt_state/0/count"}
    exact = plan(3, tree(""), tree("")).report
    assert exact.exact and not exact.withheld
