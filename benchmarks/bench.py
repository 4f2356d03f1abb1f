#!/usr/bin/env python
"""Roxxel checkpoint benchmark: every figure is a ratio against a baseline of the same run.

Run from the repository root with the project's virtual environment:

    .venv/bin/python benchmarks/bench.py                 # ~1 GB state, 3 repetitions
    .venv/bin/python benchmarks/bench.py --size-mb 4000  # another state size

It builds a Flax NNX MLP with an adam optimizer whose whole state (parameters, `mu`, `nu`) is
about `--size-mb` MB of incompressible float32 values, and measures, interleaved (the arms of
one repetition run back to back, in a rotating order) and as medians over `--reps`:

* B1  `save()` blocking time / time of a synchronous save of the same state;
* B2  training steps/s while saving every K steps / steps/s without saving, at K10 (a
      synchronous save would cost 10% of the time) and K33 (the background write is busy a
      third of the time); the train step is an `nnx.jit` that donates its buffers;
* B3  durable write throughput (every file fsynced, step committed) / raw sequential write
      bandwidth of the same disk (best of O_DIRECT and buffered + fdatasync);
* B4  restore throughput with the checkpoint evicted from the page cache / raw cold read
      bandwidth of a file of the same size (best of O_DIRECT and buffered);
* B5  peak extra resident memory during a save / state bytes;
* CPU seconds of the whole process per GB saved (save call through durable).

Arms: `roxxel` (the Checkpointer as shipped), `orbax` (the page's sketch: a `CheckpointManager`
with `StandardSave` and Orbax's default options, compression on), and `sync` (roxxel's
`save()` followed at once by `wait_until_finished()`).

With an NVIDIA GPU visible to JAX it also times `save()` blocking against a plain
device-to-host copy of a multi-GiB state (`--gpu-size-gb`); without one that part is skipped
and the JSON says why. Outputs go to `--out` (default `benchmarks/results/`): `results.json`,
`results.md` and `b2_timeline.png` (when matplotlib is installed: `pip install -e .[bench]`).
See `benchmarks/README.md` for the method and its traps.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import mmap
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MB = 10**6
GB = 10**9
CHUNK = 16 * 2**20  # raw I/O baselines move 16 MiB at a time, like `dd bs=16M`

TARGETS: dict[str, tuple[str, float]] = {
    "B1": ("<=", 0.01),
    "B2_K10": (">=", 0.97),
    "B2_K33": (">=", 0.90),
    "B3": (">=", 0.8),
    "B4": (">=", 0.85),
    "B5": ("<=", 1.1),
    "cpu_s_per_GB": ("<=", 0.5),
}
METRIC_NAMES = {
    "B1": "B1 save() blocking / sync save",
    "B2_K10": "B2 steps/s retained, K10 (sync save = 10%)",
    "B2_K33": "B2 steps/s retained, K33 (write busy 1/3)",
    "B3": "B3 durable write / raw disk write",
    "B4": "B4 cold restore / raw cold read",
    "B5": "B5 peak extra RSS in save / state",
    "cpu_s_per_GB": "CPU s per GB saved",
}
ARMS = ("roxxel", "orbax", "sync")
ZSTD = "roxxel_zstd"  # roxxel with compression=True, in the standalone saves only


# ============================================================================ OS helpers
def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (native ones included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, no root needed); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            yield Path(dirpath) / name


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, and `root`'s parent (cheap if done)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(root.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_PAGE = mmap.PAGESIZE


def resident_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache, from mincore(2) on a read-only mapping."""
    size = path.stat().st_size
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed", str(path))
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed", str(path))
            resident = sum(b & 1 for b in bytes(vec))
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    return min(size, resident * _PAGE)


def evict(paths: list[Path]) -> dict[str, Any]:
    """Drop `paths` (files or folders) from the page cache without root: fsync, then
    POSIX_FADV_DONTNEED; verified with mincore. Falls back to drop_caches as root."""
    files = [f for p in paths for f in ([p] if p.is_file() else walk_files(p))]

    def drop() -> None:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    total = sum(f.stat().st_size for f in files)
    drop()
    resident = sum(resident_bytes(f) for f in files)
    method = "fadvise"
    if resident > 0.01 * total:
        drop()  # pages under writeback the first time are dropped the second
        resident = sum(resident_bytes(f) for f in files)
    if resident > 0.01 * total and os.geteuid() == 0:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        resident = sum(resident_bytes(f) for f in files)
        method = "drop_caches"
    return {"method": method, "bytes": total, "resident_after": resident}


def memory_touch_probe(nbytes: int = 512 * MB, idle_s: float = 6.0) -> dict[str, float]:
    """CPU s/GB to allocate and touch memory: reused at once, and again after `idle_s`.

    On VMs with free page reporting (virtio-balloon), memory freed for a few seconds goes
    back to the host and costs far more to touch again. A checkpoint write (page cache) and a
    training step whose donation was declined both touch about one state's worth of it.
    """

    def touch() -> float:
        cpu0 = cpu_seconds()
        block = np.ones(nbytes // 4, dtype=np.float32)
        del block
        return (cpu_seconds() - cpu0) / (nbytes / GB)

    touch()
    at_once = min(touch(), touch())
    time.sleep(idle_s)
    after_idle = touch()
    return {
        "touch_reused_cpu_s_per_GB": round(at_once, 3),
        f"touch_after_{idle_s:g}s_idle_cpu_s_per_GB": round(after_idle, 3),
    }


def dir_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in walk_files(root))


