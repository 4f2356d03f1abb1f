"""A zygote for the crash trials: imports everything once, then forks one writer per trial.

    python crash_writer.py PROCESS_ID NUM_PROCESSES

It reads one line per trial from stdin, `write DIRECTORY PORT`, forks a writer and prints
`pid <pid>`, then `reaped` once the writer is gone (the test SIGKILLs it). `check DIRECTORY
0` forks a restarted job instead: it restores the newest step into a fresh `tiny()` and prints
`checked <step> <step its values show>` (or `checked error ...`), then exits; `reopen DIRECTORY
0` does the same as a writing job would (not read-only: it first settles an overwrite that was
cut short). `overwrite DIRECTORY FIRST` forks an overwriter: it saves step 2 again and again
(`overwrite=True`), stamped FIRST, FIRST + 1, ..., printing `saving <version>` and
`committed <version>`. The writer (no JAX
backend and no thread existed before the fork, so forking is safe) joins a
`jax.distributed` job on 127.0.0.1:PORT when NUM_PROCESSES > 1, makes a `Checkpointer` on
DIRECTORY (a local folder or a `gs://`/`s3://` URL), restores the newest step, prints
`ready <step>`, and then saves step after step (`max_to_keep=2`), printing `saving <step>`
before each save. Every leaf is stamped with its step (`reliability.stamp`), as a global
array over all processes' devices in a multi-process job (the kernel sharded over them), so
the test can restore it into a plain single-process `reliability.tiny()` and tell the step
from the values. `CRASH_WRITER_SIZE` sets the width of every `tiny()` model (64 by default).
"""

from __future__ import annotations

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PID, NPROC = int(sys.argv[1]), int(sys.argv[2])
SIZE = int(os.environ.get("CRASH_WRITER_SIZE", "64"))  # the width of `reliability.tiny`

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402, F401  (imported before the fork)

import roxxel.checkpoint  # noqa: E402, F401
from reliability import _leaves, tiny  # noqa: E402

assert threading.active_count() == 1, "the zygote must have no threads before forking"


def stamp_global(model: object, optimizer: object, step: int, mesh: object) -> None:
    """`reliability.stamp` for a multi-process job: every leaf a global array."""
    from jax.sharding import NamedSharding, PartitionSpec

    for index, (_, variable) in enumerate(_leaves(model, optimizer)):  # type: ignore[arg-type]
        value = variable.get_value()
        full = np.full(value.shape, step * 1000 + index, np.dtype(value.dtype))
        spec = PartitionSpec("data") if value.ndim == 2 else PartitionSpec()
        sharding = NamedSharding(mesh, spec)  # type: ignore[arg-type]
        array = jax.make_array_from_callback(full.shape, sharding, full.__getitem__)
        variable.set_value(array)


def writer(directory: str, port: int) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if NPROC > 1:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            coordinator_bind_address=f"127.0.0.1:{port}",
            num_processes=NPROC,
            process_id=PID,
            initialization_timeout=60,
            heartbeat_timeout_seconds=10,
        )
    from jax.sharding import Mesh

    from reliability import stamp
    from roxxel.checkpoint import Checkpointer

    mesh = Mesh(np.array(jax.devices()), ("data",))
    model, optimizer = tiny(SIZE)

    def stamped(step: int) -> None:
        if NPROC > 1:
            stamp_global(model, optimizer, step, mesh)
        else:
            stamp(model, optimizer, step)

    stamped(0)
    ck = Checkpointer(directory, model, optimizer, max_to_keep=2, timeout=60)
    step = ck.restore()
    print(f"ready {step}", flush=True)
    while True:
        step += 1
        stamped(step)
        print(f"saving {step}", flush=True)
        ck.save(step, {"loss": 1.0 / step})


def overwriter(directory: str, first: int) -> None:
    """Overwrite step 2 again and again, each version stamped with its number."""
    from reliability import stamp
    from roxxel.checkpoint import Checkpointer

    model, optimizer = tiny(SIZE)
    ck = Checkpointer(directory, model, optimizer, timeout=60)
    ck.restore()
    print("ready", flush=True)
    version = first
    while True:
        stamp(model, optimizer, version)
        print(f"saving {version}", flush=True)
        ck.save(2, {"loss": 1.0}, overwrite=True)
        ck.wait_until_finished()
        print(f"committed {version}", flush=True)
        version += 1


def checker(directory: str, *, read_only: bool = True) -> None:
    """A restarted job in a fresh process image: what does `restore()` give?"""
    from reliability import stamped_step
    from roxxel.checkpoint import Checkpointer

    model, optimizer = tiny(SIZE)
    try:
        with Checkpointer(directory, model, optimizer, read_only=read_only, timeout=60) as ck:
            step = ck.restore()
    except Exception as exc:  # noqa: BLE001  reported to the test, which fails on it
        print(f"checked error {type(exc).__name__}: {str(exc)[:300]!r}", flush=True)
        return
    stamped = stamped_step(model, optimizer) if step else 0
    print(f"checked {step} {stamped}", flush=True)


for line in sys.stdin:
    command, directory, port = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            if command in ("check", "reopen"):
                checker(directory, read_only=command == "check")
                sys.stdout.flush()
                os._exit(0)
            if command == "overwrite":
                overwriter(directory, int(port))
            writer(directory, int(port))
        finally:
            os._exit(1)
    print(f"pid {pid}", flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
