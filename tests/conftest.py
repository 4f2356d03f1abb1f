"""Shared fixtures: small NNX models, and running Python scripts in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import servers

REPO = Path(__file__).resolve().parents[1]
SPEC_PAGE = REPO.parent / "shared" / "spec" / "checkpointing-page.txt"


class MLP(nnx.Module):
    """A two-layer model; `extra=True` adds a layer, `hidden` changes a shape."""

    def __init__(self, rngs: nnx.Rngs, *, hidden: int = 8, extra: bool = False) -> None:
        self.encoder = nnx.Linear(4, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, 2, rngs=rngs)
        if extra:
            self.extra = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.head(nnx.relu(self.encoder(x)))
        return self.extra(y) if hasattr(self, "extra") else y


def make(seed: int = 0, **kwargs: object) -> tuple[MLP, nnx.Optimizer]:
    model = MLP(nnx.Rngs(seed), **kwargs)  # type: ignore[arg-type]
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    return model, optimizer


def train_steps(model: MLP, optimizer: nnx.Optimizer, n: int, seed: int = 0) -> float:
    """Run `n` deterministic adam steps; returns the last loss."""
    x = jax.random.normal(jax.random.key(seed), (16, 4))
    y = jnp.ones((16, 2))

    @nnx.jit
    def step(model: MLP, optimizer: nnx.Optimizer) -> jax.Array:
        def loss_fn(m: MLP) -> jax.Array:
            return jnp.mean((m(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    loss = jnp.nan
    for _ in range(n):
        loss = step(model, optimizer)
    return float(loss)


def state_arrays(
    model: nnx.Module, optimizer: nnx.Optimizer | None = None
) -> dict[str, np.ndarray]:
    """Every leaf of model (and optimizer) as NumPy, keyed by path, for exact comparison."""
    from roxxel._state import to_saved, variables

    return {
        path: np.asarray(to_saved(variable.get_value()))
        for path, variable in variables(model, optimizer).items()
    }


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def run_python(
    code_or_file: str | Path,
    cwd: Path,
    *,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a script (a path, or source text) with this interpreter in a fresh process."""
    args = [sys.executable]
    args += [str(code_or_file)] if isinstance(code_or_file, Path) else ["-c", code_or_file]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture
def ckdir(tmp_path: Path) -> Path:
    return tmp_path / "ck"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: a real filesystem that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# Object-store servers (tests/servers.py), started once per session when a test asks.
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    with servers.seaweed_s3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    with servers.fake_gcs(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield server


@pytest.fixture(params=["s3", "gcs"])
def store(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, servers.Server]:
    """(backend name, server), with this process's environment pointing at the server."""
    server: servers.Server = request.getfixturevalue(f"{request.param}_server")
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    return request.param, server
