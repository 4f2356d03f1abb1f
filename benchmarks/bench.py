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
* B3  durable write throughput (every file fsynced, step committed) / raw sequential
      `O_DIRECT` write bandwidth of the same disk (buffered + fdatasync as an extra column),
      and the durable time against safetensors' `save_file` + fsync of the same state;
* B4  restore throughput with the checkpoint evicted from the page cache / raw cold read
      bandwidth of a file of the same size (best of O_DIRECT and buffered);
* B5  peak extra resident memory during a save / state bytes; with `staging="copy"` and a
      `staging_limit_bytes` of a quarter of the state, peak extra memory / that bound;
* CPU seconds of the whole process per GB saved (save call through durable) and per GB
      restored (cold);
* `save()` blocking time in ms of two small states, beside the same run's synchronous save:
  the demo's model (demo/train_digits.py, ~3.5 MiB) and 3000 leaves of 1.6 MiB in all;
* sweeps of `save()` blocking time and time to durable over the leaf count (`--leaf-counts`
  at each of `--leaf-sweep-sizes`) and over the state size (`--sweep-sizes`), each point
  against a synchronous save and a raw O_DIRECT write of the same bytes.

Arms: `roxxel` (the Checkpointer with its defaults), `roxxel_copy` (`staging="copy"`, when
the Checkpointer has that option), `orbax` (the page's sketch: a `CheckpointManager` with
`StandardSave` and Orbax's default options, compression on), `sync` (roxxel's `save()`
followed at once by `wait_until_finished()`) and `safetensors` (`safetensors.numpy.save_file`
of the flattened state, then fsync of the file and its folder; restore: `load_file` and
`jax.device_put`).

With an NVIDIA GPU visible to JAX it also times `save()` blocking against a plain
device-to-host copy of a multi-GiB state (`--gpu-size-gb`); without one that part is skipped
and the JSON says why. Outputs go to `--out` (default `benchmarks/results/`): `results.json`,
`results.md`, `b2_timeline.png` and `sweeps.png` (when matplotlib is installed:
`pip install -e .[bench]`). See `benchmarks/README.md` for the method and its traps.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import inspect
import json
import math
import mmap
import os
import platform
import re
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
MiB = 2**20
CHUNK = 16 * MiB  # raw I/O baselines move 16 MiB at a time, like `dd bs=16M`
ALIGN = 4096  # O_DIRECT lengths: a multiple of the largest common logical block size
REPO = Path(__file__).resolve().parents[1]

# Every target; the ones ending in _ms are the only absolute figures, each reported beside
# the synchronous save of the same state in the same run.
TARGETS: dict[str, tuple[str, float]] = {
    "B1": ("<=", 0.005),
    "demo_save_block_ms": ("<=", 5.0),
    "many_leaves_save_block_ms": ("<=", 50.0),
    "B2_K10": (">=", 0.98),
    "B2_K33": (">=", 0.93),
    "B3": (">=", 0.85),
    "B3_vs_safetensors": ("<", 1.0),
    "cpu_s_per_GB": ("<=", 0.25),
    "B4": (">=", 0.95),
    "cpu_s_per_GB_restored": ("<=", 0.6),
    "B5": ("<=", 0.1),
    "B5_bounded": ("<=", 1.0),
}
# Rows of the main table (per arm); "B3_buffered" is an extra column without a target.
METRIC_NAMES = {
    "B1": "B1 save() blocking / sync save",
    "B2_K10": "B2 steps/s retained, K10 (sync save = 10%)",
    "B2_K33": "B2 steps/s retained, K33 (write busy 1/3)",
    "B3": "B3 durable write / raw O_DIRECT write",
    "B3_buffered": "B3 durable write / raw buffered + fdatasync write (extra)",
    "B3_vs_safetensors": "durable time / safetensors save_file + fsync time",
    "cpu_s_per_GB": "CPU s per GB saved",
    "B4": "B4 cold restore / raw cold read",
    "cpu_s_per_GB_restored": "CPU s per GB restored (cold)",
    "B5": "B5 peak extra RSS in save / state",
}
ROXXEL, COPY, ORBAX, SYNC, SAFE = "roxxel", "roxxel_copy", "orbax", "sync", "safetensors"
ZSTD = "roxxel_zstd"  # roxxel with compression=True, in the standalone saves only
BOUNDED = "roxxel_copy_bounded"  # staging="copy", staging_limit_bytes=state/4: B5 only
ARMS = (ROXXEL, COPY, ORBAX, SYNC, SAFE)  # columns of the main table
B2_ARMS = (ROXXEL, COPY, ORBAX, SYNC)  # arms that train while saving
ASYNC_ARMS = (ROXXEL, COPY, ORBAX)  # arms whose save() returns before the write is done


def checkpointer_options() -> set[str]:
    """The keyword options the installed Checkpointer takes (`staging` is new)."""
    from roxxel.checkpoint import Checkpointer

    return set(inspect.signature(Checkpointer).parameters)


def staging_supported() -> bool:
    return "staging" in checkpointer_options()


ROXXEL_OPTIONS: dict[str, Any] = {}
"""Options of the `roxxel` arm beyond the defaults (`--roxxel-staging`)."""


