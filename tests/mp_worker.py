"""One process of a multi-process (or single-process) Roxxel job, run by tests/test_multiprocess.py.

    python mp_worker.py MODE CHECKPOINT_DIR OUT_DIR PROCESS_ID NUM_PROCESSES PORT

`XLA_FLAGS=--xla_force_host_platform_device_count=N` sets the local devices. With more than one
process, the processes join with `jax.distributed.initialize` on 127.0.0.1:PORT (gloo CPU
collectives, low heartbeat timeout). The model's kernels are sharded over a ("data", "model")
mesh of all global devices, and so is the optimizer state built from them.

Modes:
  save        train and save steps 1-4 from every process; step 4 is left to the exit drain.
  restore     restore the newest step into a fresh model; process 0 writes the values.
  restore-writer  the same from a writing (not read-only) Checkpointer, which first settles
              an overwrite cut short.
  die         process 1 exits before saving; process 0 saves and waits (a dead peer).
  overwrite   save steps 1 and 2, train, then save step 2 again with overwrite=True.
  overwrite-die  reopen, train, overwrite step 2; process 1 exits as soon as save() returns
              (the old step is set aside, the new one not committed): a crashed host.

Each process prints `RESULT <json>` lines that the test reads; values go to OUT_DIR as .npz.
"""

from __future__ import annotations

import json
import os
import sys
import time

MODE, CKPT, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
PID, NPROC, PORT = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if NPROC > 1:
    started = time.perf_counter()
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

from roxxel.checkpoint import Checkpointer  # noqa: E402


def result(**fields: object) -> None:
    print("RESULT " + json.dumps({"process": PID, **fields}), flush=True)


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


def mesh_shape(n: int) -> tuple[int, int]:
    return {8: (4, 2), 4: (2, 2), 2: (2, 1), 1: (1, 1)}[n]


mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape(jax.device_count())), ("data", "model"))


def build(seed: int) -> tuple[Net, nnx.Optimizer]:
    @nnx.jit
    def create() -> Net:
        model = Net(nnx.Rngs(seed))
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
    """Every leaf as a full NumPy array (gathered from all processes)."""
    from roxxel._state import to_saved, variables

    values = {}
    for path, variable in variables(model, optimizer).items():
        value = to_saved(variable.get_value())
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        values[path] = np.asarray(value)
    return values


def spans_processes(model: Net, optimizer: nnx.Optimizer) -> dict[str, object]:
    kernel = model.up.kernel.get_value()
    mu = optimizer.opt_state[0].mu["up"]["kernel"].get_value()
    return {
        "kernel_spans_processes": not kernel.is_fully_addressable,
        "mu_spans_processes": not mu.is_fully_addressable,
        "kernel_spec": str(kernel.sharding.spec),
        "mu_spec": str(mu.sharding.spec),
    }


if MODE == "save":
    model, optimizer = build(seed=0)
    result(
        devices=jax.device_count(),
        local=jax.local_device_count(),
        **spans_processes(model, optimizer),
    )
    ck = Checkpointer(CKPT, model, optimizer, max_to_keep=2)
    assert ck.restore() == 0
    losses = {1: 0.5, 2: 0.9, 3: 0.8, 4: 0.7}  # step 1 is best: retention keeps 1, 3, 4
    save_seconds = []
    for step in (1, 2, 3, 4):
        # train_loss is the step's real loss: a scalar replicated over both processes
        metrics = {"loss": losses[step], "train_loss": train_step(model, optimizer)}
        if step == 4:
            # the last save is left in flight: the exit drain must commit it in every process
            ck.save(step, metrics)
            expected = gathered(model, optimizer)
            if PID == 0:
                np.savez(os.path.join(OUT, "expected.npz"), **expected)
            break
        started = time.perf_counter()
        ck.save(step, metrics)
        ck.wait_until_finished()
        save_seconds.append(time.perf_counter() - started)
        if step == 3:
            # restore in the same job, same layout: the values of step 3
            at_three = gathered(model, optimizer)
            fresh_model, fresh_opt = build(seed=7)
            with Checkpointer(CKPT, fresh_model, fresh_opt, max_to_keep=2) as other:
                restored = other.restore()
            again = gathered(fresh_model, fresh_opt)
            same = all(np.array_equal(at_three[k], again[k]) for k in at_three)
            result(same_job_restored=restored, same_job_equal=same)
    result(save_seconds=save_seconds, last_save_call=ck.last_save_seconds)
    # no close() and no wait: the process exits with step 4 in flight

elif MODE == "restore":
    model, optimizer = build(seed=3)
    ck = Checkpointer(CKPT, model, optimizer, max_to_keep=2, read_only=True)
    step = ck.restore()
    values = gathered(model, optimizer)
    if PID == 0:
        np.savez(os.path.join(OUT, f"restored-{NPROC}x{jax.local_device_count()}.npz"), **values)
    result(restored=step, steps=ck.all_steps(), best=ck.best_step(), devices=jax.device_count())
    ck.close()

