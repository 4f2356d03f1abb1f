"""A save captures the state of the moment `save()` is called, even when the very next
training step is an `nnx.jit` that donates (and so may overwrite) the buffers being written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import assert_same_state
from roxxel._state import to_saved, variables
from roxxel.checkpoint import Checkpointer


class Wide(nnx.Module):
    """Big enough (~1.6 MB of state) that the write is still running when training resumes."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.a = nnx.Linear(256, 256, rngs=rngs)
        self.b = nnx.Linear(256, 256, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.b(nnx.tanh(self.a(x)))


def make(seed: int = 0) -> tuple[Wide, nnx.Optimizer[Any]]:
    model = Wide(nnx.Rngs(seed))
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


def donating_step() -> Any:
    x = jax.random.normal(jax.random.key(1), (8, 256))

    @nnx.jit(donate_argnums=(0, 1))
    def step(model: Wide, optimizer: nnx.Optimizer[Any]) -> jax.Array:
        def loss_fn(m: Wide) -> jax.Array:
            return jnp.mean((m(x) - 1.0) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return step


def copies(model: Wide, optimizer: nnx.Optimizer[Any]) -> dict[str, np.ndarray]:
    """Every leaf copied to fresh host memory. (`np.asarray` of a JAX CPU array would alias
    the buffer, and a live alias silently turns donation off: the test would prove nothing.)"""
    return {
        path: np.asarray(jnp.copy(to_saved(v.get_value())))
        for path, v in variables(model, optimizer).items()
    }


def test_the_train_step_really_donates() -> None:
    """Guard for the tests below: without a save in flight, the step consumes its inputs."""
    model, optimizer = make()
    step = donating_step()
    step(model, optimizer)  # compile
    kernel = model.a.kernel.get_value()
    step(model, optimizer)
    assert kernel.is_deleted()


@pytest.mark.parametrize("steps_after", [1, 5])
def test_save_captures_state_at_call_despite_donation(ckdir: Path, steps_after: int) -> None:
    model, optimizer = make()
    step = donating_step()
    for _ in range(3):
        step(model, optimizer)
    at_save = copies(model, optimizer)
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        assert ck.save(3, {"loss": 1.0})
        for _ in range(steps_after):  # right after save(): no wait in between
            step(model, optimizer)
        after = copies(model, optimizer)
        ck.wait_until_finished()
    assert not np.array_equal(at_save["model/a/kernel"], after["model/a/kernel"])

    fresh_model, fresh_opt = make(seed=9)
    with Checkpointer(str(ckdir), fresh_model, fresh_opt) as ck:
        assert ck.restore() == 3
    assert_same_state(at_save, copies(fresh_model, fresh_opt))


def test_back_to_back_saves_each_capture_their_own_step(ckdir: Path) -> None:
    """Save, donate, save again (which waits for the first), donate: both steps exact."""
    model, optimizer = make()
    step = donating_step()
    step(model, optimizer)
    snapshots = {}
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=None) as ck:
        for s in (1, 2, 3):
            snapshots[s] = copies(model, optimizer)
            ck.save(s, {"loss": float(s)})
            step(model, optimizer)
            step(model, optimizer)
    for s, expected in snapshots.items():
        fresh_model, fresh_opt = make(seed=9)
        with Checkpointer(str(ckdir), fresh_model, fresh_opt, max_to_keep=None) as ck:
            assert ck.restore(step=s) == s
        assert_same_state(expected, copies(fresh_model, fresh_opt))