def staging_default() -> Any:
    from roxxel.checkpoint import Checkpointer

    if "staging" not in checkpointer_options():
        return None
    param = inspect.signature(Checkpointer).parameters.get("staging")
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def parse_size(text: str) -> int:
    """'64MB', '1.6MiB', '4GB', '512KiB' or a bare number of MB -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b|b)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64MB, 1.6MiB, 4GB)")
    unit = (match.group(2) or "mb").lower()
    scale = {
        "b": 1,
        "kb": 10**3,
        "mb": MB,
        "gb": GB,
        "kib": 2**10,
        "mib": MiB,
        "gib": 2**30,
    }[unit]
    return int(float(match.group(1)) * scale)


def size_list(text: str) -> list[int]:
    return [parse_size(t) for t in text.split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def human(nbytes: float) -> str:
    """Bytes in the unit a reader expects: MiB below 10 MB, else MB or GB."""
    if nbytes < 10 * MB:
        return f"{nbytes / MiB:.2f} MiB"
    if nbytes < GB:
        return f"{nbytes / MB:.0f} MB"
    return f"{nbytes / GB:.2f} GB"


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
_POOL: mmap.mmap | None = None


def _random_pool() -> memoryview:
    """64 MiB of random bytes in page-aligned memory (O_DIRECT needs alignment), made once."""
    global _POOL
    if _POOL is None:
        _POOL = mmap.mmap(-1, 4 * CHUNK)
        rng = np.random.default_rng(1)
        _POOL.write(rng.integers(0, 256, 4 * CHUNK, dtype=np.uint8).tobytes())
    return memoryview(_POOL)


class RawDisk:
    """Sequential write and cold read of a plain file of `nbytes`, like `dd bs=16M`."""

    def __init__(self, directory: Path, nbytes: int) -> None:
        self.path = directory / "raw.bin"
        self.nbytes = max(ALIGN, (nbytes // ALIGN) * ALIGN)
        self.view = _random_pool()
        self.last_cpu_s = 0.0
        self.last_s = 0.0

    def _chunks(self) -> Iterator[memoryview]:
        done, i = 0, 0
        while done < self.nbytes:
            n = min(CHUNK, self.nbytes - done)
            j = i % 4
            yield self.view[j * CHUNK : j * CHUNK + n]
            done += n
            i += 1

    def write(self, direct: bool) -> float:
        """GB/s until the data and the directory entry are on disk (seconds in `last_s`, CPU
        seconds in `last_cpu_s`)."""
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
        self.last_s = time.perf_counter() - start
        self.last_cpu_s = cpu_seconds() - cpu0
        return self.nbytes / self.last_s / GB

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
def live_variables(model: Any, optimizer: Any) -> dict[str, Any]:
    """The live Variables of `model` and `optimizer`, keyed by path ("model/layer0/kernel").

    Built on public NNX calls only, so the benchmark does not depend on roxxel's internals.
    """
    from flax import nnx

    result: dict[str, Any] = {}
    for root, obj in (("model", model), ("optimizer", optimizer)):
        if obj is None:
            continue
        for path, variable in nnx.to_flat_state(nnx.state(obj)):
            if variable.get_value() is None:
                continue
            result[root + "/" + "/".join(map(str, path))] = variable
    return result


def randomize(model: Any, optimizer: Any, seed: int, scale: float) -> int:
    """Replace every float leaf with random values; return the state's float bytes.

    Adam's mu and nu start as zeros: neither compression nor sparse files may make a write
    look faster than the disk.
    """
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    nbytes = 0
    for path, variable in live_variables(model, optimizer).items():
        value = variable.get_value()
        if not hasattr(value, "dtype") or value.dtype != jnp.float32 or value.size < 2:
            continue
        leaf_scale = scale if path.startswith("model/") else 1e-3
        fresh = rng.standard_normal(value.shape, dtype=np.float32) * np.float32(leaf_scale)
        if "/nu/" in path:
            fresh = np.abs(fresh) * np.float32(1e-3)
        variable.set_value(jnp.asarray(fresh))
        nbytes += fresh.nbytes
    return nbytes


@dataclass
class BenchState:
    """A model and optimizer to checkpoint, and how to give them fresh buffers between saves."""

    model: Any
    optimizer: Any
    refresh: Callable[[], Any]
    info: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return int(self.info["state_bytes"])


def build(size_bytes: int, seed: int = 0) -> tuple[Any, Any, Callable[[], Any], dict[str, Any]]:
    """An MLP + adam whose state is ~`size_bytes` of incompressible float32, and its step."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

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
    nbytes = randomize(model, optimizer, seed, 1.0 / math.sqrt(width))
    sample = np.asarray(model.layer0.kernel.get_value()).tobytes()[: 4 * 2**20]
    info = {
        "width": width,
        "depth": depth,
        "leaves": len(live_variables(model, optimizer)),
        "state_bytes": nbytes,
        "zlib1_ratio_of_a_leaf": round(len(zlib.compress(sample, 1)) / len(sample), 3),
    }
    rng = np.random.default_rng(seed + 1)
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


def _negate_all(model: Any, optimizer: Any) -> Callable[[], None]:
    """Fresh buffers for every float leaf (as a train step gives), without compiling a step:
    an eager negation per leaf keeps the values random and the old arrays free to go."""
    import jax
    import jax.numpy as jnp

    def refresh() -> None:
        values = []
        for variable in live_variables(model, optimizer).values():
            value = variable.get_value()
            if getattr(value, "dtype", None) == jnp.float32:
                variable.set_value(jnp.negative(value))
                values.append(variable.get_value())
        jax.block_until_ready(values)

    return refresh


def build_leaves(total_bytes: int, leaves: int, seed: int = 0) -> BenchState:
    """A module + adam with exactly `leaves` leaves of ~`total_bytes` float32 in all.

    P parameters give 3P leaves with adam's mu and nu, plus the optimizer's fixed leaves (its
    step and adam's count); the remainder (0-2) are non-trained `BatchStat`s of the same size,
    so every leaf count from 3 + the fixed ones up is exact.
    """
    import jax.numpy as jnp
    import optax
    from flax import nnx

    def make(params: int, stats: int, per_leaf: int) -> tuple[Any, Any]:
        class Bag(nnx.Module):
            def __init__(self) -> None:
                for i in range(params):
                    setattr(self, f"p{i:04d}", nnx.Param(jnp.zeros((per_leaf,), jnp.float32)))
                for j in range(stats):
                    setattr(self, f"s{j}", nnx.BatchStat(jnp.zeros((per_leaf,), jnp.float32)))

        model = Bag()
        return model, nnx.Optimizer(model, optax.adam(1e-6), wrt=nnx.Param)

    fixed = len(live_variables(*make(1, 0, 1))) - 3  # the optimizer's own leaves
    params = max(1, (leaves - fixed) // 3)
    stats = max(0, leaves - fixed - 3 * params)
    per_leaf = max(1, total_bytes // 4 // (3 * params + stats))
    model, optimizer = make(params, stats, per_leaf)
    nbytes = randomize(model, optimizer, seed, 0.05)
    info = {
        "leaves": len(live_variables(model, optimizer)),
        "state_bytes": nbytes,
        "elements_per_leaf": per_leaf,
    }
    return BenchState(model, optimizer, _negate_all(model, optimizer), info)


def build_demo(seed: int = 0) -> BenchState:
    """The demo's model and optimizer (demo/train_digits.py:build), values randomized."""
    spec = importlib.util.spec_from_file_location("train_digits", REPO / "demo" / "train_digits.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("demo/train_digits.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, optimizer = module.build(seed)
    nbytes = randomize(model, optimizer, seed, 0.05)
    info = {
        "leaves": len(live_variables(model, optimizer)),
        "state_bytes": nbytes,
        "source": "demo/train_digits.py:build",
    }
    return BenchState(model, optimizer, _negate_all(model, optimizer), info)


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
    """The Checkpointer; `options` are keyword options it is given beyond its defaults."""

    def __init__(
        self, directory: Path, model: Any, optimizer: Any, *, sync: bool, **options: Any
    ) -> None:
        from roxxel.checkpoint import Checkpointer

        unknown = set(options) - checkpointer_options()
        if unknown:
            raise TypeError(f"this Checkpointer has no option(s) {sorted(unknown)}")
        self.name = directory.name
        self.directory = directory
        self.sync = sync
        self.options = options
        self.ck = Checkpointer(str(directory), model, optimizer, **options)

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
            [v.get_value() for v in live_variables(self.ck.model, self.ck.optimizer).values()]
        )

    def close(self) -> None:
        self.ck.close()


class OrbaxArm(Arm):
    """The page's sketch: Orbax defaults, `StandardSave` of `nnx.split((model, optimizer))`."""

    name = ORBAX

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


class SafetensorsArm(Arm):
    """The simple baseline: `safetensors.numpy.save_file` of the flattened state, then fsync
    of the file and its folders (synchronous); restore: `load_file` + `jax.device_put`."""

    name = SAFE
    FILE = "state.safetensors"

    def __init__(self, directory: Path, model: Any, optimizer: Any, keep: int = 2) -> None:
        self.directory = directory
        self.model = model
        self.optimizer = optimizer
        self.keep = keep
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, step: int) -> float:
        import jax
        from safetensors.numpy import save_file

        start = time.perf_counter()
        flat = {}
        for path, variable in live_variables(self.model, self.optimizer).items():
            value = variable.get_value()
            if jax.dtypes.issubdtype(getattr(value, "dtype", np.float32), jax.dtypes.prng_key):
                value = jax.random.key_data(value)
            flat[path] = np.ascontiguousarray(np.asarray(value))
        folder = self.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.FILE
        save_file(flat, str(target))
        for path in (target, folder, self.directory):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        seconds = time.perf_counter() - start
        del flat
        for old in sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit()):
            if old <= step - self.keep:
                shutil.rmtree(self.directory / str(old), ignore_errors=True)
        return seconds

    def wait(self) -> None:
        pass

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def restore(self, step: int) -> None:
        import jax
        from safetensors.numpy import load_file

        loaded = load_file(str(self.step_dir(step) / self.FILE))
        targets = live_variables(self.model, self.optimizer)
        # device_put copies out of the loaded buffers (checked), so every byte is read here.
        # safetensors stores a 0-d array as shape (1,): give each leaf its live shape back.
        arrays = jax.device_put(
            [loaded[path].reshape(v.get_value().shape) for path, v in targets.items()]
        )
        jax.block_until_ready(arrays)
        for variable, array in zip(targets.values(), arrays, strict=True):
            variable.set_value(array)

    def close(self) -> None:
        pass


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
    dirty_after: int  # system-wide Dirty + Writeback right after the save was durable


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
    dirty = dirty_bytes()
    peak = peak_rss_bytes() if hwm else rss_bytes()
    return SaveSample(
        block, durable, cpu, max(0, peak - rss0), dir_bytes(arm.step_dir(step)), dirty
    )


