"""Restoring a checkpoint into a model whose code changed: what fits is restored, the rest is
reported, and nothing changes silently.

Every case saves a trained v1 model with the public Checkpointer into a real folder, builds the
changed model from a *different* seed (so a leaf left at init is told apart from a restored one),
restores, and compares leaf by leaf.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import assert_same_state, state_arrays
from roxxel.checkpoint import (
    Checkpointer,
    InvalidArgumentError,
    RestoreMismatchError,
    RestoreReport,
)


class Net(nnx.Module):
    """Two layers with configurable names, width and dtype; `extra` adds a third layer."""

    def __init__(
        self,
        rngs: nnx.Rngs,
        *,
        first: str = "encoder",
        hidden: int = 8,
        extra: bool = False,
        head: bool = True,
        dtype: Any = jnp.float32,
    ) -> None:
        self.first = first
        setattr(self, first, nnx.Linear(4, hidden, param_dtype=dtype, rngs=rngs))
        if head:
            self.head = nnx.Linear(hidden, 2, param_dtype=dtype, rngs=rngs)
        if extra:
            self.extra = nnx.Linear(2, 2, param_dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(getattr(self, self.first)(x))
        if hasattr(self, "head"):
            y = self.head(y)
        return self.extra(y) if hasattr(self, "extra") else y


def build(seed: int, **kwargs: Any) -> tuple[Net, nnx.Optimizer[Net]]:
    model = Net(nnx.Rngs(seed), **kwargs)
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


def train(model: Net, optimizer: nnx.Optimizer[Net], n: int) -> None:
    x = jax.random.normal(jax.random.key(7), (16, 4))

    @nnx.jit
    def step(model: Net, optimizer: nnx.Optimizer[Net]) -> None:
        grads = nnx.grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(n):
        step(model, optimizer)


def save_v1(directory: Path, **kwargs: Any) -> dict[str, np.ndarray]:
    """Train v1 for 3 steps, save it as step 3, and return its leaves."""
    model, optimizer = build(0, **kwargs)
    train(model, optimizer, 3)
    with Checkpointer(str(directory), model, optimizer) as ck:
        ck.save(3, {"loss": 1.0})
    return state_arrays(model, optimizer)


def assert_restored(
    report: RestoreReport,
    saved: dict[str, np.ndarray],
    now: dict[str, np.ndarray],
    init: dict[str, np.ndarray],
    rename: dict[str, str] | None = None,
) -> None:
    """Restored leaves equal the saved ones bit for bit; every other leaf equals its init."""
    rename = rename or {}
    for path in report.restored:
        source = report.renamed.get(path, path)
        np.testing.assert_array_equal(now[path], saved[source], err_msg=path)
    for path in set(now) - set(report.restored):
        np.testing.assert_array_equal(now[path], init[path], err_msg=path)


def restore_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "roxxel" and r.getMessage().startswith("roxxel: restored")
    ]


# --------------------------------------------------------------------------- added layer
def test_added_layer_restores_shared_leaves_and_keeps_the_new_layer_at_init(
    tmp_path: Path,
) -> None:
    saved = save_v1(tmp_path)
    model, optimizer = build(1, extra=True)
    init = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    assert ck.restore() == 3
    report = ck.last_restore_report
    assert report is not None and report.applied
    now = state_arrays(model, optimizer)

    assert set(report.restored) == set(saved)  # every saved leaf found its place
    assert report.missing == (
        "model/extra/bias",
        "model/extra/kernel",
        "optimizer/opt_state/0/mu/extra/bias",
        "optimizer/opt_state/0/mu/extra/kernel",
        "optimizer/opt_state/0/nu/extra/bias",
        "optimizer/opt_state/0/nu/extra/kernel",
    )
    assert not (report.unused or report.mismatched or report.cast or report.renamed)
    assert_restored(report, saved, now, init)
    # The optimizer's state for shared parameters is the saved one ...
    assert int(optimizer.step.get_value()) == 3
    assert now["optimizer/opt_state/0/count"] == 3
    assert np.any(now["optimizer/opt_state/0/mu/encoder/kernel"] != 0)
    # ... and for the new layer it stays at init (adam starts from zeros).
    assert not np.any(now["optimizer/opt_state/0/mu/extra/kernel"])
    assert not np.any(now["optimizer/opt_state/0/nu/extra/bias"])
    # The restored model still trains.
    train(model, optimizer, 1)
    assert int(optimizer.step.get_value()) == 4


# ------------------------------------------------------------------------- removed layer
def test_removed_layer_restores_everything_that_remains(tmp_path: Path) -> None:
    saved = save_v1(tmp_path, extra=True)
    model, optimizer = build(1)
    init = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    assert ck.restore() == 3
    report = ck.last_restore_report
    assert report is not None
    now = state_arrays(model, optimizer)

    assert set(report.restored) == set(now)
    assert not report.missing
    assert report.unused == tuple(sorted(p for p in saved if "/extra/" in p))
    assert len(report.unused) == 6
    assert_restored(report, saved, now, init)


# ----------------------------------------------------------------------- renamed attribute
def test_renamed_attribute_without_rename_is_reported_missing_with_a_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = save_v1(tmp_path, first="encoder")
    model, optimizer = build(1, first="enc")
    init = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="roxxel"):
        ck.restore()
    report = ck.last_restore_report
    assert report is not None
    renamed_leaves = {p for p in init if "/enc/" in p}
    assert set(report.missing) == renamed_leaves and len(renamed_leaves) == 6
    assert set(report.unused) == {p for p in saved if "/encoder/" in p}
    assert report.suggested_rename == {"enc": "encoder"}
    assert_restored(report, saved, state_arrays(model, optimizer), init)
    # Never silent: the logged line is a warning that counts the missing leaves and says how
    # to restore them.
    (record,) = restore_lines(caplog)
    assert record.levelno == logging.WARNING
    assert "missing 6" in record.getMessage()
    assert "rename={'enc': 'encoder'}" in record.getMessage()


@pytest.mark.parametrize(
    "rename", [{"enc": "encoder"}, {"model/enc": "model/encoder"}], ids=["name", "path"]
)
def test_renamed_attribute_is_restored_with_a_rename(
    tmp_path: Path, rename: dict[str, str]
) -> None:
    saved = save_v1(tmp_path, first="encoder")
    model, optimizer = build(1, first="enc")
    init = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    ck.restore(rename=rename)
    report = ck.last_restore_report
    assert report is not None
    now = state_arrays(model, optimizer)
    assert report.renamed["model/enc/kernel"] == "model/encoder/kernel"
    # Either form renames the layer in the model and in the optimizer's moments.
    assert not (report.unused or report.missing)
    assert set(report.restored) == set(now)
    assert (
        report.renamed["optimizer/opt_state/0/mu/enc/bias"]
        == "optimizer/opt_state/0/mu/encoder/bias"
    )
    assert_restored(report, saved, now, init)


def test_a_rename_kept_in_the_script_still_restores_checkpoints_saved_under_the_new_name(
    tmp_path: Path,
) -> None:
    # The user adds rename= once and leaves it there; later checkpoints already use "enc".
    model, optimizer = build(0, first="enc")
    train(model, optimizer, 2)
    saved = state_arrays(model, optimizer)
    with Checkpointer(str(tmp_path), model, optimizer) as ck:
        ck.save(2, {"loss": 1.0})
    fresh, fresh_opt = build(1, first="enc")
    ck = Checkpointer(str(tmp_path), fresh, fresh_opt)
    ck.restore(rename={"enc": "encoder"})
    assert ck.last_restore_report is not None and ck.last_restore_report.exact
    assert_same_state(state_arrays(fresh, fresh_opt), saved)


def test_a_rename_written_backwards_is_refused_with_the_fix(tmp_path: Path) -> None:
    save_v1(tmp_path, first="encoder")
    model, optimizer = build(1, first="enc")
    before = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    with pytest.raises(InvalidArgumentError) as info:
        ck.restore(rename={"encoder": "enc"})
    message = str(info.value)
    assert "'encoder'" in message and "current model" in message
    assert "rename={'enc': 'encoder'}" in message
    assert info.value.name == "rename"
    with pytest.raises(InvalidArgumentError, match="'decoder'"):
        ck.plan_restore(rename={"decoder": "dec"})
    assert_same_state(state_arrays(model, optimizer), before)


# --------------------------------------------------------------------------- changed shape
def test_changed_shape_is_an_error_that_names_the_leaf_and_changes_nothing(
    tmp_path: Path,
) -> None:
    save_v1(tmp_path, hidden=8)
    model, optimizer = build(1, hidden=16)
    before = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    with pytest.raises(RestoreMismatchError) as info:
        ck.restore()
    message = str(info.value)
    assert "model/encoder/kernel: saved shape (4, 8), current shape (4, 16)" in message
    assert "model/head/kernel: saved shape (8, 2), current shape (16, 2)" in message
    assert 'on_mismatch="skip"' in message
    assert info.value.mismatched["model/encoder/bias"] == ((8,), (16,))
    assert "model/head/bias" not in info.value.mismatched  # (2,) in both
    report = info.value.report  # the whole report of the refused restore
    assert report is not None and not report.applied and "model/head/bias" in report.restored
    # No half-restored state: not the model, not the optimizer, not even the fitting leaves.
    assert_same_state(state_arrays(model, optimizer), before)
    assert ck.last_restore_report is None


def test_changed_shape_with_skip_restores_the_rest_and_keeps_mismatched_at_init(
    tmp_path: Path,
) -> None:
    saved = save_v1(tmp_path, hidden=8)
    model, optimizer = build(1, hidden=16)
    init = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    assert ck.restore(on_mismatch="skip") == 3
    report = ck.last_restore_report
    assert report is not None
    assert report.mismatched["model/encoder/kernel"] == ((4, 8), (4, 16))
    assert report.mismatched["optimizer/opt_state/0/mu/head/kernel"] == ((8, 2), (16, 2))
    assert set(report.restored) == {
        "model/head/bias",
        "optimizer/opt_state/0/count",
        "optimizer/opt_state/0/mu/head/bias",
        "optimizer/opt_state/0/nu/head/bias",
        "optimizer/step",
    }
    assert_restored(report, saved, state_arrays(model, optimizer), init)


# --------------------------------------------------------------------------- changed dtype
@pytest.mark.parametrize(
    ("saved_dtype", "current_dtype"),
    [(jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.float32)],
    ids=["f32-to-bf16", "bf16-to-f32"],
)
def test_changed_dtype_is_cast_and_reported(
    tmp_path: Path, saved_dtype: Any, current_dtype: Any
) -> None:
    saved = save_v1(tmp_path, dtype=saved_dtype)
    model, optimizer = build(1, dtype=current_dtype)
    init = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    ck.restore()
    report = ck.last_restore_report
    assert report is not None
    now = state_arrays(model, optimizer)
    names = (np.dtype(saved_dtype).name, np.dtype(current_dtype).name)
    floats = {p for p in saved if saved[p].dtype == np.dtype(saved_dtype)}
    assert len(floats) == 12  # 4 parameters, and adam's mu and nu for each
    assert report.cast == dict.fromkeys(sorted(floats), names)
    assert set(report.restored) == set(now)
    for path in now:
        assert now[path].dtype == init[path].dtype, path  # the current model's dtype
        expected = saved[path].astype(now[path].dtype)
        np.testing.assert_array_equal(now[path], expected, err_msg=path)
    assert f"cast {len(floats)}" in report.summary()


# ------------------------------------------------------------------- the report itself
def test_every_restore_logs_one_summary_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_v1(tmp_path)
    model, optimizer = build(1)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="roxxel"):
        ck.restore()
    (record,) = restore_lines(caplog)
    assert record.levelno == logging.INFO  # an exact restore is not a warning
    assert "\n" not in record.getMessage()
    assert record.getMessage() == "roxxel: restored step 3: restored 14"


def test_dry_run_reports_without_touching_the_model(tmp_path: Path) -> None:
    save_v1(tmp_path, hidden=8, extra=True)
    model, optimizer = build(1, hidden=16, first="enc")
    before = state_arrays(model, optimizer)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    report = ck.plan_restore()
    assert report is not None and not report.applied
    assert "model/head/kernel" in report.mismatched  # reported, not raised
    assert len(report.unused) == 12  # the old encoder's 6 leaves and extra's 6
    assert "not applied" in report.summary()
    text = str(report)
    assert "mismatched  model/head/kernel  saved shape (8, 2), current shape (16, 2)" in text
    assert "missing     model/enc/kernel" in text
    assert_same_state(state_arrays(model, optimizer), before)
    assert ck.last_restore_report is None
    # The report is plain data: it converts to a dict of lists (e.g. to dump as JSON).
    data = report.to_dict()
    assert data["step"] == 3 and data["applied"] is False
    assert data["mismatched"]["model/head/kernel"] == {"saved": [8, 2], "current": [16, 2]}
    # A dry run of an empty directory has nothing to report.
    empty = Checkpointer(str(tmp_path / "empty"), model, optimizer)
    assert empty.plan_restore() is None


def test_an_unchanged_model_restores_exactly(tmp_path: Path) -> None:
    saved = save_v1(tmp_path)
    model, optimizer = build(1)
    ck = Checkpointer(str(tmp_path), model, optimizer)
    ck.restore()
    assert ck.last_restore_report is not None and ck.last_restore_report.exact
    assert_same_state(state_arrays(model, optimizer), saved)
