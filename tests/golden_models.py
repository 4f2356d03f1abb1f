"""The models behind the golden checkpoints in `tests/data/golden/`, and the script that wrote them.

Golden checkpoints are written once by a released version and committed; every later version
must restore them (`test_golden.py`). Never change a model here or rewrite a committed folder:
a new on-disk format gets new folders, written by running this file with that version:

    python tests/golden_models.py   # writes tests/data/golden/roxxel-<version>/ (never overwrites)

Each case folder holds the checkpoint directory (`checkpoints/`) and the value of every leaf
when it was saved, keyed by Roxxel's leaf path: its bytes in `expected.npz`, its dtype and shape
in `leaves.json` (read them with `expected(folder)`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

GOLDEN = Path(__file__).parent / "data" / "golden"
STEP = 3
LOSS = 0.25


class Mlp(nnx.Module):
    """`extra=True` is the same model with one layer added (for restoring into a newer model)."""

    def __init__(self, rngs: nnx.Rngs, *, extra: bool = False) -> None:
        self.encoder = nnx.Linear(4, 8, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)
        if extra:
            self.extra = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.head(nnx.relu(self.encoder(x)))
        return self.extra(y) if hasattr(self, "extra") else y


class Steps(nnx.Variable[Any]):
    """A user Variable subclass."""


class Kinds(nnx.Module):
    """Every kind of NNX state: BatchStat, dropout stream, rbg key, ints, bools, Python scalars."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.25, rngs=rngs)
        self.out = nnx.Linear(8, 2, param_dtype=jnp.bfloat16, rngs=rngs)
        self.steps = Steps(jnp.array(0, jnp.int32))
        self.mask = nnx.Variable(jnp.array([True, False, True]))
        self.epoch = nnx.Variable(7)
        self.noise = nnx.Rngs(noise=jax.random.key(5, impl="rbg"))

    def __call__(self, x: jax.Array) -> jax.Array:
        self.steps[...] += 1
        y = self.drop(self.norm(nnx.relu(self.linear(x))))
        return self.out(y).astype(jnp.float32) + 0.0 * jax.random.normal(self.noise.noise(), ())


def mlp_adam(extra: bool = False) -> tuple[nnx.Module, nnx.Optimizer[Any]]:
    model = Mlp(nnx.Rngs(0), extra=extra)
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


def kinds_sgd() -> tuple[nnx.Module, nnx.Optimizer[Any]]:
    model = Kinds(nnx.Rngs(0, dropout=1))
    return model, nnx.Optimizer(model, optax.sgd(1e-2, momentum=0.9), wrt=nnx.Param)


CASES: dict[str, Callable[[], tuple[nnx.Module, nnx.Optimizer[Any]]]] = {
    "mlp_adam": mlp_adam,
    "kinds_sgd": kinds_sgd,
}


def train(model: nnx.Module, optimizer: nnx.Optimizer[Any], steps: int) -> None:
    x = jax.random.normal(jax.random.key(9), (16, 4))

    @nnx.jit
    def step(model: Any, optimizer: nnx.Optimizer[Any]) -> None:
        grads = nnx.grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(steps):
        step(model, optimizer)


def expected(case: Path) -> dict[str, np.ndarray]:
    """The leaves of a golden case as they were when it was saved."""
    layout = json.loads((case / "leaves.json").read_text())
    with np.load(case / "expected.npz") as raw:
        return {
            path: np.frombuffer(raw[path].tobytes(), np.dtype(spec["dtype"])).reshape(spec["shape"])
            for path, spec in layout.items()
        }


def write(folder: Path) -> None:
    from roxxel._state import to_saved, variables
    from roxxel.checkpoint import Checkpointer

    for name, factory in CASES.items():
        case = folder / name
        if case.exists():
            sys.exit(f"{case} exists: golden checkpoints are never rewritten")
        model, optimizer = factory()
        train(model, optimizer, STEP)
        leaves = {
            path: np.asarray(to_saved(variable.get_value()))
            for path, variable in variables(model, optimizer).items()
        }
        with Checkpointer(str(case / "checkpoints"), model, optimizer) as ck:
            ck.save(STEP, {"loss": LOSS})
        # .npz has no bfloat16: each leaf is stored as its bytes, its dtype in leaves.json.
        np.savez(
            case / "expected.npz",
            **{path: np.frombuffer(a.tobytes(), np.uint8) for path, a in leaves.items()},
        )
        layout = {p: {"dtype": str(a.dtype), "shape": list(a.shape)} for p, a in leaves.items()}
        (case / "leaves.json").write_text(json.dumps(layout, indent=1, sort_keys=True) + "\n")
        print(f"wrote {case}")


if __name__ == "__main__":
    import roxxel

    write(GOLDEN / f"roxxel-{roxxel.__version__}")
