"""One process of a 2-process job that gets preempted (run by test_preempt_multiprocess.py).

    python preempt_worker.py MODE CHECKPOINT_DIR PROCESS_ID NUM_PROCESSES PORT ON_SIGTERM

The processes join with `jax.distributed.initialize` on 127.0.0.1:PORT (gloo CPU collectives,
4 local devices each); the model's kernels and the optimizer state are sharded over a mesh of
all devices. Training is deterministic (fixed batch), so the state after N steps can be
recomputed in any later job.

Modes:
  train       restore, then train until `reached_preemption()` stops the loop, saving every
              25 steps; the test sends SIGTERM to one process. With ON_SIGTERM=flag the loop
              calls `final_save()`; with "exit", `reached_preemption()` saves and exits.
  request     as train, but process 1 calls `request_preemption()` at step 40 (no signal).
  final       train 12 steps, save step 10 (left in flight), then `final_save(12)`.
  noservice   JAX's preemption service off: `reached_preemption()` must refuse clearly.
  resume      restore into a fresh model; compare with a model trained from scratch for the
              restored number of steps.

Each process prints `step N` every 5 steps and `RESULT <json>` lines that the test reads.
"""

from __future__ import annotations

import json
import sys
import time

MODE, CKPT = sys.argv[1], sys.argv[2]
PID, NPROC, PORT = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ON_SIGTERM = sys.argv[6]

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if MODE == "noservice":
    jax.config.update("jax_enable_preemption_service", False)
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{PORT}",
    coordinator_bind_address=f"127.0.0.1:{PORT}",
    num_processes=NPROC,
    process_id=PID,
    initialization_timeout=60,
    heartbeat_timeout_seconds=10,
)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from roxxel._state import to_saved, variables  # noqa: E402
from roxxel.checkpoint import Checkpointer  # noqa: E402


def result(**fields: object) -> None:
    print("RESULT " + json.dumps({"process": PID, **fields}), flush=True)


mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        init = nnx.initializers.lecun_normal()
        self.up = nnx.Linear(
            8, 16, kernel_init=nnx.with_partitioning(init, ("data", "model")), rngs=rngs
        )
        self.down = nnx.Linear(
            16, 8, kernel_init=nnx.with_partitioning(init, ("model", "data")), rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(nnx.relu(self.up(x)))


def build() -> tuple[Net, nnx.Optimizer]:
    @nnx.jit
    def create() -> Net:
        model = Net(nnx.Rngs(0))
        state = nnx.state(model)
        nnx.update(model, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
        return model

    with jax.set_mesh(mesh):
        model = create()
        optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    return model, optimizer


@nnx.jit
def train_step(model: Net, optimizer: nnx.Optimizer) -> jax.Array:
    x = jax.random.normal(jax.random.key(1), (32, 8))

    def loss_fn(m: Net) -> jax.Array:
        return jnp.mean((m(x) - x) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def gathered(model: Net, optimizer: nnx.Optimizer) -> dict[str, np.ndarray]:
    values = {}
    for path, variable in variables(model, optimizer).items():
        value = to_saved(variable.get_value())
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        values[path] = np.asarray(value)
    return values


def train(ck: Checkpointer, model: Net, optimizer: nnx.Optimizer) -> None:
    step = ck.restore()
    result(start=step)
    metrics = {"loss": float("nan")}
    while step < 100_000:
        metrics = {"loss": float(train_step(model, optimizer))}
        step += 1
        time.sleep(0.02)
        if step % 25 == 0:
            ck.save(step, metrics)
        if step % 5 == 0:
            print(f"step {step}", flush=True)
        if MODE == "request" and PID == 1 and step == 40:
            ck.request_preemption()
            result(requested_at=step, flag_after_request=ck.preemption_requested)
        try:
            if ck.reached_preemption(step, metrics):
                break
        except SystemExit as exc:
            result(exited_at=step, code=exc.code, flag=ck.preemption_requested)
            raise
    result(stopped_at=step, flag=ck.preemption_requested)
    ck.final_save(step, metrics)
    result(final=step)


model, optimizer = build()
if MODE in ("train", "request"):
    ck = Checkpointer(CKPT, model, optimizer, max_to_keep=2, timeout=60, on_sigterm=ON_SIGTERM)
    train(ck, model, optimizer)

elif MODE == "final":
    ck = Checkpointer(CKPT, model, optimizer, max_to_keep=2, timeout=60)
    for step in range(1, 13):
        loss = float(train_step(model, optimizer))
        if step == 10:
            ck.save(step, {"loss": loss})  # still in flight when final_save starts
    result(returned=ck.final_save(12, {"loss": loss}))

elif MODE == "resume":
    ck = Checkpointer(CKPT, model, optimizer, read_only=True)
    restored = ck.restore()
    values = gathered(model, optimizer)
    ck.close()
    fresh_model, fresh_optimizer = build()
    for _ in range(restored):
        train_step(fresh_model, fresh_optimizer)
    expected = gathered(fresh_model, fresh_optimizer)
    equal = sorted(values) == sorted(expected) and all(
        np.array_equal(values[key], expected[key]) for key in values
    )
    result(restored=restored, equal=equal, leaves=len(values))

elif MODE == "noservice":
    import signal

    from roxxel.checkpoint import PreemptionSyncError

    ck = Checkpointer(CKPT, model, optimizer, on_sigterm="flag")
    handler = signal.getsignal(signal.SIGTERM)
    result(handler=getattr(handler, "__module__", str(handler)))
    calls = {"reached": lambda: ck.reached_preemption(1), "request": ck.request_preemption}
    for name, call in calls.items():
        try:
            call()
            result(**{name: None})
        except PreemptionSyncError as exc:
            result(**{name: f"{type(exc).__name__}: {exc}"})
    ck.close()