# ========================================================================= raw baselines
class RawDisk:
    """Sequential write and cold read of a plain file of `nbytes`, like `dd bs=16M`."""

    def __init__(self, directory: Path, nbytes: int, seed: int = 1) -> None:
        self.path = directory / "raw.bin"
        self.nbytes = max(CHUNK, (nbytes // CHUNK) * CHUNK)
        # 64 MiB of random bytes in page-aligned memory (O_DIRECT needs alignment), cycled.
        self.pool = mmap.mmap(-1, 4 * CHUNK)
        rng = np.random.default_rng(seed)
        self.pool.write(rng.integers(0, 256, 4 * CHUNK, dtype=np.uint8).tobytes())
        self.view = memoryview(self.pool)

    def _chunks(self) -> Iterator[memoryview]:
        for i in range(self.nbytes // CHUNK):
            j = i % 4
            yield self.view[j * CHUNK : (j + 1) * CHUNK]

    def write(self, direct: bool) -> float:
        """GB/s until the data and the directory entry are on disk (CPU s in `last_cpu_s`)."""
        if self.path.exists():
            self.path.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
        cpu0 = cpu_seconds()
        start = time.perf_counter()
        fd = os.open(self.path, flags, 0o644)
        try:
            for chunk in self._chunks():
                os.write(fd, chunk)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        seconds = time.perf_counter() - start
        self.last_cpu_s = cpu_seconds() - cpu0
        return self.nbytes / seconds / GB

    def read_cold(self, direct: bool) -> tuple[float, dict[str, Any]]:
        """GB/s reading the whole file after evicting it from the page cache."""
        eviction = evict([self.path])
        flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
        buf = mmap.mmap(-1, CHUNK)
        view = memoryview(buf)
        start = time.perf_counter()
        fd = os.open(self.path, flags)
        try:
            while os.readv(fd, [view]) > 0:
                pass
        finally:
            os.close(fd)
        seconds = time.perf_counter() - start
        view.release()
        buf.close()
        return self.nbytes / seconds / GB, eviction

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# ================================================================== model and training
def build(size_bytes: int, seed: int = 0) -> tuple[Any, Any, Callable[[], Any], dict[str, Any]]:
    """An MLP + adam whose state is ~`size_bytes` of incompressible float32, and its step."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from roxxel._state import variables

    depth = 8 if size_bytes >= 64 * MB else 4
    # state = parameters + adam mu + nu = 3 * 4 bytes per parameter
    width = max(16, int(math.sqrt(size_bytes / 12 / depth)))

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.depth = depth
            for i in range(depth):
                setattr(self, f"layer{i}", nnx.Linear(width, width, rngs=rngs))

        def __call__(self, x: jax.Array) -> jax.Array:
            for i in range(self.depth - 1):
                x = nnx.tanh(getattr(self, f"layer{i}")(x))
            return getattr(self, f"layer{self.depth - 1}")(x)

    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(1e-6), wrt=nnx.Param)
    # Replace every float leaf (adam's mu and nu start as zeros) with random values, so that
    # neither compression nor sparse files can make a write look faster than the disk.
    rng = np.random.default_rng(seed)
    nbytes = 0
    for path, variable in variables(model, optimizer).items():
        value = variable.get_value()
        if not hasattr(value, "dtype") or value.dtype != jnp.float32 or value.size < 2:
            continue
        scale = 1.0 / math.sqrt(width) if path.startswith("model/") else 1e-3
        fresh = rng.standard_normal(value.shape, dtype=np.float32) * np.float32(scale)
        if "/nu/" in path:
            fresh = np.abs(fresh) * np.float32(1e-3)
        variable.set_value(jnp.asarray(fresh))
        nbytes += fresh.nbytes
    sample = np.asarray(model.layer0.kernel.get_value()).tobytes()[: 4 * 2**20]
    info = {
        "width": width,
        "depth": depth,
        "leaves": len(variables(model, optimizer)),
        "state_bytes": nbytes,
        "zlib1_ratio_of_a_leaf": round(len(zlib.compress(sample, 1)) / len(sample), 3),
    }
    batch = 8
    x = jnp.asarray(rng.standard_normal((batch, width), dtype=np.float32))
    y = jnp.asarray(rng.standard_normal((batch, width), dtype=np.float32))

    @nnx.jit(donate_argnums=(0, 1))
    def train_step(model: MLP, optimizer: nnx.Optimizer[Any]) -> jax.Array:
        def loss_fn(m: MLP) -> jax.Array:
            return jnp.mean((m(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def step() -> Any:
        return train_step(model, optimizer).block_until_ready()

    return model, optimizer, step, info


# ================================================================================= arms
class Arm:
    name = ""

    def save(self, step: int) -> float:
        """Start a save of the current state; return the seconds `save()` blocked."""
        raise NotImplementedError

    def wait(self) -> None:
        raise NotImplementedError

    def step_dir(self, step: int) -> Path:
        raise NotImplementedError

    def restore(self, step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _loss(step: int) -> float:
    return 1.0 / (step + 1)  # the newest step is also the best, whatever retention prefers


class RoxxelArm(Arm):
    def __init__(
        self, directory: Path, model: Any, optimizer: Any, *, sync: bool, compression: bool = False
    ) -> None:
        from roxxel.checkpoint import Checkpointer

        self.name = directory.name
        self.directory = directory
        self.sync = sync
        if compression:  # only to check the default; otherwise roxxel exactly as shipped
            self.ck = Checkpointer(str(directory), model, optimizer, compression=True)
        else:
            self.ck = Checkpointer(str(directory), model, optimizer)

    def save(self, step: int) -> float:
        start = time.perf_counter()
        self.ck.save(step, {"loss": _loss(step)})
        if self.sync:
            self.ck.wait_until_finished()
        return time.perf_counter() - start

    def wait(self) -> None:
        self.ck.wait_until_finished()

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def restore(self, step: int) -> None:
        import jax

        self.ck.restore(step)
        jax.block_until_ready(
            [v.get_value() for v in _live_variables(self.ck.model, self.ck.optimizer)]
        )

    def close(self) -> None:
        self.ck.close()


def _live_variables(model: Any, optimizer: Any) -> list[Any]:
    from roxxel._state import variables

    return list(variables(model, optimizer).values())


class OrbaxArm(Arm):
    """The page's sketch: Orbax defaults, `StandardSave` of `nnx.split((model, optimizer))`."""

    name = "orbax"

    def __init__(self, directory: Path, model: Any, optimizer: Any) -> None:
        import orbax.checkpoint as ocp
        from flax import nnx

        self.ocp = ocp
        self.nnx = nnx
        self.directory = directory
        self.model = model
        self.optimizer = optimizer
        options = ocp.CheckpointManagerOptions(
            max_to_keep=3,
            create=True,
            async_options=ocp.AsyncOptions(
                timeout_secs=1000, create_directories_asynchronously=True
            ),
            best_fn=lambda metrics: metrics["loss"],
            best_mode="min",
        )
        self.mngr = ocp.CheckpointManager(str(directory), options=options)

    def save(self, step: int) -> float:
        start = time.perf_counter()
        _, state = self.nnx.split((self.model, self.optimizer))
        self.mngr.save(step, args=self.ocp.args.StandardSave(state), metrics={"loss": _loss(step)})
        return time.perf_counter() - start

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def restore(self, step: int) -> None:
        import jax

        nnx = self.nnx
        _, state = nnx.split((self.model, self.optimizer))
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state
        )
        restored = self.mngr.restore(step, args=self.ocp.args.StandardRestore(abstract))
        nnx.update((self.model, self.optimizer), restored)
        jax.block_until_ready(jax.tree.leaves(nnx.state((self.model, self.optimizer))))

    def close(self) -> None:
        self.mngr.close()


# ============================================================================ measuring
def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass
class SaveSample:
    block_s: float
    durable_s: float
    cpu_s: float
    extra_rss: int
    disk_bytes: int


def measure_save(arm: Arm, step: int) -> SaveSample:
    """One standalone save, from the call until every file is fsynced and committed."""
    gc.collect()
    hwm = reset_peak_rss()
    rss0 = rss_bytes()
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    block = arm.save(step)
    arm.wait()
    # Orbax's tensorstore files are written with fsync; the JSON side files and the rename may
    # not be. fsync everything again so the clock stops only once the step is durable.
    fsync_tree(arm.step_dir(step))
    durable = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0
    peak = peak_rss_bytes() if hwm else rss_bytes()
    return SaveSample(block, durable, cpu, max(0, peak - rss0), dir_bytes(arm.step_dir(step)))


def verify_pass(step_dir: Path, step: int, state_bytes: int) -> float:
    """GB/s of roxxel's checksum check alone, cold: the first of the two passes of a restore.

    Uses a private function; NaN if it is not there (then the split is simply not reported).
    """
    try:
        from roxxel import _integrity

        check = _integrity.check
    except (ImportError, AttributeError):
        return float("nan")
    evict([step_dir])
    start = time.perf_counter()
    check(str(step_dir), step)
    return state_bytes / (time.perf_counter() - start) / GB


@dataclass
class Window:
    """One B2 window: [save] K train steps [wait for the save]; times in seconds."""

    total_s: float
    step_s: list[float]
    block_s: float = 0.0
    wait_s: float = 0.0
    extra_rss: int = 0  # peak RSS during the window - RSS at its start

    @property
    def rate(self) -> float:
        """Training steps per second over the whole window (save, steps, wait)."""
        return len(self.step_s) / self.total_s


def run_window(step_fn: Callable[[], Any], k: int, arm: Arm | None, step: int) -> Window:
    gc.collect()
    hwm = reset_peak_rss()
    rss0 = rss_bytes()
    start = time.perf_counter()
    block = arm.save(step) if arm is not None else 0.0
    times = []
    for _ in range(k):
        t = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - t)
    wait = 0.0
    if arm is not None:
        t = time.perf_counter()
        arm.wait()  # what the next save() would block for: the window is a full interval
        wait = time.perf_counter() - t
    total = time.perf_counter() - start
    peak = peak_rss_bytes() if hwm else rss_bytes()
    return Window(total, times, block, wait, max(0, peak - rss0))


@dataclass
class Results:
    saves: dict[str, list[SaveSample]] = field(
        default_factory=lambda: {a: [] for a in (*ARMS, ZSTD)}
    )
    restores: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in ARMS})
    restore_cpu: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in ARMS})
    windows: dict[str, dict[str, list[Window]]] = field(default_factory=dict)
    raw_write: dict[str, list[float]] = field(
        default_factory=lambda: {"direct": [], "buffered_fdatasync": []}
    )
    raw_cpu: dict[str, list[float]] = field(
        default_factory=lambda: {"direct": [], "buffered_fdatasync": []}
    )
    raw_read: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "buffered": []})
    evictions: list[dict[str, Any]] = field(default_factory=list)
    paired_baseline: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    verify_cold: list[float] = field(default_factory=list)