def verify_pass(step_dir: Path, step: int, state_bytes: int) -> float:
    """GB/s of roxxel's checksum check alone, cold (roxxel 0.1.0: the first of a restore's two
    passes). Uses a private function; NaN if it is not there or has changed."""
    try:
        from roxxel import _integrity

        check = _integrity.check
        evict([step_dir])
        start = time.perf_counter()
        check(str(step_dir), step)
    except Exception:  # noqa: BLE001  informational only; the array path is being rewritten
        return float("nan")
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
    saves: dict[str, list[SaveSample]] = field(default_factory=dict)
    restores: dict[str, list[float]] = field(default_factory=dict)
    restore_cpu: dict[str, list[float]] = field(default_factory=dict)
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


def _meminfo() -> dict[str, int]:
    with open("/proc/meminfo") as f:
        return {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f if ln.endswith("kB\n")}


def free_memory_bytes() -> int:
    return _meminfo().get("MemAvailable", 0)


def dirty_bytes() -> int:
    """System-wide Dirty + Writeback: near 0 right after a durable save if nothing was left in
    the page cache (other processes' writes count too, so this is a check, not a measure)."""
    info = _meminfo()
    return info.get("Dirty", 0) + info.get("Writeback", 0)


# ===================================================================== sweep points
def measure_point(
    label: str, state: BenchState, reps: int, work_root: Path, *, orbax: bool = False
) -> dict[str, Any]:
    """save() blocking and time to durable of one state, for every saving arm, interleaved with
    a raw O_DIRECT write of the same bytes; each arm's ratios against the same repetition's
    synchronous save (blocking) and raw write (durable)."""
    nbytes = state.nbytes
    arm_count = 3 + (1 if staging_supported() else 0) + (1 if orbax else 0)
    # retention keeps 2 steps (+1 in flight) per Checkpointer; the other arms keep 2 or 1.
    need_disk = nbytes * (3 * arm_count + 1)
    free_disk = shutil.disk_usage(work_root).free
    if need_disk > free_disk:
        return {
            "label": label,
            "state_bytes": nbytes,
            "leaves": state.info["leaves"],
            "skipped": f"needs ~{need_disk / GB:.1f} GB of disk, {free_disk / GB:.1f} GB free",
        }
    work = Path(tempfile.mkdtemp(prefix="point-", dir=work_root))
    model, optimizer = state.model, state.optimizer
    arms: dict[str, Arm] = {
        ROXXEL: RoxxelArm(
            work / ROXXEL, model, optimizer, sync=False, max_to_keep=2, **ROXXEL_OPTIONS
        )
    }
    if staging_supported():
        arms[COPY] = RoxxelArm(
            work / COPY, model, optimizer, sync=False, max_to_keep=2, staging="copy"
        )
    if orbax:
        arms[ORBAX] = OrbaxArm(work / ORBAX, model, optimizer)
    arms[SYNC] = RoxxelArm(work / SYNC, model, optimizer, sync=True, max_to_keep=2)
    arms[SAFE] = SafetensorsArm(work / SAFE, model, optimizer, keep=1)
    raw = RawDisk(work, nbytes)
    samples: dict[str, list[SaveSample]] = {name: [] for name in arms}
    raw_s: list[float] = []
    try:
        for arm in arms.values():  # warm-up, not counted
            arm.save(1)
            arm.wait()
        raw.write(direct=True)
        for rep in range(reps):
            step = rep + 2
            for name in rotate([*arms, "raw"], rep):
                if name == "raw":
                    raw.write(direct=True)
                    raw_s.append(raw.last_s)
                    continue
                state.refresh()
                samples[name].append(measure_save(arms[name], step))
    finally:
        for arm in arms.values():
            arm.close()
        shutil.rmtree(work, ignore_errors=True)
    sync_s = [s.durable_s for s in samples[SYNC]]
    ratios: dict[str, dict[str, float]] = {}
    for name, saves in samples.items():
        r: dict[str, float] = {}
        if name in ASYNC_ARMS:
            own = sync_s if name != ORBAX else [s.durable_s for s in saves]
            r["block_over_sync"] = median([s.block_s / t for s, t in zip(saves, own, strict=True)])
        # durable throughput / raw O_DIRECT throughput, each against its own repetition
        r["durable_over_raw_direct"] = median(
            [(nbytes / s.durable_s) / (raw.nbytes / t) for s, t in zip(saves, raw_s, strict=True)]
        )
        ratios[name] = {k: round(v, 4) for k, v in r.items()}
    point = {
        "label": label,
        "state_bytes": nbytes,
        "leaves": state.info["leaves"],
        "reps": reps,
        "sync_save_ms": round(median(sync_s) * 1e3, 2),
        "raw_direct_write_ms": round(median(raw_s) * 1e3, 2),
        "raw_direct_bytes": raw.nbytes,
        "median_block_ms": {
            n: round(median([s.block_s for s in v]) * 1e3, 3) for n, v in samples.items()
        },
        "median_durable_ms": {
            n: round(median([s.durable_s for s in v]) * 1e3, 2) for n, v in samples.items()
        },
        "ratios": ratios,
        "samples": {
            n: {
                "block_ms": [round(s.block_s * 1e3, 3) for s in v],
                "durable_ms": [round(s.durable_s * 1e3, 2) for s in v],
                "cpu_s": [round(s.cpu_s, 4) for s in v],
                "extra_rss_MB": [round(s.extra_rss / MB, 1) for s in v],
                "dirty_writeback_after_durable_MB": [round(s.dirty_after / MB, 1) for s in v],
            }
            for n, v in samples.items()
        },
        "raw_direct_write_samples_ms": [round(t * 1e3, 2) for t in raw_s],
    }
    log(
        f"  {label}: sync save {point['sync_save_ms']:.1f} ms, raw O_DIRECT write "
        f"{point['raw_direct_write_ms']:.1f} ms; block "
        + ", ".join(f"{n} {v:.2f} ms" for n, v in point["median_block_ms"].items() if n != SAFE)
    )
    return point


