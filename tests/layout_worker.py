"""Run by `test_device_layout.py` in a fresh process with a given number of fake CPU devices.

    python layout_worker.py ACTION:DIR:DEVICES ...

`ACTION` is `save` (a model laid out over the first DEVICES devices) or `restore` (restore DIR
into a model laid out so); the actions run in order in one process.

`save` trains two steps, saves step 2 and writes the leaves to DIR.npz. `restore` restores
into a model built from another seed, checks every leaf against DIR.npz bit for bit and checks
that each array has the sharding of the current model's layout, not the saved one.
Prints `OK <details>` on success; any failure is an exception (non-zero exit).
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roxxel._state import to_saved, variables
from roxxel.checkpoint import Checkpointer


class Net(nnx.Module):
    def __init__(self, seed: int) -> None:
        rngs = nnx.Rngs(seed)
        self.up = nnx.Linear(16, 32, rngs=rngs)
        self.down = nnx.Linear(32, 16, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(nnx.relu(self.up(x)))


def layout() -> dict[str, PartitionSpec]:
    """Shard the 32-wide dimension over a 1-D mesh named `x`."""
    return {
        "up/kernel": PartitionSpec(None, "x"),
        "up/bias": PartitionSpec("x"),
        "down/kernel": PartitionSpec("x", None),
        "down/bias": PartitionSpec(),
    }


def build(seed: int, devices: int) -> tuple[Net, nnx.Optimizer[Net], Mesh]:
    assert jax.device_count() >= devices, (jax.device_count(), devices)
    mesh = Mesh(np.array(jax.devices()[:devices]), ("x",))
    model = Net(seed)
    for path, variable in variables(model, None).items():
        spec = layout()[path.removeprefix("model/")]
        variable.set_value(jax.device_put(variable.get_value(), NamedSharding(mesh, spec)))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    return model, optimizer, mesh


def leaves(model: Net, optimizer: nnx.Optimizer[Net]) -> dict[str, Any]:
    return {p: to_saved(v.get_value()) for p, v in variables(model, optimizer).items()}


def save(directory: str, devices: int) -> str:
    model, optimizer, _ = build(0, devices)
    x = jax.random.normal(jax.random.key(3), (8, 16))

    @nnx.jit
    def step(model: Net, optimizer: nnx.Optimizer[Net]) -> None:
        optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))

    step(model, optimizer)
    step(model, optimizer)
    state = leaves(model, optimizer)
    assert len(state["model/up/kernel"].sharding.device_set) == devices
    with Checkpointer(directory, model, optimizer) as ck:
        ck.save(2, {"loss": 1.0})
    np.savez(directory + ".npz", **{k: np.asarray(v) for k, v in state.items()})
    return f"saved over {devices} devices"


def restore(directory: str, devices: int) -> str:
    model, optimizer, _ = build(1, devices)
    layout_before = {p: v.sharding for p, v in leaves(model, optimizer).items()}
    with Checkpointer(directory, model, optimizer, read_only=True) as ck:
        assert ck.restore() == 2
        report = ck.last_restore_report
    assert report is not None and report.exact, report
    expected = np.load(directory + ".npz")
    restored = leaves(model, optimizer)
    assert sorted(restored) == sorted(expected.files)
    for path, value in restored.items():
        np.testing.assert_array_equal(np.asarray(value), expected[path], err_msg=path)
        assert value.sharding.is_equivalent_to(layout_before[path], value.ndim), (
            path,
            value.sharding,
            layout_before[path],
        )
    kernel = model.up.kernel.get_value()
    assert kernel.sharding.mesh.devices.size == devices  # type: ignore[attr-defined]
    assert len(kernel.addressable_shards) == devices
    return f"restored into {devices} devices, {len(restored)} leaves"


if __name__ == "__main__":
    for task in sys.argv[1:]:
        action, directory, count = task.split(":")
        print("OK", {"save": save, "restore": restore}[action](directory, int(count)), flush=True)
