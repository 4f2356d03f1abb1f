#!/usr/bin/env python
"""Object stores: Roxxel's array format (streamed through fsspec, ranged reads) against
Orbax's TensorStore path (`PyTreeCheckpointHandler`, OCDBT, no compression: Roxxel 0.1.0's
configuration) on the same local S3 (SeaweedFS) and GCS (fake-gcs-server) servers, same
state, same run, interleaved. Prints the median time to a committed step and to a restored
state for each, and their ratio.

    .venv/bin/python benchmarks/object_store.py --size-mb 96 --reps 3

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=96)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

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