def rotate(items: list[Any], rep: int) -> list[Any]:
    """The rep-th rotation, so no arm always runs first (or right after the baseline)."""
    rep %= len(items)
    return items[rep:] + items[:rep]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    wall0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="roxxel-bench-", dir=args.dir))
    log(f"building the state ({args.size_mb} MB) in {work}")
    model, optimizer, step_fn, info = build(int(args.size_mb * MB))
    state_bytes = info["state_bytes"]
    log(f"state: {state_bytes / GB:.3f} GB in {info['leaves']} leaves, width {info['width']}")
    for _ in range(3):
        step_fn()  # compile and warm up

    arms: dict[str, Arm] = {
        "roxxel": RoxxelArm(work / "roxxel", model, optimizer, sync=False),
        "orbax": OrbaxArm(work / "orbax", model, optimizer),
        "sync": RoxxelArm(work / "sync", model, optimizer, sync=True),
        # standalone saves only: checks that compression=False is the right default
        ZSTD: RoxxelArm(work / ZSTD, model, optimizer, sync=False, compression=True),
    }
    raw = RawDisk(work, state_bytes)
    memory_probe = memory_touch_probe()
    log(f"memory touch probe (CPU s/GB): {memory_probe}")
    res = Results()
    next_step = dict.fromkeys((*ARMS, ZSTD), 1)

    def new_step(name: str) -> int:
        next_step[name] += 1
        return next_step[name]

    # Warm-up: one save per arm (thread pools, directory creation), one raw write; not counted.
    for name, arm in arms.items():
        arm.save(next_step[name])
        arm.wait()
    raw.write(direct=True)

    # ---- B1, B3, B5, CPU: standalone saves, then the raw disk, interleaved
    log("B1/B3/B5: standalone saves and raw writes")
    for rep in range(args.reps):
        for name in rotate([*ARMS, ZSTD, "raw"], rep):
            if name == "raw":
                res.raw_write["direct"].append(raw.write(direct=True))
                res.raw_cpu["direct"].append(raw.last_cpu_s / (raw.nbytes / GB))
                res.raw_write["buffered_fdatasync"].append(raw.write(direct=False))
                res.raw_cpu["buffered_fdatasync"].append(raw.last_cpu_s / (raw.nbytes / GB))
                continue
            sample = measure_save(arms[name], new_step(name))
            res.saves[name].append(sample)
            log(
                f"  {name:7s} block {sample.block_s * 1e3:8.1f} ms  durable {sample.durable_s:6.2f}"
                f" s  cpu {sample.cpu_s:5.2f} s  +rss {sample.extra_rss / MB:7.0f} MB"
            )
        log(
            f"  raw write direct {res.raw_write['direct'][-1]:.2f} GB/s, buffered+fdatasync "
            f"{res.raw_write['buffered_fdatasync'][-1]:.2f} GB/s"
        )

    # ---- B4: cold restores, then the raw cold read, interleaved
    log("B4: cold restores and raw cold reads")
    for rep in range(args.reps):
        for name in rotate([*ARMS, "raw"], rep):
            if name == "raw":
                speed, ev = raw.read_cold(direct=False)
                res.raw_read["buffered"].append(speed)
                res.evictions.append({"what": "raw", **ev})
                res.raw_read["direct"].append(raw.read_cold(direct=True)[0])
                log(
                    f"  raw cold read buffered {speed:.2f} GB/s, direct "
                    f"{res.raw_read['direct'][-1]:.2f} GB/s"
                )
                continue
            arm = arms[name]
            step = next_step[name]
            ev = evict([arm.step_dir(step)])
            res.evictions.append({"what": name, **ev})
            cpu0 = cpu_seconds()
            start = time.perf_counter()
            arm.restore(step)
            seconds = time.perf_counter() - start
            res.restores[name].append(state_bytes / seconds / GB)
            res.restore_cpu[name].append((cpu_seconds() - cpu0) / (state_bytes / GB))
            log(
                f"  {name:7s} cold restore {state_bytes / seconds / GB:.2f} GB/s "
                f"(resident before: {ev['resident_after'] / MB:.1f} MB)"
            )
            if name == "roxxel":
                res.verify_cold.append(verify_pass(arm.step_dir(step), step, state_bytes))
    raw.remove()

    # ---- B2: training with saves every K steps, against training without saves
    t_sync = median([s.durable_s for s in res.saves["sync"]])
    t_bg = median([s.durable_s for s in res.saves["roxxel"]])
    times = []
    for _ in range(5):
        t = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - t)
    t_step = median(times)
    ks = {
        "K10": max(2, round(10 * t_sync / t_step)),
        "K33": max(2, round(3 * t_bg / t_step)),
    }
    if args.max_k:  # smoke tests: the ratios lose their meaning, the code paths do not
        ks = {k: min(v, args.max_k) for k, v in ks.items()}
    log(
        f"B2: step {t_step * 1e3:.0f} ms, sync save {t_sync:.2f} s, background write "
        f"{t_bg:.2f} s -> K10={ks['K10']}, K33={ks['K33']}"
    )
    for kname, k in ks.items():
        res.windows[kname] = {a: [] for a in ("baseline", *ARMS)}
        res.paired_baseline[kname] = {a: [] for a in ARMS}
        # B A1 B A2 B A3 B A3' ... B: every arm window sits between two baseline windows, and
        # its ratio uses their mean, so drift in the machine's speed cancels out.
        order = [name for rep in range(args.reps) for name in rotate(list(ARMS), rep)]
        # No-save windows need not be K steps long: they measure a rate. Half of K33 steps
        # keeps the run short while still sampling the machine right before and after.
        nb = min(k, max(3, math.ceil(ks["K33"] / 2)))
        previous = run_window(step_fn, nb, None, 0)
        res.windows[kname]["baseline"].append(previous)
        for name in order:
            arm = arms[name]
            w = run_window(step_fn, k, arm, new_step(name))
            after = run_window(step_fn, nb, None, 0)
            res.windows[kname][name].append(w)
            res.windows[kname]["baseline"].append(after)
            res.paired_baseline[kname][name].append((previous.rate + after.rate) / 2)
            previous = after
            log(
                f"  {kname} {name:7s} {w.rate:6.2f} steps/s (no save {after.rate:6.2f})  "
                f"block {w.block_s * 1e3:7.1f} ms  wait {w.wait_s:5.2f} s"
            )

    for arm in arms.values():
        arm.close()
    shutil.rmtree(work, ignore_errors=True)
    report = summarize(res, info, ks, t_step, t_sync, t_bg, args)
    report["machine"]["memory_touch"] = memory_probe
    report["gpu"] = gpu_mode(args) if not args.no_gpu else {"skipped": "--no-gpu"}
    report["wall_seconds"] = round(time.perf_counter() - wall0, 1)
    return report


