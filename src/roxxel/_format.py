"""Roxxel's array format: flat data files and a versioned index, written and read directly.

One save of one process writes, into the step's `arrays/` folder:

* `data.process_<p>.<k>`: a few flat files (one per writer thread), holding the bytes of the
  shards that process owns (one copy of each replicated shard), C order, no header;
* `index.process_<p>.json`: for every leaf its path, dtype and global shape, and for every
  shard its slice of the global array, file, offset, length and CRC-32C; and the size of
  every data file. It is written after the data, with fsync.

Why it looks like this (measured, docs/design.md "Array path"): TensorStore's buffered writer
spent about half of a save's CPU copying into the page cache, and restore read every file
twice (once for checksums). Here a local write goes straight from the arrays' memory to the
disk with `O_DIRECT` (the kernel DMAs the pages; no page-cache copy), and the checksum of a
shard is computed from memory while it is written: no read-back. A restore reads each shard
once with `O_DIRECT` into aligned memory, checks its CRC as it goes, and hands the memory to
JAX without a copy when dtype and layout allow.

`O_DIRECT` needs the file offset, the length and the memory address aligned to the device's
block (512 B here, 4096 B on many disks; `ALIGN` = 4096 covers both). A JAX CPU buffer starts
64 B past a 4096 B boundary, so a large shard is placed in its file at an offset congruent to
its address modulo `ALIGN`: the aligned middle is written from the array itself, and only the
first and last partial blocks go through a small aligned bounce buffer. Small shards are
copied into one packed, aligned region. Where `O_DIRECT` is refused (EINVAL at open or at the
first write: some filesystems, FUSE, old tmpfs) the same layout is written with buffered
writes and `fdatasync`. Steps are written in this format on local (or mounted) folders; on
object stores Roxxel keeps Orbax's TensorStore path (format 1), which measured faster there
(`_orbax.Store.save_tree`). A format-2 step copied to a bucket is read with ranged GETs.

Nothing here imports Orbax: `_orbax` wraps `write` in a checkpoint handler so that Orbax's
CheckpointManager keeps the step folder, the atomic commit and the retention.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import functools
import json
import math
import os
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import _layout, _paths
from ._errors import PARSE_ERRORS, CorruptCheckpointError

FORMAT = 2
"""The format version in every index; 0.1.0's TensorStore steps are format 1."""
ITEM = _layout.ARRAYS_ITEM
"""The Orbax item (sub-folder of a step) that holds this format."""
ALIGN = 4096
SMALL = 64 << 10
"""Shards below this many bytes are copied into the packed region (one write for them all);
copying more at `save()` time costs more blocking than the bounce blocks it saves."""
WRITERS = 2
"""Writer threads, and data files, per process: enough to keep a disk busy on 2 cores."""
READERS = 4
_CHUNK = 16 << 20
_MAX_INDEX_BYTES = 256 << 20
_STRING = "str"
_INDEX_ERRORS: tuple[type[Exception], ...] = (OSError, *PARSE_ERRORS)  # read, then parse
# A symlink or FIFO planted in a step must never be followed or block a reader.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

_crc32c: Any
try:
    import google_crc32c as _crc32c
except ImportError:  # pragma: no cover - a dependency
    _crc32c = None


def crc32c(data: Any, crc: int = 0) -> int:
    """CRC-32C of a buffer (google-crc32c's C code; a NumPy uint8 view is never copied)."""
    if _crc32c is None:  # pragma: no cover
        raise RuntimeError("google-crc32c is required: pip install google-crc32c")
    return int(_crc32c.extend(crc, data))


def index_name(process: int) -> str:
    return f"index.process_{process}.json"


def data_name(process: int, k: int) -> str:
    return f"data.process_{process}.{k}"


def process_of(relpath: str) -> int | None:
    """The JAX process that wrote `relpath` (`arrays/index.process_<p>.json` or
    `arrays/data.process_<p>.<k>`), or None for a file of the step as a whole."""
    parts = relpath.split("/")
    if len(parts) != 2 or parts[0] != ITEM:
        return None
    for prefix in ("index.process_", "data.process_"):
        if parts[1].startswith(prefix):
            number = parts[1][len(prefix) :].split(".", 1)[0]
            return int(number) if number.isascii() and number.isdigit() else None
    return None


def is_data_file(relpath: str) -> bool:
    """True for a data file of this format (its content is checked through the index)."""
    parts = relpath.split("/")
    return len(parts) == 2 and parts[0] == ITEM and parts[1].startswith("data.process_")


