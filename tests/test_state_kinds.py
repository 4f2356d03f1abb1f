"""Everything NNX keeps in state saves and restores exactly, and training resumes bit for bit.

Covered: `nnx.Param`, `nnx.BatchStat`, a user `nnx.Variable` subclass, integer and boolean
leaves, Python scalars, the optimizer's step counter, and typed PRNG keys (`nnx.Rngs` and an
`nnx.Dropout` stream), of the default and of a non-default key implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import assert_same_state, state_arrays
from roxxel.checkpoint import Checkpointer, RestoreMismatchError


class Seen(nnx.Variable[Any]):
    """A user Variable type: how many examples the model has seen."""


class Net(nnx.Module):
    def __init__(self, seed: int) -> None:
        rngs = nnx.Rngs(seed, dropout=seed + 100)
        self.linear = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(8, 2, rngs=rngs)
        self.seen = Seen(jnp.array(0, jnp.int64 if jax.config.x64_enabled else jnp.int32))
        self.flags = nnx.Variable(jnp.array([True, False, seed % 2 == 0]))
        self.epoch = nnx.Variable(seed)  # a Python int
        self.warm = nnx.Variable(seed % 2 == 0)  # a Python bool
        self.noise = nnx.Rngs(noise=jax.random.key(seed + 7, impl="rbg"))

    def __call__(self, x: jax.Array) -> jax.Array:
        self.seen[...] += x.shape[0]
        y = self.drop(self.norm(nnx.relu(self.linear(x))))
        return self.out(y) + 1e-3 * jax.random.normal(self.noise.noise(), (x.shape[0], 2))


def build(seed: int) -> tuple[Net, nnx.Optimizer[Net]]:
    model = Net(seed)
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


def batch(step: int) -> tuple[jax.Array, jax.Array]:
    """The data of a step depends on the step only, as a resumable data pipeline should."""
    key = jax.random.fold_in(jax.random.key(1234), step)
    x = jax.random.normal(key, (16, 4))
    return x, jnp.sin(x[:, :2])


@nnx.jit
def train_step(model: Net, optimizer: nnx.Optimizer[Net], x: jax.Array, y: jax.Array) -> jax.Array:
    def loss_fn(m: Net) -> jax.Array:
        return jnp.mean((m(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def test_every_kind_of_state_round_trips_exactly(tmp_path: Path) -> None:
    model, optimizer = build(0)
    for step in range(3):
        train_step(model, optimizer, *batch(step))
    model.epoch.set_value(3)
    model.warm.set_value(False)
    saved = state_arrays(model, optimizer)
    # Every kind named in the module docstring is really in the state.
    assert saved["model/norm/mean"].any()  # BatchStat, moved by training
    assert saved["model/seen"] == 48 and saved["model/flags"].dtype == np.bool_
    assert int(saved["model/drop/rngs/count"]) == 3  # the dropout stream advanced
    assert saved["model/noise/noise/key"].shape == (4,)  # rbg key data
    with Checkpointer(str(tmp_path), model, optimizer) as ck:
        ck.save(3, {"loss": 0.5})

    fresh, fresh_opt = build(1)
    with Checkpointer(str(tmp_path), fresh, fresh_opt) as ck:
        assert ck.restore() == 3
        report = ck.last_restore_report
    assert report is not None and report.exact
    assert_same_state(state_arrays(fresh, fresh_opt), saved)
    # Types come back, not just values.
    assert type(fresh.seen) is Seen
    assert type(fresh.epoch.get_value()) is int and fresh.epoch.get_value() == 3
    assert type(fresh.warm.get_value()) is bool and fresh.warm.get_value() is False
    for stream, impl in ((fresh.drop.rngs.key, "threefry2x32"), (fresh.noise.noise.key, "rbg")):
        key = stream.get_value()
        assert jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        assert str(jax.random.key_impl(key)) == impl
    assert int(fresh_opt.step.get_value()) == 3


def test_a_key_of_another_implementation_is_a_mismatch_not_a_cast(tmp_path: Path) -> None:
    model = nnx.Module()
    model.rngs = nnx.Rngs(params=jax.random.key(0, impl="rbg"))
    with Checkpointer(str(tmp_path), model, None, best_metric=None) as ck:
        ck.save(1)
    other = nnx.Module()
    other.rngs = nnx.Rngs(params=jax.random.key(0, impl="unsafe_rbg"))
    before = state_arrays(other)
    with Checkpointer(str(tmp_path), other, None, best_metric=None) as ck:
        report = ck.plan_restore()
        assert report is not None
        assert list(report.mismatched) == ["model/rngs/params/key"]
        assert report.mismatch_text("model/rngs/params/key") == (
            "saved key<rbg> data of shape (4,), current key<unsafe_rbg> data of shape (4,)"
        )
        ck.restore(on_mismatch="skip")
    assert_same_state(state_arrays(other), before)


def test_host_values_keep_their_python_and_numpy_types(tmp_path: Path) -> None:
    def build_host(scale: float) -> nnx.Module:
        model = nnx.Module()
        model.table = nnx.Variable(np.arange(3.0) * scale)  # float64 NumPy
        model.rate = nnx.Variable(0.5 * scale)
        model.phase = nnx.Variable(complex(scale, 1.0))
        model.label = nnx.Variable(f"run-{scale}")
        return model

    with Checkpointer(str(tmp_path), build_host(2.0), None, best_metric=None) as ck:
        ck.save(1)
    model = build_host(0.0)
    with Checkpointer(str(tmp_path), model, None, best_metric=None) as ck:
        ck.restore()
        assert ck.last_restore_report is not None and ck.last_restore_report.exact
    table = model.table.get_value()
    assert type(table) is np.ndarray and table.dtype == np.float64
    np.testing.assert_array_equal(table, [0.0, 2.0, 4.0])
    assert model.rate.get_value() == 1.0 and type(model.rate.get_value()) is float
    assert model.phase.get_value() == complex(2.0, 1.0)
    assert model.label.get_value() == "run-2.0"


def test_a_string_saved_where_a_number_is_now_is_a_mismatch(tmp_path: Path) -> None:
    model = nnx.Module()
    model.tag = nnx.Variable("v1")
    with Checkpointer(str(tmp_path), model, None, best_metric=None) as ck:
        ck.save(1)
    other = nnx.Module()
    other.tag = nnx.Variable(jnp.array(3))
    with Checkpointer(str(tmp_path), other, None, best_metric=None) as ck:
        with pytest.raises(RestoreMismatchError, match="model/tag: saved a string, current shape"):
            ck.restore()
    assert int(other.tag.get_value()) == 3


# ----------------------------------------------------------------- resume equivalence
def run(
    directory: Path, *, total: int, every: int, seed: int, stop_after: int | None = None
) -> tuple[Net, nnx.Optimizer[Net]]:
    """The documented resumable loop: checkpoint `N` holds the state after `N` steps.

    `stop_after` simulates a crash: the run dies once that many steps are done, whatever was
    computed since the last checkpoint is lost.
    """
    model, optimizer = build(seed)
    with Checkpointer(str(directory), model, optimizer, max_to_keep=2) as ck:
        start = ck.restore()
        for step in range(start, total):
            loss = train_step(model, optimizer, *batch(step))
            if (step + 1) % every == 0:
                ck.save(step + 1, {"loss": float(loss)})
            if stop_after is not None and step + 1 == stop_after:
                break
    return model, optimizer


@pytest.mark.slow
def test_interrupted_and_resumed_training_ends_bit_identical(tmp_path: Path) -> None:
    straight, straight_opt = run(tmp_path / "straight", total=9, every=3, seed=0)
    expected = state_arrays(straight, straight_opt)
    # Killed after step 4 (steps 3-4 are lost and redone) and right after checkpoint 6.
    for stop_after in (4, 6):
        interrupted = tmp_path / f"stopped-after-{stop_after}"
        run(interrupted, total=9, every=3, seed=0, stop_after=stop_after)
        # Resumed as a new process would: a model built from another seed, then restore().
        resumed, resumed_opt = run(interrupted, total=9, every=3, seed=5)
        assert int(resumed_opt.step.get_value()) == 9
        assert_same_state(state_arrays(resumed, resumed_opt), expected)