elif MODE == "restore-writer":
    model, optimizer = build(seed=3)
    with Checkpointer(CKPT, model, optimizer, timeout=60) as ck:
        step = ck.restore()
        steps = ck.all_steps()
    values = gathered(model, optimizer)
    if PID == 0:
        np.savez(
            os.path.join(OUT, f"restored-writer-{NPROC}x{jax.local_device_count()}.npz"), **values
        )
    result(restored=step, steps=steps)

elif MODE == "tiers":
    # two tiers: the local tier is a folder both processes share (OUT/local), the remote
    # tier is CKPT; each process promotes its own files, process 0 commits the step
    model, optimizer = build(seed=0)
    local = os.path.join(OUT, "local")
    ck = Checkpointer(CKPT, model, optimizer, local_path=local, max_to_keep=2, timeout=60)
    for step in (1, 2, 3):
        ck.save(step, {"loss": 1.0 / step, "train_loss": train_step(model, optimizer)})
        ck.wait_until_finished()
        ck.wait_until_promoted()
    expected = gathered(model, optimizer)
    if PID == 0:
        np.savez(os.path.join(OUT, "expected-tiers.npz"), **expected)
    multihost_utils.sync_global_devices("promoted")
    result(promoted=ck.last_promoted, local_steps=ck.all_steps())
    ck.close()

elif MODE == "tiers-new-machine":
    # an empty local tier: process 0 copies the remote step into it, then all restore it
    model, optimizer = build(seed=5)
    local = os.path.join(OUT, "local-new")
    with Checkpointer(CKPT, model, optimizer, local_path=local, timeout=60) as ck:
        step = ck.restore()
        steps = ck.all_steps()
    values = gathered(model, optimizer)
    if PID == 0:
        np.savez(os.path.join(OUT, "restored-tiers.npz"), **values)
    result(restored=step, steps=steps)

elif MODE == "tiers-restore":
    model, optimizer = build(seed=3)
    with Checkpointer(CKPT, model, optimizer, read_only=True) as ck:
        step = ck.restore()
        steps = ck.all_steps()
    values = gathered(model, optimizer)
    if PID == 0:
        np.savez(os.path.join(OUT, "restored-tiers.npz"), **values)
    result(restored=step, steps=steps)

elif MODE == "die":
    model, optimizer = build(seed=0)
    ck = Checkpointer(CKPT, model, optimizer, timeout=30)
    result(ready=True)
    if PID == 1:
        os._exit(3)  # a crashed host: no cleanup, no goodbye to the coordinator
    time.sleep(1)
    started = time.perf_counter()
    try:
        ck.save(1, {"loss": 1.0})
        ck.wait_until_finished()
        result(outcome="saved", seconds=time.perf_counter() - started)
    except Exception as exc:
        result(outcome=type(exc).__name__, message=str(exc), seconds=time.perf_counter() - started)
        raise

elif MODE == "overwrite":
    model, optimizer = build(seed=0)
    ck = Checkpointer(CKPT, model, optimizer, timeout=60)
    for step in (1, 2):
        ck.save(step, {"loss": 1.0, "train_loss": train_step(model, optimizer)})
        ck.wait_until_finished()
    train_step(model, optimizer)
    ck.save(2, {"loss": 0.5}, overwrite=True)
    aside_while_saving = os.path.isdir(os.path.join(CKPT, "2.roxxel-replaced"))
    ck.wait_until_finished()
    multihost_utils.sync_global_devices("overwritten")
    expected = gathered(model, optimizer)
    if PID == 0:
        np.savez(os.path.join(OUT, "expected-overwrite.npz"), **expected)
    result(
        aside_while_saving=aside_while_saving,
        aside_after=os.path.isdir(os.path.join(CKPT, "2.roxxel-replaced")),
        steps=ck.all_steps(),
    )
    ck.close()

elif MODE == "overwrite-die":
    model, optimizer = build(seed=3)
    ck = Checkpointer(CKPT, model, optimizer, timeout=20)
    restored = ck.restore()
    train_step(model, optimizer)
    newer = gathered(model, optimizer)
    if PID == 0:
        np.savez(os.path.join(OUT, "expected-newer.npz"), **newer)
    ck.save(2, {"loss": 0.25}, overwrite=True)
    result(restored=restored, aside=os.path.isdir(os.path.join(CKPT, "2.roxxel-replaced")))
    if PID == 1:
        os._exit(3)  # a crashed host, with its part of the new step 2 in flight
    try:
        ck.wait_until_finished()
        result(outcome="saved")
    except Exception as exc:  # noqa: BLE001  reported to the test
        result(outcome=type(exc).__name__, message=str(exc)[:2000])
    os._exit(4)  # the job is over: its peer is gone
