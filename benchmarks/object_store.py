#!/usr/bin/env python
"""Object stores: Roxxel's array format (streamed through fsspec, ranged reads) against
Orbax's TensorStore path (`PyTreeCheckpointHandler`, OCDBT, no compression: Roxxel 0.1.0's
configuration) on the same local S3 (SeaweedFS) and GCS (fake-gcs-server) servers, same
state, same run, interleaved. Prints the median time to a committed step and to a restored
state for each, and their ratio.

    .venv/bin/python benchmarks/object_store.py --size-mb 96 --reps 3

`--tiers` measures instead what saving costs a training run on SeaweedFS S3: the same loop
(a jitted Adam step of the same state), the same saves (every `--save-every` steps), run
interleaved with no saving, saving straight to the bucket, and two tiers (every save on a
local folder, promoted to the bucket: each one, and every 4th). It prints the training
speed of each arm as a ratio of the speed without saving, and the time `close()` took after
the loop (the last commit and promotion), and writes `benchmarks/results/tiers.json`.

    .venv/bin/python benchmarks/object_store.py --tiers --size-mb 32 --steps 40 --reps 3

(Each repetition writes its saves into a fresh SeaweedFS of 8 volumes of 64 MB, which does
not reuse the space of deleted objects: keep size x saves under about 400 MB.)

The servers listen on 127.0.0.1 only and are started and stopped by this script (they come
with the `test` extra).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _state(size_mb: int) -> tuple[Any, Any]:
    import jax
    import optax
    from flax import nnx

    width = int((size_mb * 1e6 / 4 / 3 / 4) ** 0.5)  # 4 kernels, params + adam's mu and nu

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(4)])

    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    key = jax.random.key(1)
    for _, variable in nnx.to_flat_state(nnx.state((model, optimizer))):
        value = variable.get_value()
        if hasattr(value, "dtype") and value.dtype == np.float32:
            key, sub = jax.random.split(key)
            variable.set_value(jax.random.normal(sub, value.shape, value.dtype))
    return model, optimizer


def _roxxel(url: str, model: Any, optimizer: Any) -> tuple[float, float]:
    from roxxel.checkpoint import Checkpointer

    with Checkpointer(url, model, optimizer, max_to_keep=None) as ck:
        started = time.perf_counter()
        ck.save(1, {"loss": 1.0})
        ck.wait_until_finished()
        saved = time.perf_counter() - started
    with Checkpointer(url, model, optimizer, read_only=True) as ck:
        started = time.perf_counter()
        ck.restore()
        restored = time.perf_counter() - started
    return saved, restored


def _tensorstore(url: str, model: Any, optimizer: Any) -> tuple[float, float]:
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from roxxel import _storage

    if url.startswith("s3://"):
        _storage.install_s3_routing()
    options = ocp.CheckpointManagerOptions(
        create=True,
        atomicity_options=ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE),
    )
    handler = ocp.PyTreeCheckpointHandler(use_compression=False)
    state = nnx.state((model, optimizer))
    with ocp.CheckpointManager(url, options=options, item_handlers=handler) as manager:
        started = time.perf_counter()
        manager.save(1, args=ocp.args.PyTreeSave(state))
        manager.wait_until_finished()
        saved = time.perf_counter() - started
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        started = time.perf_counter()
        restored_state = manager.restore(1, args=ocp.args.PyTreeRestore(target))
        jax.block_until_ready(restored_state)
        restored = time.perf_counter() - started
    return saved, restored


def _train_step() -> Any:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @nnx.jit
    def step(model: Any, optimizer: Any, x: jax.Array) -> jax.Array:
        def loss_fn(m: Any) -> jax.Array:
            y = x
            for layer in m.layers:
                y = jnp.tanh(layer(y))
            return jnp.mean(y**2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return step


def _training_arm(
    kind: str, url: str, local: str, model: Any, optimizer: Any, args: argparse.Namespace
) -> tuple[float, float]:
    """(seconds for the loop, seconds for `close()` after it) of one arm."""
    import jax

    from roxxel.checkpoint import Checkpointer

    step_fn = _train_step()
    width = model.layers[0].kernel.shape[0]
    x = jax.random.normal(jax.random.key(0), (args.batch, width))
    ck = None
    if kind == "direct":
        ck = Checkpointer(url, model, optimizer, max_to_keep=2)
    elif kind.startswith("tiers"):
        every = 4 if kind == "tiers_every4" else 1
        ck = Checkpointer(
            url, model, optimizer, local_path=local, max_to_keep=2, promote_every=every
        )
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = step_fn(model, optimizer, x)
        if ck is not None and step % args.save_every == 0:
            ck.save(step, {"loss": float(loss)})
    jax.block_until_ready(loss)
    loop = time.perf_counter() - started
    started = time.perf_counter()
    if ck is not None:
        ck.close()
    return loop, time.perf_counter() - started


def _tiers_rep(args: argparse.Namespace) -> int:
    """One repetition, in a process of its own with a server of its own (see `tiers`)."""
    import json

    import jax

    import servers

    model, optimizer = _state(args.size_mb)
    width = model.layers[0].kernel.shape[0]
    step_fn = _train_step()
    x = jax.random.normal(jax.random.key(0), (args.batch, width))
    jax.block_until_ready(step_fn(model, optimizer, x))  # compiled before any arm
    samples: dict[str, tuple[float, float]] = {}
    with (
        tempfile.TemporaryDirectory() as work,
        servers.seaweed_s3(Path(work) / "s3") as server,
    ):
        os.environ.update(server.env)
        order = list(TIER_ARMS) if args.one_rep % 2 == 0 else list(reversed(TIER_ARMS))
        for name in order:
            url = f"s3://{servers.BUCKET}/{name}-{uuid.uuid4().hex[:8]}"
            local = tempfile.mkdtemp(dir=work)
            samples[name] = _training_arm(name, url, local, model, optimizer, args)
            print(
                f"rep {args.one_rep} {name}: loop {samples[name][0]:.2f} s, close "
                f"{samples[name][1]:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    print("RESULT " + json.dumps(samples), flush=True)
    return 0


TIER_ARMS = ("none", "direct", "tiers", "tiers_every4")


def tiers(args: argparse.Namespace) -> int:
    """Each repetition runs in a fresh process with a fresh SeaweedFS: the server as the tests
    start it has 8 volumes of 64 MB and does not reuse the space of deleted objects, and
    etils.epath keeps its S3 client (and so the first server's endpoint) for the process."""
    import json
    import subprocess

    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in TIER_ARMS}
    for rep in range(args.reps):
        command = [
            sys.executable,
            __file__,
            "--tiers",
            f"--size-mb={args.size_mb}",
            f"--steps={args.steps}",
            f"--save-every={args.save_every}",
            f"--batch={args.batch}",
            f"--one-rep={rep}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(done.stderr[-5000:], file=sys.stderr)
            return 1
        for line in done.stderr.splitlines():
            if line.startswith("rep "):
                print(line, flush=True)
        for name, sample in json.loads(lines[-1][len("RESULT ") :]).items():
            samples[name].append((sample[0], sample[1]))
    loop = {name: statistics.median(s[0] for s in samples[name]) for name in TIER_ARMS}
    close = {name: statistics.median(s[1] for s in samples[name]) for name in TIER_ARMS}
    retained = {name: loop["none"] / loop[name] for name in TIER_ARMS}
    print(
        f"S3 (SeaweedFS), {args.size_mb} MB state, {args.steps} steps, a save every "
        f"{args.save_every}, median of {args.reps}: no saving {loop['none']:.2f} s "
        f"({args.steps / loop['none']:.1f} steps/s)"
    )
    for name in TIER_ARMS[1:]:
        print(
            f"  {name}: training speed retained {retained[name]:.2f} "
            f"(loop {loop[name]:.2f} s), close() after the loop {close[name]:.2f} s"
        )
    out = REPO / "benchmarks" / "results" / "tiers.json"
    out.write_text(
        json.dumps(
            {
                "size_mb": args.size_mb,
                "steps": args.steps,
                "save_every": args.save_every,
                "batch": args.batch,
                "reps": args.reps,
                "samples": samples,
                "retained": retained,
                "close_s": close,
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            },
            indent=2,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=96)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tiers", action="store_true", help="the training-slowdown arms")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--one-rep", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiers:
        return tiers(args) if args.one_rep is None else _tiers_rep(args)

    import servers

    model, optimizer = _state(args.size_mb)
    arms = {"roxxel": _roxxel, "tensorstore": _tensorstore}
    with tempfile.TemporaryDirectory() as work:
        for backend, start in (("s3", servers.seaweed_s3), ("gcs", servers.fake_gcs)):
            with start(Path(work) / backend) as server:
                os.environ.update(server.env)
                scheme = "s3" if backend == "s3" else "gs"
                times: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
                for rep in range(args.reps):
                    order = list(arms) if rep % 2 == 0 else list(reversed(arms))
                    for name in order:
                        url = f"{scheme}://{servers.BUCKET}/{name}-{uuid.uuid4().hex[:8]}"
                        times[name].append(arms[name](url, model, optimizer))
                medians = {
                    name: (
                        statistics.median(t[0] for t in samples),
                        statistics.median(t[1] for t in samples),
                    )
                    for name, samples in times.items()
                }
                rox, ts = medians["roxxel"], medians["tensorstore"]
                print(
                    f"{backend} ({server.name}), {args.size_mb} MB, median of {args.reps}: "
                    f"commit roxxel {rox[0]:.2f} s / tensorstore {ts[0]:.2f} s "
                    f"= {rox[0] / ts[0]:.2f}; restore roxxel {rox[1]:.2f} s / tensorstore "
                    f"{ts[1]:.2f} s = {rox[1] / ts[1]:.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