def run_points(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The demo's model, the leaf-count sweep and the size sweep."""
    small_reps = args.small_reps or max(args.reps, 5)

    def reps_for(nbytes: int) -> int:
        return small_reps if nbytes < 16 * MB else args.reps

    log(f"small states and sweeps (reps: {small_reps} below 16 MB, {args.reps} above)")
    demo = measure_point("demo model", build_demo(), small_reps, work, orbax=True)
    gc.collect()
    leaves = []
    for size in args.leaf_sweep_sizes:
        for count in args.leaf_counts:
            state = build_leaves(size, count)
            point = measure_point(f"{count} leaves, {human(size)}", state, reps_for(size), work)
            leaves.append({**point, "nominal_bytes": size})
            del state
            gc.collect()
    sizes = []
    for size in args.sweep_sizes:
        if 3 * size > free_memory_bytes():
            sizes.append(
                {
                    "label": human(size),
                    "state_bytes": size,
                    "nominal_bytes": size,
                    "skipped": f"needs ~{3 * size / GB:.1f} GB of free memory",
                }
            )
            log(f"  {human(size)}: skipped ({sizes[-1]['skipped']})")
            continue
        model, optimizer, step_fn, info = build(size, seed=2)
        step_fn()  # compile
        state = BenchState(model, optimizer, step_fn, info)
        point = measure_point(human(size), state, reps_for(size), work)
        sizes.append({**point, "nominal_bytes": size})
        del model, optimizer, step_fn, state
        gc.collect()
    return {"demo": demo, "leaves": leaves, "size": sizes}


# ============================================================================ the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    wall0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="roxxel-bench-", dir=args.dir))
    try:
        report = run_main(args, work)
        report["sweeps"] = run_points(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["small_states"] = small_states(report["sweeps"])
    report["gpu"] = gpu_mode(args) if not args.no_gpu else {"skipped": "--no-gpu"}
    report["wall_seconds"] = round(time.perf_counter() - wall0, 1)
    return report


def run_main(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """B1-B5 and the CPU figures on the `--size-mb` state."""
    log(f"building the state ({args.size_mb} MB) in {work}")
    model, optimizer, step_fn, info = build(int(args.size_mb * MB))
    state_bytes = info["state_bytes"]
    log(f"state: {state_bytes / GB:.3f} GB in {info['leaves']} leaves, width {info['width']}")
    for _ in range(3):
        step_fn()  # compile and warm up

    options = checkpointer_options()
    staging = "staging" in options
    skipped: dict[str, str] = {}
    arms: dict[str, Arm] = {
        ROXXEL: RoxxelArm(work / ROXXEL, model, optimizer, sync=False, **ROXXEL_OPTIONS)
    }
    if staging:
        arms[COPY] = RoxxelArm(work / COPY, model, optimizer, sync=False, staging="copy")
    else:
        skipped[COPY] = "this Checkpointer has no `staging` option"
    arms[ORBAX] = OrbaxArm(work / ORBAX, model, optimizer)
    arms[SYNC] = RoxxelArm(work / SYNC, model, optimizer, sync=True)
    arms[SAFE] = SafetensorsArm(work / SAFE, model, optimizer)
    # standalone saves only: whether compression=False is the right default, and B5 bounded
    if "compression" in options:
        arms[ZSTD] = RoxxelArm(work / ZSTD, model, optimizer, sync=False, compression=True)
    else:
        skipped[ZSTD] = "this Checkpointer has no `compression` option"
    bound = state_bytes // 4
    if staging and "staging_limit_bytes" in options:
        arms[BOUNDED] = RoxxelArm(
            work / BOUNDED,
            model,
            optimizer,
            sync=False,
            staging="copy",
            staging_limit_bytes=bound,
        )
    else:
        skipped[BOUNDED] = "this Checkpointer has no `staging`/`staging_limit_bytes` options"
    table_arms = [a for a in ARMS if a in arms]
    b2_arms = [a for a in B2_ARMS if a in arms]
    for name, why in skipped.items():
        log(f"arm {name} skipped: {why}")
    raw = RawDisk(work, state_bytes)
    memory_probe = memory_touch_probe()
    log(f"memory touch probe (CPU s/GB): {memory_probe}")
    res = Results()
    res.saves = {name: [] for name in arms}
    res.restores = {name: [] for name in table_arms}
    res.restore_cpu = {name: [] for name in table_arms}
    next_step = dict.fromkeys(arms, 1)

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
        for name in rotate([*arms, "raw"], rep):
            if name == "raw":
                res.raw_write["direct"].append(raw.write(direct=True))
                res.raw_cpu["direct"].append(raw.last_cpu_s / (raw.nbytes / GB))
                res.raw_write["buffered_fdatasync"].append(raw.write(direct=False))
                res.raw_cpu["buffered_fdatasync"].append(raw.last_cpu_s / (raw.nbytes / GB))
                continue
            step_fn()  # fresh buffers, as in training (and JAX caches a host copy per array)
            sample = measure_save(arms[name], new_step(name))
            res.saves[name].append(sample)
            log(
                f"  {name:19s} block {sample.block_s * 1e3:8.1f} ms  durable "
                f"{sample.durable_s:6.2f} s  cpu {sample.cpu_s:5.2f} s  +rss "
                f"{sample.extra_rss / MB:7.0f} MB"
            )
        log(
            f"  raw write direct {res.raw_write['direct'][-1]:.2f} GB/s, buffered+fdatasync "
            f"{res.raw_write['buffered_fdatasync'][-1]:.2f} GB/s"
        )

    # ---- B4: cold restores, then the raw cold read, interleaved
    log("B4: cold restores and raw cold reads")
    for rep in range(args.reps):
        for name in rotate([*table_arms, "raw"], rep):
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
            gc.collect()
            cpu0 = cpu_seconds()
            start = time.perf_counter()
            arm.restore(step)
            seconds = time.perf_counter() - start
            res.restores[name].append(state_bytes / seconds / GB)
            res.restore_cpu[name].append((cpu_seconds() - cpu0) / (state_bytes / GB))
            log(
                f"  {name:11s} cold restore {state_bytes / seconds / GB:.2f} GB/s, "
                f"{res.restore_cpu[name][-1]:.2f} CPU s/GB "
                f"(resident before: {ev['resident_after'] / MB:.1f} MB)"
            )
            if name == ROXXEL:
                res.verify_cold.append(verify_pass(arm.step_dir(step), step, state_bytes))
    raw.remove()

    # ---- B2: training with saves every K steps, against training without saves
    t_sync = median([s.durable_s for s in res.saves[SYNC]])
    t_bg = median([s.durable_s for s in res.saves[ROXXEL]])
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
        res.windows[kname] = {a: [] for a in ("baseline", *b2_arms)}
        res.paired_baseline[kname] = {a: [] for a in b2_arms}
        # B A1 B A2 B A3 B A3' ... B: every arm window sits between two baseline windows, and
        # its ratio uses their mean, so drift in the machine's speed cancels out.
        order = [name for rep in range(args.reps) for name in rotate(list(b2_arms), rep)]
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
                f"  {kname} {name:11s} {w.rate:6.2f} steps/s (no save {after.rate:6.2f})  "
                f"block {w.block_s * 1e3:7.1f} ms  wait {w.wait_s:5.2f} s"
            )

    for arm in arms.values():
        arm.close()
    arms.clear()
    for child in work.iterdir():  # the sweeps need the disk (4 GB points)
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    report = summarize(res, info, ks, t_step, t_sync, t_bg, args, table_arms, b2_arms, bound)
    report["skipped_arms"] = skipped
    report["machine"]["memory_touch"] = memory_probe
    del model, optimizer, step_fn
    gc.collect()
    return report


def summarize(
    res: Results,
    info: dict[str, Any],
    ks: dict[str, int],
    t_step: float,
    t_sync: float,
    t_bg: float,
    args: argparse.Namespace,
    table_arms: list[str],
    b2_arms: list[str],
    bound: int,
) -> dict[str, Any]:
    state_bytes = info["state_bytes"]
    gb = state_bytes / GB
    disk_write = median(res.raw_write["direct"])
    disk_read = max(median(res.raw_read["direct"]), median(res.raw_read["buffered"]))
    # Per-repetition ratios against the baseline of the same repetition, then the median.
    raw_direct = res.raw_write["direct"]
    raw_buffered = res.raw_write["buffered_fdatasync"]
    raw_r = [
        max(a, b) for a, b in zip(res.raw_read["direct"], res.raw_read["buffered"], strict=True)
    ]
    sync_durable = [s.durable_s for s in res.saves[SYNC]]
    safe_durable = [s.durable_s for s in res.saves[SAFE]]
    # seconds K steps take without saving, from the median no-save rate
    baseline_all = {k: [n / w.rate for w in res.windows[k]["baseline"]] for k, n in ks.items()}
    ratios: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    for name in table_arms:
        saves = res.saves[name]
        r: dict[str, float] = {}
        if name != SAFE:
            own_sync = sync_durable if name != ORBAX else [s.durable_s for s in saves]
            r["B1"] = median([s.block_s / t for s, t in zip(saves, own_sync, strict=True)])
        if name in b2_arms:
            for kname in ks:
                base = res.paired_baseline[kname][name]
                mine = res.windows[kname][name]
                r[f"B2_{kname}"] = median([m.rate / b for b, m in zip(base, mine, strict=True)])
        r["B3"] = median(
            [state_bytes / s.durable_s / GB / d for s, d in zip(saves, raw_direct, strict=True)]
        )
        r["B3_buffered"] = median(
            [state_bytes / s.durable_s / GB / d for s, d in zip(saves, raw_buffered, strict=True)]
        )
        r["B3_vs_safetensors"] = median(
            [s.durable_s / f for s, f in zip(saves, safe_durable, strict=True)]
        )
        r["cpu_s_per_GB"] = median([s.cpu_s / gb for s in saves])
        r["B4"] = median([g / d for g, d in zip(res.restores[name], raw_r, strict=True)])
        r["cpu_s_per_GB_restored"] = median(res.restore_cpu[name])
        r["B5"] = median([s.extra_rss / state_bytes for s in saves])
        ratios[name] = {k: round(v, 4) for k, v in r.items()}
        details[name] = {
            "save_block_ms": [round(s.block_s * 1e3, 2) for s in saves],
            "save_durable_s": [round(s.durable_s, 3) for s in saves],
            "save_cpu_s": [round(s.cpu_s, 3) for s in saves],
            "save_extra_rss_MB": [round(s.extra_rss / MB, 1) for s in saves],
            "on_disk_bytes": [s.disk_bytes for s in saves],
            "dirty_writeback_after_durable_MB": [round(s.dirty_after / MB, 1) for s in saves],
            "restore_cold_GBps": [round(v, 3) for v in res.restores[name]],
            "restore_cpu_s_per_GB": [round(v, 3) for v in res.restore_cpu[name]],
            "durable_write_GBps": [round(state_bytes / s.durable_s / GB, 3) for s in saves],
        }
        if name not in b2_arms:
            continue
        windows = {k: res.windows[k][name] for k in ks}
        details[name] |= {
            "b2_window_s": {k: [round(w.total_s, 3) for w in ws] for k, ws in windows.items()},
            "b2_block_ms": {
                k: [round(w.block_s * 1e3, 1) for w in ws] for k, ws in windows.items()
            },
            "b2_wait_s": {k: [round(w.wait_s, 3) for w in ws] for k, ws in windows.items()},
            # B5 in a training loop: peak RSS over a B2 window beyond the no-save window's peak
            # (with donation, the step after save() cannot reuse the buffers being written).
            "b2_extra_rss_over_state": {
                k: round(
                    (
                        median([w.extra_rss for w in ws])
                        - median([w.extra_rss for w in res.windows[k]["baseline"]])
                    )
                    / state_bytes,
                    3,
                )
                for k, ws in windows.items()
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
            # While a save holds zero-copy views of the donated state, XLA declines the
            # donation and the first step after save() writes into fresh memory: extra time.
            "b2_first_step_extra_s": {
                k: round(median([w.step_s[0] - median(w.step_s[1:]) for w in ws]), 4)
                for k, ws in windows.items()
                if all(len(w.step_s) > 1 for w in ws)
            },
        }
    if BOUNDED in res.saves:
        peaks = [s.extra_rss for s in res.saves[BOUNDED]]
        ratios[COPY]["B5_bounded"] = round(median([p / bound for p in peaks]), 4)
        bounded: dict[str, Any] = {
            "staging": "copy",
            "staging_limit_bytes": bound,
            "peak_extra_rss_bytes": peaks,
            "peak_extra_over_limit": ratios[COPY]["B5_bounded"],
            "within_bound": max(peaks) <= bound,
            "save_block_ms": [round(s.block_s * 1e3, 2) for s in res.saves[BOUNDED]],
            "durable_over_raw_direct": round(
                median(
                    [
                        state_bytes / s.durable_s / GB / d
                        for s, d in zip(res.saves[BOUNDED], raw_direct, strict=True)
                    ]
                ),
                4,
            ),
        }
    else:
        bounded = {"skipped": "this Checkpointer has no `staging`/`staging_limit_bytes` options"}
    baseline_windows = {k: [round(w.total_s, 3) for w in res.windows[k]["baseline"]] for k in ks}
    if ZSTD in res.saves:
        zstd = res.saves[ZSTD]
        rox = res.saves[ROXXEL]
        compression: dict[str, Any] = {
            "durable_s": [round(s.durable_s, 3) for s in zstd],
            "cpu_s_per_GB": round(median([s.cpu_s / gb for s in zstd]), 3),
            "durable_over_uncompressed": round(
                median([z.durable_s / r.durable_s for z, r in zip(zstd, rox, strict=True)]), 3
            ),
            "on_disk_over_uncompressed": round(
                median([z.disk_bytes / r.disk_bytes for z, r in zip(zstd, rox, strict=True)]), 4
            ),
        }
    else:
        compression = {"skipped": "this Checkpointer has no `compression` option"}
    return {
        "ratios": ratios,
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "machine": machine_info(args.dir),
        "config": {
            "size_mb": args.size_mb,
            "reps": args.reps,
            **info,
            "arms": table_arms,
            "b2_arms": b2_arms,
            "checkpointer_options": sorted(checkpointer_options()),
            "staging_default": staging_default(),
            "roxxel_options": dict(ROXXEL_OPTIONS),
            "step_s": round(t_step, 4),
            "sync_save_s": round(t_sync, 3),
            "background_write_s": round(t_bg, 3),
            "K": ks,
            "sweep_sizes": args.sweep_sizes,
            "leaf_counts": args.leaf_counts,
            "leaf_sweep_sizes": args.leaf_sweep_sizes,
            "interleaving": (
                "saves and restores: arms and raw disk rotate each repetition, ratio per "
                "repetition; B2: every arm window between two no-save windows, ratio to their "
                "mean; a train step (fresh buffers) before every standalone save"
            ),
        },
        "baselines": {
            "raw_write_direct_GBps": [round(v, 3) for v in raw_direct],
            "raw_write_buffered_fdatasync_GBps": [round(v, 3) for v in raw_buffered],
            "raw_write_direct_cpu_s_per_GB": [round(v, 3) for v in res.raw_cpu["direct"]],
            "raw_write_buffered_fdatasync_cpu_s_per_GB": [
                round(v, 3) for v in res.raw_cpu["buffered_fdatasync"]
            ],
            "safetensors_durable_s": [round(v, 3) for v in safe_durable],
            "roxxel_checksum_verify_cold_GBps": [round(v, 3) for v in res.verify_cold],
            "raw_read_cold_buffered_GBps": [round(v, 3) for v in res.raw_read["buffered"]],
            "raw_read_cold_direct_GBps": [round(v, 3) for v in res.raw_read["direct"]],
            "disk_write_direct_GBps_median": round(disk_write, 3),
            "disk_write_buffered_fdatasync_GBps_median": round(median(raw_buffered), 3),
            "disk_read_GBps_median": round(disk_read, 3),
            "b2_baseline_window_s": baseline_windows,
            "evictions": res.evictions,
        },
        "arms": details,
        "staging": {
            "supported": COPY in table_arms,
            "default": staging_default(),
            "bounded": bounded,
        },
        "compression_check": compression,
        "timeline": {
            k: {
                name: [
                    {"block_s": w.block_s, "wait_s": w.wait_s, "step_s": w.step_s}
                    for w in res.windows[k][name]
                ]
                for name in ("baseline", *b2_arms)
            }
            for k in ks
        },
    }


def small_states(sweeps: dict[str, Any]) -> dict[str, Any]:
    """The two absolute targets: save() blocking of the demo's model and of the most leaves
    at the smallest leaf-sweep size, each beside the synchronous save of the same run."""

    def brief(point: dict[str, Any]) -> dict[str, Any]:
        return {
            "label": point["label"],
            "state_bytes": point["state_bytes"],
            "leaves": point["leaves"],
            "sync_save_ms": point["sync_save_ms"],
            "save_block_ms": {a: v for a, v in point["median_block_ms"].items() if a in ASYNC_ARMS},
            "block_over_sync": {
                a: r["block_over_sync"] for a, r in point["ratios"].items() if a in ASYNC_ARMS
            },
            "safetensors_durable_ms": point["median_durable_ms"].get(SAFE),
        }

    out: dict[str, Any] = {"demo": brief(sweeps["demo"])}
    points = [p for p in sweeps["leaves"] if "skipped" not in p]
    if points:
        smallest = min(p["nominal_bytes"] for p in points)
        many = max((p for p in points if p["nominal_bytes"] == smallest), key=lambda p: p["leaves"])
        out["many_leaves"] = brief(many)
    return out


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
        arms: dict[str, Arm] = {
            ROXXEL: RoxxelArm(work / ROXXEL, model, optimizer, sync=False, **ROXXEL_OPTIONS)
        }
        if staging_supported():
            arms[COPY] = RoxxelArm(work / COPY, model, optimizer, sync=False, staging="copy")
        copies: list[float] = []
        blocks: dict[str, list[float]] = {name: [] for name in arms}
        durables: dict[str, list[float]] = {name: [] for name in arms}
        try:
            for arm in arms.values():
                arm.save(1)
                arm.wait()
            for rep in range(args.reps):
                step_fn()  # fresh buffers: jax caches an array's host copy after the first one
                values = [v.get_value() for v in live_variables(model, optimizer).values()]
                start = time.perf_counter()
                host = jax.device_get(values)
                copies.append(time.perf_counter() - start)
                del host, values
                for name in rotate(list(arms), rep):
                    arm = arms[name]
                    step_fn()
                    start = time.perf_counter()
                    blocks[name].append(arm.save(2 + rep))
                    arm.wait()
                    fsync_tree(arm.step_dir(2 + rep))
                    durables[name].append(time.perf_counter() - start)
        finally:
            for arm in arms.values():
                arm.close()
            shutil.rmtree(work, ignore_errors=True)

    def over_copy(name: str) -> float:
        return round(median([b / c for b, c in zip(blocks[name], copies, strict=True)]), 3)

    result: dict[str, Any] = {
        "card": card,
        "state_bytes": info["state_bytes"],
        "device_to_host_copy_s": [round(v, 4) for v in copies],
        "save_block_s": [round(v, 4) for v in blocks[ROXXEL]],
        "save_durable_s": [round(v, 3) for v in durables[ROXXEL]],
        "block_over_copy": over_copy(ROXXEL),
    }
    if COPY in arms:
        result["staging_copy"] = {
            "save_block_s": [round(v, 4) for v in blocks[COPY]],
            "save_durable_s": [round(v, 3) for v in durables[COPY]],
            "block_over_copy": over_copy(COPY),
        }
    return result


# ================================================================================= output
def meets(metric: str, value: float) -> bool:
    op, target = TARGETS[metric]
    if op == "<=":
        return value <= target
    if op == "<":
        return value < target
    return value >= target


def _mark(metric: str, value: float) -> str:
    return "" if meets(metric, value) else " ✗"


def _target(metric: str) -> str:
    op, target = TARGETS[metric]
    unit = " ms" if metric.endswith("_ms") else ""
    return f"{op} {target:g}{unit}"


def _main_cell(metric: str, arm: str, ratios: dict[str, float]) -> str:
    if metric == "B1" and arm == SYNC:
        return "1 (by definition)"
    if metric == "B3_vs_safetensors" and arm == SAFE:
        return "1 (by definition)"
    value = ratios.get(metric)
    if value is None:
        return "—"
    if metric == "B5" and arm == COPY:
        return f"{value:.3f} (holds a copy by design)"
    return f"{value:.3f}{_mark(metric, value)}"


def _small_row(metric: str, small: dict[str, Any] | None, arms: list[str]) -> str | None:
    if small is None:
        return None
    if metric == "demo_save_block_ms":
        label = f"save() blocking, the demo's model ({human(small['state_bytes'])})"
    else:
        label = f"save() blocking, {small['leaves']} leaves of {human(small['state_bytes'])}"
    cells = []
    for arm in arms:
        if arm in small["save_block_ms"]:
            ms = small["save_block_ms"][arm]
            cells.append(f"{ms:.2f} ms{_mark(metric, ms)}")
        elif arm == SYNC:
            cells.append(f"{small['sync_save_ms']:.1f} ms (the sync save)")
        elif arm == SAFE and small.get("safetensors_durable_ms") is not None:
            cells.append(f"{small['safetensors_durable_ms']:.1f} ms (save_file + fsync)")
        else:
            cells.append("—")
    return f"| {label} | {_target(metric)} | " + " | ".join(cells) + " |"


def _point_rows(points: list[dict[str, Any]]) -> list[str]:
    arms = [a for a in (ROXXEL, COPY) if any(a in p.get("median_block_ms", {}) for p in points)]
    head = (
        "| state | leaves | sync save | raw O_DIRECT write | "
        + " | ".join(f"{a} save() blocking (÷ sync)" for a in arms)
        + " | "
        + " | ".join(f"{a} durable (÷ raw, throughput)" for a in (*arms, SAFE))
        + " |"
    )
    rows = [head, "|---" * (4 + 2 * len(arms) + 1) + "|"]
    for p in points:
        if "skipped" in p:
            rows.append(
                f"| {human(p.get('nominal_bytes', p['state_bytes']))} | {p.get('leaves', '?')} | "
                f"skipped: {p['skipped']} |"
            )
            continue
        cells = [
            human(p.get("nominal_bytes", p["state_bytes"])),
            str(p["leaves"]),
            f"{p['sync_save_ms']:.1f} ms",
            f"{p['raw_direct_write_ms']:.1f} ms",
        ]
        for a in arms:
            cells.append(
                f"{p['median_block_ms'][a]:.2f} ms ({p['ratios'][a]['block_over_sync']:.4f})"
            )
        for a in (*arms, SAFE):
            cells.append(
                f"{p['median_durable_ms'][a]:.1f} ms "
                f"({p['ratios'][a]['durable_over_raw_direct']:.2f})"
            )
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    c = report["config"]
    b = report["baselines"]
    arms = c["arms"]
    ratios = report["ratios"]
    small = report.get("small_states", {})
    staging = report["staging"]
    lines = [
        f"State {c['state_bytes'] / GB:.2f} GB ({c['leaves']} leaves), {c['reps']} repetitions, "
        f"step {c['step_s'] * 1e3:.0f} ms, K10={c['K']['K10']}, K33={c['K']['K33']}. "
        f"Disk: O_DIRECT write {b['disk_write_direct_GBps_median']:.2f} GB/s, buffered + "
        f"fdatasync {b['disk_write_buffered_fdatasync_GBps_median']:.2f} GB/s, cold read "
        f"{b['disk_read_GBps_median']:.2f} GB/s. Machine: {m.get('cpus')} CPUs "
        f"({m.get('cpu', '?')}), {m.get('ram_GiB', '?')} GiB RAM, {m.get('disk', '?')}. "
        f"Checkpointer staging default: {staging['default']!r}; the roxxel arm's options: "
        f"{report['config'].get('roxxel_options', {})}"
        + ("" if staging["supported"] else " (no `staging` option: roxxel_copy not run)")
        + ".",
        "",
        "| Ratio (median) | target | " + " | ".join(arms) + " |",
        "|---|---|" + "---|" * len(arms),
    ]
    rows = {
        metric: f"| {label} | {_target(metric)} | "
        + " | ".join(_main_cell(metric, arm, ratios.get(arm, {})) for arm in arms)
        + " |"
        for metric, label in METRIC_NAMES.items()
        if metric != "B3_buffered"  # in the durable-write table below
    }
    for metric in ("B1", "demo_save_block_ms", "many_leaves_save_block_ms"):
        if metric == "B1":
            lines.append(rows["B1"])
            continue
        row = _small_row(metric, small.get(metric.split("_save")[0]), arms)
        if row:
            lines.append(row)
    for metric in rows:
        if metric != "B1":
            lines.append(rows[metric])
    bounded = staging["bounded"]
    if "skipped" in bounded:
        cells = ["—" for _ in arms]
        note = f" (skipped: {bounded['skipped']})"
    else:
        value = bounded["peak_extra_over_limit"]
        cells = [
            f"{value:.3f}{_mark('B5_bounded', value)} (peak "
            f"{max(bounded['peak_extra_rss_bytes']) / MB:.0f} MB of "
            f"{bounded['staging_limit_bytes'] / MB:.0f} MB)"
            if arm == COPY
            else "—"
            for arm in arms
        ]
        note = ""
    lines.append(
        '| B5 bounded: staging="copy", staging_limit_bytes = state/4: peak extra RSS / bound'
        f"{note} | {_target('B5_bounded')} | " + " | ".join(cells) + " |"
    )
    lines += [
        "",
        "Durable write (medians of per-repetition ratios):",
        "",
        "| arm | durable / raw O_DIRECT write (>= 0.85) | durable / raw buffered + fdatasync "
        "write | durable time / safetensors save_file + fsync time (< 1) | CPU s per GB |",
        "|---|---|---|---|---|",
    ]
    for arm in arms:
        r = ratios[arm]
        versus = r["B3_vs_safetensors"]
        versus_cell = (
            "1 (by definition)"
            if arm == SAFE
            else f"{versus:.3f}{_mark('B3_vs_safetensors', versus)}"
        )
        lines.append(
            f"| {arm} | {r['B3']:.3f}{_mark('B3', r['B3'])} | {r['B3_buffered']:.3f} | "
            f"{versus_cell} | {r['cpu_s_per_GB']:.3f} |"
        )
    sweeps = report.get("sweeps", {})
    if sweeps.get("leaves"):
        lines += [
            "",
            "Leaf-count sweep (same total bytes per size; medians; save() blocking ÷ the sync "
            "save of the same repetition, durable throughput ÷ the raw O_DIRECT write's):",
            "",
            *_point_rows(sweeps["leaves"]),
        ]
    if sweeps.get("size"):
        lines += ["", "Size sweep (same columns):", "", *_point_rows(sweeps["size"])]
    rox = report["arms"][ROXXEL]
    zs = report["compression_check"]
    b2_arms = c["b2_arms"]
    lines += [
        "",
        "Bounds measured in the same run (medians):",
        f"- raw write CPU s/GB: O_DIRECT {median(b['raw_write_direct_cpu_s_per_GB']):.2f}, "
        f"buffered + fdatasync {median(b['raw_write_buffered_fdatasync_cpu_s_per_GB']):.2f} "
        "(a page-cache write costs about the buffered figure when its memory is warm);",
        "- B2 if all of a save's CPU came out of training (cores saturated): "
        + "; ".join(
            f"{a} "
            + ", ".join(f"{k} {v:.3f}" for k, v in report["arms"][a]["b2_bound_from_cpu"].items())
            for a in b2_arms
        )
        + "; first step after save() slower by "
        + "; ".join(
            f"{a} "
            + ", ".join(
                f"{k} {v * 1e3:.0f} ms"
                for k, v in report["arms"][a]["b2_first_step_extra_s"].items()
            )
            for a in b2_arms
        )
        + " (a declined donation: the save still holds the buffers);",
        f"- roxxel cold restore CPU s/GB: {median(rox['restore_cpu_s_per_GB']):.2f}; its "
        "checksum check alone, where the private `_integrity.check` exists "
        f"{median(b['roxxel_checksum_verify_cold_GBps']):.2f} GB/s;",
        "- B5 inside the training loop (peak RSS of a B2 window over the no-save window's, / "
        "state): "
        + ", ".join(
            f"{a} "
            + "/".join(f"{v:.2f}" for v in report["arms"][a]["b2_extra_rss_over_state"].values())
            for a in b2_arms
        )
        + " (K10/K33);",
        "- system-wide Dirty + Writeback right after each save was durable (should be near 0; "
        "other processes' writes count too): max "
        + ", ".join(
            f"{a} {max(report['arms'][a]['dirty_writeback_after_durable_MB']):.0f} MB" for a in arms
        )
        + ";",
    ]
    if "skipped" in zs:
        lines.append(f"- compression=True: not measured ({zs['skipped']}).")
    else:
        lines.append(
            f"- compression=True: {zs['cpu_s_per_GB']:.2f} CPU s/GB, durable time "
            f"x{zs['durable_over_uncompressed']:.2f}, bytes on disk "
            f"x{zs['on_disk_over_uncompressed']:.3f} of the default (compression off)."
        )
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
        line = (
            f"GPU mode ({gpu['card']}, {gpu['state_bytes'] / GB:.2f} GB): save() blocked "
            f"{median(gpu['save_block_s']):.3f} s against a plain device-to-host copy of "
            f"{median(gpu['device_to_host_copy_s']):.3f} s (ratio {gpu['block_over_copy']})"
        )
        if "staging_copy" in gpu:
            line += f'; with staging="copy" ratio {gpu["staging_copy"]["block_over_copy"]}'
        lines.append(line + ".")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e .[bench]); no plot")
        return None
    return plt


COLORS = {ROXXEL: "tab:blue", COPY: "tab:green", ORBAX: "tab:orange", SYNC: "tab:red"}


def plot(report: dict[str, Any], path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    from matplotlib.lines import Line2D

    timeline = report["timeline"]
    c = report["config"]
    b2_arms = c["b2_arms"]
    fig, axes = plt.subplots(
        len(timeline),
        len(b2_arms),
        figsize=(4.4 * len(b2_arms), 3.4 * len(timeline)),
        sharey="row",
        squeeze=False,
    )
    for row, (kname, arms) in zip(axes, timeline.items(), strict=True):
        base = [s * 1e3 for w in arms["baseline"] for s in w["step_s"]]
        lo, mid, hi = np.percentile(base, [25, 50, 75]) if base else (np.nan,) * 3
        for ax, name in zip(row, b2_arms, strict=True):
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
            ax.plot(xs, ys, color=COLORS[name], lw=1.2, marker=".", ms=3)
            ratio = report["ratios"][name]["B2_" + kname]
            ax.set_title(
                f"{kname}, {name}: every {c['K'][kname]} steps, retained {ratio:.2f}", fontsize=9
            )
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
        *(Line2D([], [], color=COLORS[a], marker=".", label=f"{a} step time") for a in b2_arms),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        f"B2: step time while checkpointing {c['state_bytes'] / GB:.2f} GB every K steps on "
        f"{report['machine'].get('cpus')} CPUs",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_sweeps(report: dict[str, Any], path: Path) -> bool:
    """Log-log: save() blocking and time to durable against state bytes and leaf count."""
    sweeps = report.get("sweeps", {})
    sizes = [p for p in sweeps.get("size", []) if "skipped" not in p]
    leaves = [p for p in sweeps.get("leaves", []) if "skipped" not in p]
    if not sizes and not leaves:
        return False
    plt = _pyplot()
    if plt is None:
        return False
    fig, (ax_size, ax_leaves) = plt.subplots(1, 2, figsize=(13, 5.2))
    # (what, arm, color, line style, label); absolute seconds, every curve from the same run
    curves = [
        ("median_block_ms", ROXXEL, COLORS[ROXXEL], "-", "roxxel save() blocking"),
        ("median_block_ms", COPY, COLORS[COPY], "-", "roxxel_copy save() blocking"),
        ("median_durable_ms", ROXXEL, COLORS[ROXXEL], "--", "roxxel time to durable"),
        ("median_durable_ms", COPY, COLORS[COPY], "--", "roxxel_copy time to durable"),
        ("median_durable_ms", SYNC, COLORS[SYNC], ":", "sync save (roxxel save + wait)"),
        ("median_durable_ms", SAFE, "tab:purple", "-.", "safetensors save_file + fsync"),
        ("raw_direct_write_ms", None, "black", ":", "raw O_DIRECT write, same bytes"),
    ]

    def series(points: list[dict[str, Any]], what: str, arm: str | None) -> list[float]:
        if arm is None:
            return [p[what] / 1e3 for p in points]
        return [p[what][arm] / 1e3 if arm in p[what] else float("nan") for p in points]

    if sizes:
        xs = [p["state_bytes"] / GB for p in sizes]
        for what, arm, color, style, label in curves:
            ys = series(sizes, what, arm)
            if all(math.isnan(y) for y in ys):
                continue
            ax_size.plot(xs, ys, color=color, ls=style, marker="o", ms=4, label=label)
        ax_size.set_xlabel("state, GB")
        ax_size.set_title("Size sweep")
    if leaves:
        groups = sorted({p["nominal_bytes"] for p in leaves})
        markers = ["o", "s", "^", "D"]
        for g, nominal in enumerate(groups):
            group = sorted(
                (p for p in leaves if p["nominal_bytes"] == nominal), key=lambda p: p["leaves"]
            )
            xs = [p["leaves"] for p in group]
            for what, arm, color, style, label in curves:
                ys = series(group, what, arm)
                if all(math.isnan(y) for y in ys):
                    continue
                ax_leaves.plot(
                    xs,
                    ys,
                    color=color,
                    ls=style,
                    marker=markers[g % len(markers)],
                    ms=4,
                    label=f"{label}, {human(nominal)}",
                )
        ax_leaves.set_xlabel("leaves (same total bytes per marker)")
        ax_leaves.set_title("Leaf-count sweep: " + ", ".join(human(n) for n in groups))
    for ax in (ax_size, ax_leaves):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("seconds (median)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5)
    fig.suptitle(
        f"How save() blocking and time to durable grow, {report['machine'].get('cpus')} CPUs, "
        f"{report['machine'].get('disk', '?')}",
        fontsize=11,
    )
    fig.tight_layout()
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
    parser.add_argument(
        "--roxxel-staging",
        choices=("view", "copy", "auto", "default"),
        default="view",
        help="staging of the roxxel arm (default view, so that the run compares it with the "
        "roxxel_copy arm; the Checkpointer's own default, auto, is copy on a CPU host)",
    )
    parser.add_argument("--max-k", type=int, default=0, help="cap K10 and K33 (smoke tests)")
    parser.add_argument(
        "--sweep-sizes",
        type=size_list,
        default="10MB,100MB,1GB,4GB",
        help="state sizes of the size sweep, comma-separated (default 10MB,100MB,1GB,4GB; "
        "'' for none); a size that does not fit in free memory or disk is skipped",
    )
    parser.add_argument(
        "--leaf-counts",
        type=int_list,
        default="8,300,3000",
        help="leaf counts of the leaf sweep (default 8,300,3000; at least 4 each)",
    )
    parser.add_argument(
        "--leaf-sweep-sizes",
        type=size_list,
        default="64MB,1.6MiB",
        help="total bytes at which the leaf counts are swept (default 64MB,1.6MiB)",
    )
    parser.add_argument(
        "--small-reps",
        type=int,
        default=0,
        help="repetitions for states under 16 MB (default: max(--reps, 5))",
    )
    args = parser.parse_args(argv)
    ROXXEL_OPTIONS.clear()
    if args.roxxel_staging != "default" and "staging" in checkpointer_options():
        ROXXEL_OPTIONS["staging"] = args.roxxel_staging
    report = run(args)
    out = Path(args.out)
    table = markdown(report)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "results.md").write_text(table)
    if not args.no_plot:
        plot(report, out / "b2_timeline.png")
        plot_sweeps(report, out / "sweeps.png")
    print()
    print(table)
    log(f"done in {report['wall_seconds']} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