def summarize(
    res: Results,
    info: dict[str, Any],
    ks: dict[str, int],
    t_step: float,
    t_sync: float,
    t_bg: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    state_bytes = info["state_bytes"]
    disk_write = max(median(res.raw_write["direct"]), median(res.raw_write["buffered_fdatasync"]))
    disk_read = max(median(res.raw_read["direct"]), median(res.raw_read["buffered"]))
    # Per-repetition ratios against the baseline of the same repetition, then the median.
    raw_w = [
        max(a, b)
        for a, b in zip(res.raw_write["direct"], res.raw_write["buffered_fdatasync"], strict=True)
    ]
    raw_r = [
        max(a, b) for a, b in zip(res.raw_read["direct"], res.raw_read["buffered"], strict=True)
    ]
    sync_durable = [s.durable_s for s in res.saves["sync"]]
    # seconds K steps take without saving, from the median no-save rate
    baseline_all = {k: [n / w.rate for w in res.windows[k]["baseline"]] for k, n in ks.items()}
    ratios: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    for name in ARMS:
        saves = res.saves[name]
        own_sync = sync_durable if name != "orbax" else [s.durable_s for s in saves]
        r: dict[str, float] = {}
        r["B1"] = median([s.block_s / t for s, t in zip(saves, own_sync, strict=True)])
        for kname in ks:
            base = res.paired_baseline[kname][name]
            mine = res.windows[kname][name]
            r[f"B2_{kname}"] = median([m.rate / b for b, m in zip(base, mine, strict=True)])
        r["B3"] = median(
            [state_bytes / s.durable_s / GB / d for s, d in zip(saves, raw_w, strict=True)]
        )
        r["B4"] = median([g / d for g, d in zip(res.restores[name], raw_r, strict=True)])
        r["B5"] = median([s.extra_rss / state_bytes for s in saves])
        r["cpu_s_per_GB"] = median([s.cpu_s / (state_bytes / GB) for s in saves])
        ratios[name] = {k: round(v, 4) for k, v in r.items()}
        details[name] = {
            "save_block_ms": [round(s.block_s * 1e3, 2) for s in saves],
            "save_durable_s": [round(s.durable_s, 3) for s in saves],
            "save_cpu_s": [round(s.cpu_s, 3) for s in saves],
            "save_extra_rss_MB": [round(s.extra_rss / MB, 1) for s in saves],
            "on_disk_bytes": [s.disk_bytes for s in saves],
            "restore_cold_GBps": [round(v, 3) for v in res.restores[name]],
            "restore_cpu_s_per_GB": [round(v, 3) for v in res.restore_cpu[name]],
            "durable_write_GBps": [round(state_bytes / s.durable_s / GB, 3) for s in saves],
            "b2_window_s": {k: [round(w.total_s, 3) for w in res.windows[k][name]] for k in ks},
            "b2_block_ms": {
                k: [round(w.block_s * 1e3, 1) for w in res.windows[k][name]] for k in ks
            },
            "b2_wait_s": {k: [round(w.wait_s, 3) for w in res.windows[k][name]] for k in ks},
            # B5 in a training loop: peak RSS over a B2 window beyond the no-save window's peak
            # (with donation, the step after save() cannot reuse the buffers being written).
            "b2_extra_rss_over_state": {
                k: round(
                    (
                        median([w.extra_rss for w in res.windows[k][name]])
                        - median([w.extra_rss for w in res.windows[k]["baseline"]])
                    )
                    / state_bytes,
                    3,
                )
                for k in ks
            },
            # If training keeps every core busy, a save's CPU work costs cpu_s / cores of wall
            # time whatever its priority: the best B2 possible with this arm's CPU per save.
            "b2_bound_from_cpu": {
                k: round(
                    (base_t := median(baseline_all[k]))
                    / (base_t + median([s.cpu_s for s in saves]) / (os.cpu_count() or 1)),
                    4,
                )
                for k in ks
            },
            # Donation is declined while a save holds zero-copy views of the state, so the
            # first step after save() writes into fresh memory: its extra time, median.
            "b2_first_step_extra_s": {
                k: round(
                    median([w.step_s[0] - median(w.step_s[1:]) for w in res.windows[k][name]]),
                    4,
                )
                for k in ks
                if all(len(w.step_s) > 1 for w in res.windows[k][name])
            },
        }
    baseline_windows = {k: [round(w.total_s, 3) for w in res.windows[k]["baseline"]] for k in ks}
    zstd = res.saves[ZSTD]
    compression = {
        "durable_s": [round(s.durable_s, 3) for s in zstd],
        "cpu_s_per_GB": round(median([s.cpu_s / (state_bytes / GB) for s in zstd]), 3),
        "durable_over_uncompressed": round(
            median(
                [z.durable_s / r.durable_s for z, r in zip(zstd, res.saves["roxxel"], strict=True)]
            ),
            3,
        ),
        "on_disk_over_uncompressed": round(
            median(
                [
                    z.disk_bytes / r.disk_bytes
                    for z, r in zip(zstd, res.saves["roxxel"], strict=True)
                ]
            ),
            4,
        ),
    }
    return {
        "ratios": ratios,
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "machine": machine_info(args.dir),
        "config": {
            "size_mb": args.size_mb,
            "reps": args.reps,
            **info,
            "step_s": round(t_step, 4),
            "sync_save_s": round(t_sync, 3),
            "background_write_s": round(t_bg, 3),
            "K": ks,
            "interleaving": (
                "saves and restores: arms and raw disk rotate each repetition, ratio per "
                "repetition; B2: every arm window between two no-save windows, ratio to their mean"
            ),
        },
        "baselines": {
            "raw_write_direct_GBps": [round(v, 3) for v in res.raw_write["direct"]],
            "raw_write_buffered_fdatasync_GBps": [
                round(v, 3) for v in res.raw_write["buffered_fdatasync"]
            ],
            "raw_write_direct_cpu_s_per_GB": [round(v, 3) for v in res.raw_cpu["direct"]],
            "raw_write_buffered_fdatasync_cpu_s_per_GB": [
                round(v, 3) for v in res.raw_cpu["buffered_fdatasync"]
            ],
            "roxxel_checksum_verify_cold_GBps": [round(v, 3) for v in res.verify_cold],
            "raw_read_cold_buffered_GBps": [round(v, 3) for v in res.raw_read["buffered"]],
            "raw_read_cold_direct_GBps": [round(v, 3) for v in res.raw_read["direct"]],
            "disk_write_GBps_median": round(disk_write, 3),
            "disk_read_GBps_median": round(disk_read, 3),
            "b2_baseline_window_s": baseline_windows,
            "evictions": res.evictions,
        },
        "arms": details,
        "compression_check": compression,
        "timeline": {
            k: {
                name: [
                    {"block_s": w.block_s, "wait_s": w.wait_s, "step_s": w.step_s}
                    for w in res.windows[k][name]
                ]
                for name in ("baseline", *ARMS)
            }
            for k in ks
        },
    }


def machine_info(directory: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/meminfo") as f:
            info["ram_GiB"] = round(int(f.readline().split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else "?"
    except OSError:
        pass
    try:
        where = directory or tempfile.gettempdir()
        df = (
            subprocess.run(
                ["df", "--output=source,fstype", where], capture_output=True, text=True, check=True
            )
            .stdout.split("\n")[1]
            .split()
        )
        info["disk"] = " ".join(df)
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    try:
        import jax
        import orbax.checkpoint as ocp
        from flax import __version__ as flax_version

        info["versions"] = {"jax": jax.__version__, "flax": flax_version, "orbax": ocp.__version__}
        info["jax_device"] = jax.devices()[0].device_kind
    except Exception as exc:  # noqa: BLE001  informational only
        info["versions"] = repr(exc)
    return info


# ================================================================================ GPU mode
def gpu_mode(args: argparse.Namespace) -> dict[str, Any]:
    """save() blocking time against a plain device-to-host copy of a multi-GiB GPU state."""
    import jax

    try:
        gpus = jax.devices("gpu")
    except RuntimeError as exc:
        return {"skipped": f"no GPU visible to JAX ({exc})"}
    if not gpus:
        return {"skipped": "no GPU visible to JAX"}
    card = gpus[0].device_kind
    try:
        card = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    log(f"GPU mode on {card}: {args.gpu_size_gb} GB state")
    with jax.default_device(gpus[0]):
        model, optimizer, step_fn, info = build(int(args.gpu_size_gb * GB), seed=3)
        step_fn()
        work = Path(tempfile.mkdtemp(prefix="roxxel-bench-gpu-", dir=args.dir))
        arm = RoxxelArm(work / "roxxel", model, optimizer, sync=False)
        copies, blocks, durables = [], [], []
        arm.save(1)
        arm.wait()
        for rep in range(args.reps):
            step_fn()  # fresh buffers: jax caches an array's host copy after the first one
            leaves = _live_variables(model, optimizer)
            values = [v.get_value() for v in leaves]
            start = time.perf_counter()
            host = jax.device_get(values)
            copies.append(time.perf_counter() - start)
            del host
            step_fn()
            start = time.perf_counter()
            blocks.append(arm.save(2 + rep))
            arm.wait()
            fsync_tree(arm.step_dir(2 + rep))
            durables.append(time.perf_counter() - start)
        arm.close()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "card": card,
        "state_bytes": info["state_bytes"],
        "device_to_host_copy_s": [round(v, 4) for v in copies],
        "save_block_s": [round(v, 4) for v in blocks],
        "save_durable_s": [round(v, 3) for v in durables],
        "block_over_copy": round(median([b / c for b, c in zip(blocks, copies, strict=True)]), 3),
    }


# ================================================================================= output
def meets(metric: str, value: float) -> bool:
    op, target = TARGETS[metric]
    return value <= target if op == "<=" else value >= target


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    c = report["config"]
    b = report["baselines"]
    lines = [
        f"State {c['state_bytes'] / GB:.2f} GB ({c['leaves']} leaves), {c['reps']} repetitions, "
        f"step {c['step_s'] * 1e3:.0f} ms, K10={c['K']['K10']}, K33={c['K']['K33']}. "
        f"Disk: write {b['disk_write_GBps_median']:.2f} GB/s, cold read "
        f"{b['disk_read_GBps_median']:.2f} GB/s. Machine: {m.get('cpus')} CPUs "
        f"({m.get('cpu', '?')}), {m.get('ram_GiB', '?')} GiB RAM, {m.get('disk', '?')}.",
        "",
        "| Ratio (median) | target | " + " | ".join(ARMS) + " |",
        "|---|---|" + "---|" * len(ARMS),
    ]
    for metric, label in METRIC_NAMES.items():
        op, target = TARGETS[metric]
        cells = []
        for arm in ARMS:
            value = report["ratios"][arm][metric]
            if metric == "B1" and arm == "sync":
                cells.append("1 (by definition)")
                continue
            mark = "" if meets(metric, value) else " ✗"
            cells.append(f"{value:.3f}{mark}")
        lines.append(f"| {label} | {op} {target} | " + " | ".join(cells) + " |")
    rox = report["arms"]["roxxel"]
    zs = report["compression_check"]
    lines += [
        "",
        "Bounds measured in the same run (medians):",
        f"- raw write CPU s/GB: O_DIRECT {median(b['raw_write_direct_cpu_s_per_GB']):.2f}, "
        f"buffered + fdatasync {median(b['raw_write_buffered_fdatasync_cpu_s_per_GB']):.2f} "
        "(a page-cache write costs about the buffered figure when its memory is warm);",
        "- B2 if all of a save's CPU came out of training (cores saturated): "
        + ", ".join(f"{k} {v:.3f}" for k, v in rox["b2_bound_from_cpu"].items())
        + "; first step after save() slower by "
        + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in rox["b2_first_step_extra_s"].items())
        + " (donation declined while the save holds the buffers);",
        f"- roxxel cold restore CPU s/GB: {median(rox['restore_cpu_s_per_GB']):.2f}; its "
        "checksum check alone (a full cold read before TensorStore reads again) "
        f"{median(b['roxxel_checksum_verify_cold_GBps']):.2f} GB/s;",
        "- B5 inside the training loop (peak RSS of a B2 window over the no-save window's, / "
        "state): "
        + ", ".join(
            f"{a} "
            + "/".join(f"{v:.2f}" for v in report["arms"][a]["b2_extra_rss_over_state"].values())
            for a in ARMS
        )
        + " (K10/K33);",
        f"- compression=True: {zs['cpu_s_per_GB']:.2f} CPU s/GB, durable time "
        f"x{zs['durable_over_uncompressed']:.2f}, bytes on disk "
        f"x{zs['on_disk_over_uncompressed']:.3f} of the default (compression off).",
    ]
    touch = report["machine"].get("memory_touch", {})
    if touch:
        lines.append(
            "- touching memory (CPU s/GB): "
            + ", ".join(
                f"{k.replace('touch_', '').replace('_cpu_s_per_GB', '')} {v:.2f}"
                for k, v in touch.items()
            )
            + " (a VM that hands freed memory back to its host makes every save pay the second)."
        )
    gpu = report.get("gpu", {})
    lines.append("")
    if "skipped" in gpu:
        lines.append(f"GPU mode: skipped ({gpu['skipped']}).")
    else:
        lines.append(
            f"GPU mode ({gpu['card']}, {gpu['state_bytes'] / GB:.2f} GB): save() blocked "
            f"{median(gpu['save_block_s']):.3f} s against a plain device-to-host copy of "
            f"{median(gpu['device_to_host_copy_s']):.3f} s (ratio {gpu['block_over_copy']})."
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        log("matplotlib is not installed (pip install -e .[bench]); no plot")
        return False
    timeline = report["timeline"]
    colors = {"roxxel": "tab:blue", "orbax": "tab:orange", "sync": "tab:red"}
    c = report["config"]
    fig, axes = plt.subplots(
        len(timeline), len(ARMS), figsize=(13, 3.4 * len(timeline)), sharey="row", squeeze=False
    )
    for row, (kname, arms) in zip(axes, timeline.items(), strict=True):
        base = [s * 1e3 for w in arms["baseline"] for s in w["step_s"]]
        lo, mid, hi = np.percentile(base, [25, 50, 75]) if base else (np.nan,) * 3
        for ax, name in zip(row, ARMS, strict=True):
            x0 = 0.0  # seconds since this arm's first window; its windows laid end to end
            xs: list[float] = []
            ys: list[float] = []
            for w in arms[name]:
                # A save point: save() blocks, then the steps run; the window ends with the
                # wait for the write, which in steady state is where the next save() waits.
                stall = w["block_s"] + w["wait_s"]
                ax.axvline(x0, color="black", lw=0.8, ls=":")
                ax.plot([x0], [max(stall * 1e3, 1.0)], marker="v", ms=8, color="black")
                x0 += w["block_s"]
                for step_s in w["step_s"]:
                    x0 += step_s
                    xs.append(x0)
                    ys.append(step_s * 1e3)
                x0 += w["wait_s"]
                xs.append(float("nan"))
                ys.append(float("nan"))
            ax.axhspan(lo, hi, color="0.85", zorder=0)
            ax.axhline(mid, color="0.5", lw=1, zorder=0)
            ax.plot(xs, ys, color=colors[name], lw=1.2, marker=".", ms=3)
            ratio = report["ratios"][name]["B2_" + kname]
            ax.set_title(f"{kname}, {name}: every {c['K'][kname]} steps, retained {ratio:.2f}")
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.set_xlabel("s of training (windows end to end)")
        row[0].set_ylabel("step time, ms")
    handles = [
        Line2D([], [], color="0.5", lw=1, label="no-save step time, median (band: IQR)"),
        Line2D(
            [],
            [],
            color="black",
            marker="v",
            ls=":",
            lw=0.8,
            label="save() call; marker height = time blocked there (save + wait)",
        ),
        *(Line2D([], [], color=colors[a], marker=".", label=f"{a} step time") for a in ARMS),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(
        f"B2: step time while checkpointing {c['state_bytes'] / GB:.2f} GB every K steps on "
        f"{report['machine'].get('cpus')} CPUs",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1000, help="state size (default 1000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median; default 3)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--dir", default=None, help="where checkpoints go (default: a temp dir)")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU mode")
    parser.add_argument("--gpu-size-gb", type=float, default=4.0, help="GPU mode state size")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--max-k", type=int, default=0, help="cap K10 and K33 (smoke tests)")
    args = parser.parse_args(argv)
    report = run(args)
    out = Path(args.out)
    table = markdown(report)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "results.md").write_text(table)
    if not args.no_plot:
        plot(report, out / "b2_timeline.png")
    print()
    print(table)
    log(f"done in {report['wall_seconds']} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