def _align_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def aligned_empty(nbytes: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """An uninitialised uint8 array of `nbytes` whose first byte is `ALIGN`-aligned."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start : start + nbytes]


# --------------------------------------------------------------------------- the snapshot
@dataclasses.dataclass
class Shard:
    """One shard to write: its place in the global array and its bytes (a uint8 view)."""

    index: tuple[tuple[int, int], ...] | None  # None: the whole array
    data: np.ndarray[Any, np.dtype[np.uint8]]
    file: int = 0
    offset: int = 0
    crc: int = 0  # CRC-32C of `data`, set while it is written
    length: int = -1  # bytes; set where `data` is filled in later (packed shards)

    @property
    def nbytes(self) -> int:
        return self.length if self.length >= 0 else self.data.nbytes


@dataclasses.dataclass
class Leaf:
    dtype: str
    shape: tuple[int, ...]
    shards: list[Shard] = dataclasses.field(default_factory=list)
    value: str | None = None  # a string leaf, kept in the index itself


@dataclasses.dataclass
class Snapshot:
    """What one process writes for one step, captured at `save()` time.

    `packed` holds the small shards (already copied, aligned, zero-padded); every other shard
    is a view of the live array or of the staging pool, kept alive by this object until the
    write has finished.
    """

    process: int
    leaves: dict[str, Leaf]
    files: list[list[Shard]]  # large shards per file, in file order
    packed: np.ndarray[Any, np.dtype[np.uint8]]
    packed_shards: list[Shard]
    nbytes: int
    held_views: int  # shards written straight from live arrays (not copied)

    def __repr__(self) -> str:
        return f"Snapshot({len(self.leaves)} leaves, {self.nbytes} bytes, process {self.process})"


class StagingPool:
    """A reused, pre-faulted host buffer that copied shards live in while they are written.

    Copying into memory touched before costs about half of copying into fresh memory on the
    test VM (the kernel hands freed pages back to the host), so the buffer is kept between
    saves. One save uses it at a time (the Checkpointer waits for the previous save first).
    """

    def __init__(self) -> None:
        self._buffer = aligned_empty(0)

    def take(self, nbytes: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
        if self._buffer.size < nbytes:
            self._buffer = aligned_empty(_align_up(nbytes))
            self._buffer.fill(0)  # fault the pages in now, once
        return self._buffer[:nbytes]


_DTYPE_NAMES: dict[Any, str] = {}


def _dtype_name(dtype: Any) -> str:
    """`str(np.dtype(dtype))`, memoised (7 µs a call adds up over thousands of leaves)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(np.dtype(dtype))
    return name


def _normalized_index(index: Sequence[slice], shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    result = []
    for part, size in zip(index, shape, strict=True):
        start, stop, step = part.indices(size)
        if step != 1:
            raise ValueError(f"strided shard index {index!r} is not supported")
        result.append((start, stop))
    return tuple(result)


def _bytes_view(array: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(np.uint8)


def _host_shards(value: Any) -> Iterator[tuple[tuple[tuple[int, int], ...], Any]]:
    """(index, host array) of the shards of a JAX array this process writes (replica 0 only)."""
    shape = tuple(value.shape)
    sharding = getattr(value, "sharding", None)
    if sharding is not None and len(sharding.device_set) == 1:
        if value.is_fully_addressable:
            yield tuple((0, n) for n in shape), value
        return
    for shard in value.addressable_shards:
        if shard.replica_id == 0:
            yield _normalized_index(shard.index, shape), shard.data


def _start_host_copies(values: Iterator[Any]) -> None:
    """Start every device-to-host copy at once (GPU/TPU); no-op for CPU arrays."""
    for value in values:
        start = getattr(value, "copy_to_host_async", None)
        devices = getattr(getattr(value, "sharding", None), "device_set", ())
        if start is not None and any(d.platform != "cpu" for d in devices):
            start()


def snapshot(
    tree: Mapping[str, Any],
    *,
    process: int,
    staging: str,
    staging_limit: int | None,
    pool: StagingPool,
) -> Snapshot:
    """Capture `tree` (path -> array, NumPy array or str) for writing; the blocking part.

    With `staging="view"` large shards of JAX arrays are held as zero-copy host views (on
    CPU); with `"copy"` they are copied into `pool`, up to `staging_limit` bytes (the rest
    stay views); `"auto"` is "copy" on CPU and "view" on accelerators. NumPy leaves, which
    the caller may change in place, are always copied.
    """
    import jax

    single = jax.sharding.SingleDeviceSharding
    if _accelerated():
        _start_host_copies(iter(tree.values()))
    leaves: dict[str, Leaf] = {}
    small: list[tuple[Shard, np.ndarray[Any, Any]]] = []  # (shard, uint8 view)
    large: list[tuple[Shard, np.ndarray[Any, Any], bool]] = []  # (shard, host, must_copy)
    for path, value in tree.items():
        if isinstance(value, str):
            leaves[path] = Leaf(_STRING, (), value=value)
            continue
        leaf = Leaf(_dtype_name(value.dtype), tuple(value.shape))
        leaves[path] = leaf
        host_copy = isinstance(value, np.ndarray)
        # The common case first: a whole array on one local device (or in host memory).
        if host_copy or type(value.sharding) is single:
            pairs: Any = ((None, value),)
        else:
            pairs = _host_shards(value)
        for index, data in pairs:
            host = np.asarray(data)
            shard = Shard(index, _EMPTY)
            leaf.shards.append(shard)
            if host.nbytes < SMALL:
                small.append((shard, host.reshape(-1).view(np.uint8)))
            else:
                large.append((shard, host, host_copy))
    packed = _pack(small)
    # Large shards: copy into the staging pool (up to the limit), or hold views.
    budget = 0
    if staging == "auto":  # views would hold CPU buffers XLA then cannot donate
        staging = "view" if _accelerated() else "copy"
    if staging == "copy":
        budget = sum(host.nbytes for _, host, _ in large)
        if staging_limit is not None:
            budget = min(budget, staging_limit)
    copies = []
    for shard, host, must in large:
        if must or host.nbytes <= budget:
            copies.append((shard, host))
            budget -= 0 if must else host.nbytes
    copied_ids = {id(shard) for shard, _ in copies}
    slot = 0
    slots = []
    for _, host in copies:
        slots.append(slot)
        slot += _align_up(host.nbytes)
    buffer = pool.take(slot) if copies else aligned_empty(0)
    for (shard, host), start in zip(copies, slots, strict=True):
        region = buffer[start : start + host.nbytes]
        region[:] = _bytes_view(host)
        shard.data = region
    held = 0
    for shard, host, _ in large:
        if id(shard) not in copied_ids:
            shard.data = _bytes_view(host)
            held += 1
    files = _assign([s for s, _, _ in large], packed.size, WRITERS)
    total = sum(s.nbytes for leaf in leaves.values() for s in leaf.shards)
    return Snapshot(process, leaves, files, packed, [s for s, _ in small], total, held)


def _pack(small: list[tuple[Shard, np.ndarray[Any, Any]]]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Copy the small shards into one aligned, zero-padded region (each at a 16-byte boundary,
    which suits every dtype). The shards get their offsets and lengths here, their data views
    in the writer thread (`write`)."""
    end = 0
    for shard, view in small:
        shard.offset = end
        shard.length = view.nbytes
        end += -(-view.nbytes // 16) * 16
    packed = aligned_empty(_align_up(end))
    packed.fill(0)
    for shard, view in small:
        packed[shard.offset : shard.offset + shard.length] = view
    return packed


_EMPTY = np.empty(0, np.uint8)


@functools.lru_cache(maxsize=1)
def _accelerated() -> bool:
    """True when JAX has a non-CPU device: then device-to-host copies are started early."""
    import jax

    return any(d.platform != "cpu" for d in jax.devices())


def _assign(large_shards: list[Shard], first_file_start: int, writers: int) -> list[list[Shard]]:
    """Spread the large shards over `writers` files (largest first, to the emptiest file) and
    give each its offset: congruent to its address modulo ALIGN, after the previous one."""
    count = max(1, min(writers, len(large_shards)))
    files: list[list[Shard]] = [[] for _ in range(count)]
    loads = [first_file_start] + [0] * (count - 1)
    for shard in sorted(large_shards, key=lambda s: -s.data.nbytes):
        k = loads.index(min(loads))
        files[k].append(shard)
        loads[k] += shard.data.nbytes + 2 * ALIGN
    for k, shards in enumerate(files):
        end = first_file_start if k == 0 else 0
        for shard in shards:
            shard.file = k
            shard.offset = _align_up(end) + shard.data.ctypes.data % ALIGN
            end = shard.offset + shard.data.nbytes
    return files


# ------------------------------------------------------------------------------ writing
class _LocalFile:
    """A data file written with O_DIRECT where the filesystem takes it, else buffered."""

    def __init__(self, path: str) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.direct = hasattr(os, "O_DIRECT")
        try:
            self.fd = os.open(path, flags | (os.O_DIRECT if self.direct else 0), 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False
            self.fd = os.open(path, flags, 0o644)

    def pwrite(self, data: Any, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            try:
                written = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self._to_buffered()
                continue
            view = view[written:]
            offset += written

    def _to_buffered(self) -> None:
        """O_DIRECT refused at the first write (alignment, filesystem): carry on buffered."""
        import fcntl

        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self.direct = False

    def finish(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
            os.fdatasync(self.fd)
        finally:
            os.close(self.fd)

    def abort(self) -> None:
        """After a failed write: close, so that the space of the removed file is freed."""
        os.close(self.fd)


def _write_file(
    path: str,
    head: np.ndarray[Any, np.dtype[np.uint8]] | None,
    shards: list[Shard],
) -> tuple[int, bool]:
    """Write one data file; fill in each shard's CRC. Returns (file size, used O_DIRECT)."""
    out = _LocalFile(path)
    try:
        bounce = aligned_empty(2 * ALIGN)
        end = 0
        if head is not None and head.size:
            out.pwrite(head, 0)
            end = head.size
        for shard in shards:
            data, offset = shard.data, shard.offset
            n = data.nbytes
            block = offset - offset % ALIGN
            lead = min(n, (ALIGN - offset % ALIGN) % ALIGN)
            crc = 0
            if lead:
                bounce[:ALIGN] = 0
                bounce[offset % ALIGN : offset % ALIGN + lead] = data[:lead]
                crc = crc32c(data[:lead], crc)
                out.pwrite(bounce[:ALIGN], block)
            position = lead
            body_end = lead + (n - lead) // ALIGN * ALIGN
            while position < body_end:
                stop = min(body_end, position + _CHUNK)
                piece = data[position:stop]
                crc = crc32c(piece, crc)
                out.pwrite(piece, offset + position)
                position = stop
            if position < n:
                tail = n - position
                bounce[:ALIGN] = 0
                bounce[:tail] = data[position:]
                crc = crc32c(data[position:], crc)
                out.pwrite(bounce[:ALIGN], offset + position)
            shard.crc = crc
            end = offset + n
    except BaseException:
        out.abort()
        raise
    out.finish(end)
    return end, bool(out.direct)


@dataclasses.dataclass(frozen=True)
class Written:
    """What `write` did: the index it wrote, and whether every data file took O_DIRECT."""

    index: dict[str, Any]
    direct: bool


def write(directory: str, snap: Snapshot) -> Written:
    """Write `snap` into the local (or mounted) folder `directory`, which exists.

    Data files first (in parallel, one thread each), then the index, each made durable.
    """
    files = snap.files or [[]]
    for shard in snap.packed_shards:  # small shards: CRC from their packed copies
        shard.data = snap.packed[shard.offset : shard.offset + shard.length]
        shard.crc = crc32c(shard.data)
    sizes: dict[str, int] = {}
    direct = True
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=len(files), thread_name_prefix="roxxel-write"
    ) as pool:
        jobs = {
            k: pool.submit(
                _write_file,
                os.path.join(directory, data_name(snap.process, k)),
                snap.packed if k == 0 else None,
                files[k],
            )
            for k in range(len(files))
            if files[k] or (k == 0 and snap.packed.size)
        }
        for k, job in jobs.items():
            size, used_direct = job.result()
            sizes[data_name(snap.process, k)] = size
            direct = direct and used_direct
    index = _index(snap, sizes)
    body = json.dumps(index, separators=(",", ":")).encode()
    _write_small(os.path.join(directory, index_name(snap.process)), body)
    _paths.fsync_dir(directory)
    return Written(index, direct and bool(jobs))


def _index(snap: Snapshot, sizes: Mapping[str, int]) -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for path, leaf in snap.leaves.items():
        entry: dict[str, Any] = {"dtype": leaf.dtype, "shape": list(leaf.shape)}
        if leaf.value is not None:
            entry["value"] = leaf.value
        else:
            whole = [[0, n] for n in leaf.shape]
            entry["shards"] = [
                {
                    "index": whole if shard.index is None else [list(p) for p in shard.index],
                    "file": data_name(snap.process, shard.file),
                    "offset": shard.offset,
                    "length": shard.nbytes,
                    "crc32c": shard.crc,
                }
                for shard in leaf.shards
            ]
        leaves[path] = entry
    return {"format": FORMAT, "process": snap.process, "files": dict(sizes), "leaves": leaves}


def _write_small(path: str, body: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ reading
@dataclasses.dataclass(frozen=True)
class SavedShard:
    index: tuple[tuple[int, int], ...]
    file: str
    offset: int
    length: int
    crc: int


@dataclasses.dataclass(frozen=True)
class SavedLeaf:
    dtype: str
    shape: tuple[int, ...]
    shards: tuple[SavedShard, ...] = ()
    value: str | None = None

    @property
    def is_string(self) -> bool:
        return self.dtype == _STRING


@dataclasses.dataclass(frozen=True)
class Index:
    """The merged index of one step (every process's part)."""

    directory: str
    leaves: Mapping[str, SavedLeaf]
    files: Mapping[str, int]


def _corrupt(directory: str, problem: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"the array index in {directory} is damaged: {problem}. Nothing was restored. To fix: "
        "1) restore() without a step falls back to the newest intact checkpoint; 2) restore "
        "an older step with restore(step=N); 3) run `roxxel verify` on the directory.",
        step=None,
        path=directory,
        problems=(problem,),
    )


def _listdir(directory: str, *, local: bool) -> list[str]:
    if local:
        return os.listdir(directory)
    from ._directory import client

    fs = client(directory)
    return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(fs._strip_protocol(directory))]


def _read_small(path: str, *, local: bool) -> bytes:
    if local:
        fd = os.open(path, _READ_FLAGS)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            if info.st_size > _MAX_INDEX_BYTES:
                raise ValueError(f"{info.st_size} bytes, larger than any index Roxxel writes")
            return handle.read()
    from ._directory import client

    fs = client(path)
    body: bytes = fs.cat_file(fs._strip_protocol(path))
    return body


def load_index(directory: str, *, local: bool = True) -> Index:
    """Read and check every `index.process_*.json` of a step's `arrays/` folder.

    Every number is checked against the file sizes and dtypes before anything is allocated:
    a hostile or damaged index is a `CorruptCheckpointError`.
    """
    names = sorted(n for n in _listdir(directory, local=local) if n.startswith("index.process_"))
    if not names:
        raise _corrupt(directory, "no index.process_*.json file")
    leaves: dict[str, SavedLeaf] = {}
    files: dict[str, int] = {}
    for name in names:
        try:
            data = json.loads(_read_small(os.path.join(directory, name), local=local))
            part = _parse_part(data)
        except _INDEX_ERRORS as exc:
            raise _corrupt(directory, f"{name}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        for file, size in part[1].items():
            files[file] = size
        for path, leaf in part[0].items():
            if path in leaves:
                if (leaves[path].dtype, leaves[path].shape) != (leaf.dtype, leaf.shape):
                    raise _corrupt(directory, f"{name}: leaf {path!r} disagrees between processes")
                leaf = dataclasses.replace(leaf, shards=leaves[path].shards + leaf.shards)
            leaves[path] = leaf
    for path, leaf in leaves.items():
        problem = _check_leaf(path, leaf, files)
        if problem:
            raise _corrupt(directory, problem)
    return Index(directory, leaves, files)


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} is {value!r:.60}, not a non-negative integer")
    return value


def _parse_part(data: Any) -> tuple[dict[str, SavedLeaf], dict[str, int]]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a format-{FORMAT} Roxxel index")
    raw_files = data["files"]
    if not isinstance(raw_files, dict):
        raise TypeError("'files' is not a table")
    files = {}
    for name, size in raw_files.items():
        if not isinstance(name, str) or not name.startswith("data.process_") or "/" in name:
            raise ValueError(f"data file name {name!r:.80} is not one Roxxel writes")
        files[name] = _int(size, f"the size of {name}")
    leaves = {}
    for path, entry in data["leaves"].items():
        if not isinstance(path, str) or not isinstance(entry, dict):
            raise TypeError(f"leaf {path!r:.80} is malformed")
        dtype = entry["dtype"]
        if not isinstance(dtype, str):
            raise TypeError(f"leaf {path!r}: dtype {dtype!r:.60} is not a string")
        shape = tuple(_int(d, f"leaf {path!r} shape") for d in entry["shape"])
        if dtype == _STRING:
            value = entry["value"]
            if not isinstance(value, str):
                raise TypeError(f"leaf {path!r}: string value is {type(value).__name__}")
            leaves[path] = SavedLeaf(dtype, (), (), value)
            continue
        shards = []
        for shard in entry["shards"]:
            index = tuple(
                (_int(a, f"leaf {path!r} index"), _int(b, f"leaf {path!r} index"))
                for a, b in shard["index"]
            )
            shards.append(
                SavedShard(
                    index,
                    str(shard["file"]),
                    _int(shard["offset"], f"leaf {path!r} offset"),
                    _int(shard["length"], f"leaf {path!r} length"),
                    _int(shard["crc32c"], f"leaf {path!r} crc32c"),
                )
            )
        leaves[path] = SavedLeaf(dtype, shape, tuple(shards))
    return leaves, files


def _check_leaf(path: str, leaf: SavedLeaf, files: Mapping[str, int]) -> str | None:
    """Why `leaf` cannot be read safely, or None."""
    if leaf.is_string:
        return None
    try:
        itemsize = _np_dtype(leaf.dtype).itemsize
    except TypeError:
        return f"leaf {path!r}: unknown dtype {leaf.dtype!r:.60}"
    if len(leaf.shape) > 64 or math.prod(leaf.shape) * itemsize > 1 << 50:
        return f"leaf {path!r}: absurd shape {leaf.shape!r:.100}"
    covered = 0
    for shard in leaf.shards:
        if len(shard.index) != len(leaf.shape) or any(
            not (0 <= a <= b <= n) for (a, b), n in zip(shard.index, leaf.shape, strict=True)
        ):
            return f"leaf {path!r}: shard index {shard.index} outside shape {leaf.shape}"
        elements = math.prod(b - a for a, b in shard.index)
        if shard.length != elements * itemsize:
            return (
                f"leaf {path!r}: shard of {elements} {leaf.dtype} elements says "
                f"{shard.length} bytes"
            )
        size = files.get(shard.file)
        if size is None:
            return f"leaf {path!r}: shard in unknown file {shard.file!r:.80}"
        if shard.offset + shard.length > size:
            return (
                f"leaf {path!r}: shard at {shard.offset}+{shard.length} runs past the end of "
                f"{shard.file} ({size} bytes)"
            )
        covered += elements
    if covered < math.prod(leaf.shape):
        return f"leaf {path!r}: its shards cover {covered} of {math.prod(leaf.shape)} elements"
    return None


def _np_dtype(name: str) -> np.dtype[Any]:
    """The NumPy dtype of a saved dtype name; only plain numbers, bools and ml_dtypes' floats
    (bfloat16, float8_*, int4) can be stored, never objects or strings of bytes."""
    try:
        dtype = np.dtype(name)
    except TypeError:
        import ml_dtypes  # bfloat16, float8_*: registered by JAX's dependency

        found = getattr(ml_dtypes, name, None) if name.isidentifier() else None
        if found is None:
            raise TypeError(f"unknown dtype {name!r:.60}") from None
        dtype = np.dtype(found)
    if dtype.kind not in "biufcV" or dtype.hasobject or (dtype.kind == "V" and dtype.names):
        raise TypeError(f"dtype {name!r:.60} cannot hold array data")
    return dtype


class _Reader:
    """Reads byte ranges of one step's data files: O_DIRECT locally, ranged reads remotely."""

    def __init__(self, directory: str, *, local: bool) -> None:
        self.directory = directory
        self.local = local
        self._fds: dict[str, int] = {}
        self._direct: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._fs: Any = None  # the fsspec filesystem of a remote directory
        self._root = ""

    def _fd(self, name: str) -> tuple[int, bool]:
        with self._lock:
            if name not in self._fds:
                path = os.path.join(self.directory, name)
                flags = _READ_FLAGS
                direct = hasattr(os, "O_DIRECT")
                try:
                    fd = os.open(path, flags | (os.O_DIRECT if direct else 0))
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    direct = False
                    fd = os.open(path, flags)
                self._fds[name], self._direct[name] = fd, direct
            return self._fds[name], self._direct[name]

    def read(self, shard: SavedShard) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """The shard's bytes, checked against its CRC, in memory aligned like when saved."""
        if not self.local:
            data = self._read_remote(shard)
        else:
            data = self._read_local(shard)
        if crc32c(data) != shard.crc:
            raise self._damaged(
                shard,
                f"at offset {shard.offset} ({shard.length} bytes): content differs from the "
                "CRC-32C recorded when it was saved",
                f"shard at offset {shard.offset} damaged",
            )
        return data

    def _damaged(self, shard: SavedShard, what: str, problem: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{ITEM}/{shard.file} in {self.directory} {what}.",
            step=None,
            path=os.path.join(self.directory, shard.file),
            problems=(f"{ITEM}/{shard.file}: {problem}",),
        )

    def _read_local(self, shard: SavedShard) -> np.ndarray[Any, np.dtype[np.uint8]]:
        fd, direct = self._fd(shard.file)
        start = shard.offset - shard.offset % ALIGN
        span = _align_up(shard.offset + shard.length) - start
        buffer = aligned_empty(span)
        view = memoryview(buffer)  # type: ignore[arg-type]  # NumPy has the buffer protocol
        done = 0
        while done < span:
            try:
                n = os.preadv(fd, [view[done:]], start + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not direct:
                    raise
                fd = os.open(os.path.join(self.directory, shard.file), _READ_FLAGS)
                with self._lock:
                    old = self._fds.pop(shard.file)
                    self._fds[shard.file], self._direct[shard.file] = fd, False
                os.close(old)
                direct = False
                continue
            if n == 0:
                break
            done += n
        lead = shard.offset - start
        if done < lead + shard.length:
            raise self._damaged(
                shard,
                f"ends before the shard at offset {shard.offset} ({shard.length} bytes): the "
                "file was truncated",
                "truncated",
            )
        return buffer[lead : lead + shard.length]

    def _read_remote(self, shard: SavedShard) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """One ranged GET per shard (fsspec's `cat_file`), several in parallel."""
        with self._lock:
            if self._fs is None:
                from ._directory import client

                self._fs = client(self.directory)
                self._root = str(self._fs._strip_protocol(self.directory)).rstrip("/")
        body = self._fs.cat_file(
            f"{self._root}/{shard.file}", start=shard.offset, end=shard.offset + shard.length
        )
        if len(body) != shard.length:
            raise self._damaged(shard, "is shorter than its index says", "truncated")
        buffer = aligned_empty(shard.length)
        buffer[:] = np.frombuffer(body, np.uint8)
        return buffer

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _overlap(
    a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]
) -> tuple[tuple[int, int], ...] | None:
    result = []
    for (a0, a1), (b0, b1) in zip(a, b, strict=True):
        lo, hi = max(a0, b0), min(a1, b1)
        if lo >= hi and not (a0 == a1 == b0 == b1):
            return None
        result.append((lo, hi))
    return tuple(result)


@dataclasses.dataclass(frozen=True)
class Target:
    """What to read for one leaf: the dtype to produce and, for device arrays, the sharding."""

    dtype: Any
    sharding: Any | None  # a jax.sharding.Sharding, or None for a NumPy array on the host


def read(
    index: Index,
    targets: Mapping[str, Target],
    *,
    local: bool,
    place: Callable[[str, SavedLeaf, Target, Callable[[tuple[tuple[int, int], ...]], Any]], Any],
) -> dict[str, Any]:
    """Read the leaves named in `targets` from the step `index` describes.

    `place(path, leaf, target, piece)` builds the final value; `piece(region)` returns the
    NumPy array of one region of the global array (read and checked on first use; a saved
    shard that equals the region is returned without a copy). Shards are read in parallel.
    """
    reader = _Reader(index.directory, local=local)
    try:
        wanted = {
            shard
            for path in targets
            if not index.leaves[path].is_string
            for shard in index.leaves[path].shards
        }
        cache: dict[SavedShard, concurrent.futures.Future[Any]] = {}
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=READERS, thread_name_prefix="roxxel-read"
        ) as pool:
            for shard in sorted(wanted, key=lambda s: (s.file, s.offset)):
                cache[shard] = pool.submit(reader.read, shard)
            result = {}
            for path, target in targets.items():
                leaf = index.leaves[path]
                result[path] = place(path, leaf, target, _piece_fn(leaf, cache))
            return result
    finally:
        reader.close()


def _piece_fn(
    leaf: SavedLeaf, cache: Mapping[SavedShard, concurrent.futures.Future[Any]]
) -> Callable[[tuple[tuple[int, int], ...]], Any]:
    def shard_array(shard: SavedShard) -> np.ndarray[Any, Any]:
        dtype = _np_dtype(leaf.dtype)
        shape = tuple(b - a for a, b in shard.index)
        array: np.ndarray[Any, Any] = cache[shard].result().view(dtype).reshape(shape)
        return array

    def piece(region: tuple[tuple[int, int], ...]) -> np.ndarray[Any, Any]:
        for shard in leaf.shards:
            if shard.index == region:
                return shard_array(shard)
        out = np.empty(tuple(b - a for a, b in region), _np_dtype(leaf.dtype))
        filled = 0
        for shard in leaf.shards:
            common = _overlap(shard.index, region)
            if common is None:
                continue
            src = tuple(
                slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(common, shard.index, strict=True)
            )
            dst = tuple(
                slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(common, region, strict=True)
            )
            out[dst] = shard_array(shard)[src]
            filled += math.prod(hi - lo for lo, hi in common)
        if filled < out.size:  # replicated shards can overlap; never fewer than the region
            raise CorruptCheckpointError(
                f"the saved shards do not cover region {region} of a {leaf.shape} array.",
                step=None,
                path="",
                problems=(f"shards cover {filled} of {out.size} elements",),
            )
        return out

    return piece


def place(
    path: str,
    leaf: SavedLeaf,
    target: Target,
    piece: Callable[[tuple[tuple[int, int], ...]], Any],
) -> Any:
    """Build the value of one leaf: a JAX array with the target's sharding, or NumPy.

    Each device gets the region of the global array its sharding asks for, so a checkpoint
    written on another device or process count restores onto this one. On CPU an aligned
    shard of the right dtype becomes the device buffer without a copy (`may_alias`).
    """
    if leaf.is_string:
        return leaf.value
    dtype = np.dtype(target.dtype) if target.dtype is not None else _np_dtype(leaf.dtype)
    if target.sharding is None:
        return np.array(piece(tuple((0, n) for n in leaf.shape)), dtype=dtype)
    import jax

    arrays = []
    for device, index in target.sharding.addressable_devices_indices_map(leaf.shape).items():
        host = piece(_normalized_index(index, leaf.shape))
        if host.dtype != dtype:
            host = host.astype(dtype)
        arrays.append(jax.device_put(host, device, may_alias=True))
    return jax.make_array_from_single_device_arrays(leaf.shape, target.sharding, arrays)


def check_shards(
    directory: str, *, on_bytes: Callable[[int], None] | None = None, local: bool = True
) -> list[str]:
    """Read every shard of a step's `arrays/` folder and compare its CRC-32C.

    Locally the alignment padding between shards is checked too (it must be zero); in an
    object store (`local=False`, a copied format-2 step) the shards only.
    Returns one line per problem (empty when every shard matches); never raises for damage.
    """
    try:
        index = load_index(directory, local=local)
    except CorruptCheckpointError as exc:
        return list(exc.problems)
    reader = _Reader(directory, local=local)
    problems: list[str] = []
    try:
        shards = sorted(
            {s for leaf in index.leaves.values() for s in leaf.shards},
            key=lambda s: (s.file, s.offset),
        )
        for shard in shards:
            try:
                reader.read(shard)
            except CorruptCheckpointError as exc:
                problems.extend(exc.problems)
            except OSError as exc:
                problems.append(f"{ITEM}/{shard.file}: cannot be read ({exc.strerror or exc})")
            if on_bytes is not None:
                on_bytes(shard.length)
        if local:
            problems.extend(_check_gaps(directory, index, shards, on_bytes))
    finally:
        reader.close()
    return problems


def _check_gaps(
    directory: str,
    index: Index,
    shards: list[SavedShard],
    on_bytes: Callable[[int], None] | None = None,
) -> list[str]:
    """The bytes between shards (alignment padding) must still be zero: so every byte of a
    data file is checked, and damage anywhere in it is reported."""
    problems: list[str] = []
    for name, size in sorted(index.files.items()):
        spans = sorted((s.offset, s.offset + s.length) for s in shards if s.file == name)
        gaps, end = [], 0
        for start, stop in spans:
            if start > end:
                gaps.append((end, start))
            end = max(end, stop)
        if size > end:
            gaps.append((end, size))
        try:
            fd = os.open(os.path.join(directory, name), _READ_FLAGS)
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    problems.append(f"{ITEM}/{name}: not a regular file")
                    continue
                for start, stop in gaps:
                    if on_bytes is not None:
                        on_bytes(stop - start)
                    handle.seek(start)
                    if handle.read(stop - start).count(0) != stop - start:
                        problems.append(
                            f"{ITEM}/{name}: padding at offset {start} was changed (damaged)"
                        )
                        break
        except OSError as exc:
            problems.append(f"{ITEM}/{name}: cannot be read ({exc.strerror or exc})")
    return problems
