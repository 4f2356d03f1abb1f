"""Content checksums: recorded inside each step before it commits, verified before a restore.

Orbax writes a step into `<step>.orbax-checkpoint-tmp`, then renames it to `<step>` (on object
stores it writes into `<step>` and commits with `commit_success.txt`). Roxxel hooks the last
moment before that commit (Orbax's `post_finalization_callback`, on Orbax's background commit
thread of the primary process, never the training thread): it checksums the step's files and
writes `roxxel_checksums.json` beside them (locally tmp + fsync + rename; on object stores one
PUT through fsspec). A step is therefore committed *with* its record, or not at all.

The data files of Roxxel's array format (`arrays/data.process_*`, see `_format`) are not read
back: their record entry holds only the size, and their content is covered by the CRC-32C of
every shard, computed from memory while it was written and kept in the index (whose own
checksum is in the record). `restore()` checks those shard checksums while it reads; `check`
with `deep=True` (`roxxel verify`) reads every shard.

**Many processes.** In a multi-process job each process writes its own data files and index.
Each process records them itself (`roxxel_checksums.process_<p>.json`, written by
`record_process` right after its own writes, before Orbax's barrier that precedes the
commit), and the primary's record covers the files of the step as a whole and says how many
process records the step must have. A step whose expected process record is missing is
damaged. Files that Orbax's TensorStore layer writes per process (format 1) have no such hook;
the primary's record covers them, read after the barrier, when every process's files are
complete.

**Object stores.** `gs://` and `s3://` steps (format 1) are recorded through fsspec after the
upload: every object is read back once and its CRC-32C kept (format 1 has no per-shard
checksums). `restore()` lists the step and checks every size and the checksum of each small
object (up to `SMALL_BYTES`); `verify` reads every object.

Orbax rewrites the step's `_CHECKPOINT_METADATA` after the hook, only to add its commit
timestamp: the record keeps the checksum of its content without that one field (table
`late`), so a damaged or truncated file is still found. Orbax's commit marker
`commit_success.txt` (written after the hook in both of its atomicity modes, the one that
counts on object stores) says "Checkpoint commit was successful to <the step's path>": the
record keeps that path (`commit_marker`), and `check` requires the marker to hold the sentence
with either it or the step's current path (a directory may be moved or copied).

The hash is CRC-32C through `google_crc32c` when its C implementation is installed (about
6 GB/s including the read back from the page cache on the 2-core test host, i.e. 0.15-0.19
CPU-s per GB), else zlib's CRC-32 (about 2.5 GB/s, 0.4 CPU-s per GB); the record names the
algorithm, and verification uses the one named. These checksums detect accidental damage (a
flipped bit, a truncated or missing file); they are not a signature against an attacker, who
can rewrite the record too.

A step without any record (written by Roxxel 0.1.0 in a multi-process job or to an object
store, or by a Roxxel before checksums existed) is *unverified*, not corrupt: it restores, and
`verify` reports it as ok with the note "no checksums recorded".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import _directory, _format, _layout, _paths
from ._errors import CheckpointPathError, CorruptCheckpointError, StepNotFoundError

logger = logging.getLogger("roxxel")

RECORD_NAME = _layout.CHECKSUMS
RECORD_FORMAT = 3
"""1: every file read back and checksummed (Roxxel 0.1.0); 2: adds the `data` table; 3: adds
`process_records` (per-process records) and `commit_marker`."""
_RECORD_PREFIX = "roxxel_checksums"  # the record, the process records and their tmp files
_PROCESS_RECORD = re.compile(r"roxxel_checksums\.process_([0-9]{1,6})\.json")
NO_RECORD = "no checksums recorded (the step is unverified, not known to be damaged)"
COMMIT_MARKER = _layout.COMMIT_MARKER
_MARKER_TEXT = "Checkpoint commit was successful to "  # Orbax 0.12.8's text, then the path
SMALL_BYTES = 1 << 20
"""Objects up to this size are read and checksummed by `restore()` on object stores."""
# Written by Orbax after the record is made (see the module docstring).
_STEP_METADATA = _layout.CHECKPOINT_METADATA
_LATE_FILES = frozenset({_STEP_METADATA, COMMIT_MARKER})
_COMMIT_FIELD = "commit_timestamp_nsecs"  # the one field Orbax adds after the record
_CHUNK = 8 << 20

_crc32c: Any
try:
    import google_crc32c as _crc32c

    _HAVE_FAST_CRC32C = _crc32c.implementation == "c"
except ImportError:  # pragma: no cover - google-crc32c is a dependency
    _crc32c = None
    _HAVE_FAST_CRC32C = False

ProgressFn = Callable[[int, int], None]


def _crc32c_update(crc: int, data: memoryview) -> int:
    assert _crc32c is not None
    # google_crc32c refuses a memoryview but takes any other buffer: a zero-copy NumPy view.
    return int(_crc32c.extend(crc, np.frombuffer(data, np.uint8)))


def _crc32_update(crc: int, data: memoryview) -> int:
    return zlib.crc32(data, crc)


_ALGORITHMS: dict[str, Callable[[int, memoryview], int]] = {"crc32": _crc32_update}
if _crc32c is not None:
    _ALGORITHMS["crc32c"] = _crc32c_update
DEFAULT_ALGORITHM = "crc32c" if _HAVE_FAST_CRC32C else "crc32"


@dataclasses.dataclass(frozen=True)
class StepIntegrity:
    """The result of checking one step's files against its recorded checksums.

    Attributes:
        step: the step checked.
        ok: False when a recorded file is missing, has another size or another checksum, or
            the record itself is unreadable. A step with no record is ok (unverified).
        files_checked: how many files were read and compared (0 when there is no record).
        problems: one line per finding, each naming the file and what is wrong; for a step
            without a record, the single note "no checksums recorded ...".
    """

    step: int
    ok: bool
    files_checked: int
    problems: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        """True when the step had a record and every file in it matched."""
        return self.ok and self.files_checked > 0 and not self.problems


# ----------------------------------------------------------------------------- hashing
def _hash_file(
    path: str, algorithm: str, buffer: bytearray, on_bytes: Callable[[int], None]
) -> int:
    update = _ALGORITHMS[algorithm]
    view = memoryview(buffer)
    crc = 0
    # O_NOFOLLOW | O_NONBLOCK: a symlink or FIFO planted in a step must not be followed or hang.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as handle:
            while True:
                n = handle.readinto(view)  # type: ignore[attr-defined]
                if not n:
                    break
                crc = update(crc, view[:n])
                on_bytes(n)
    finally:
        os.close(fd)
    return crc


def _files_of(step_dir: str) -> Iterable[tuple[str, str]]:
    """(relative path, absolute path) of every regular file under `step_dir`, sorted."""
    found = []
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, step_dir).replace(os.sep, "/")
            if rel in _LATE_FILES or rel.startswith(_RECORD_PREFIX):  # records and their tmp
                continue
            if stat.S_ISREG(os.lstat(full).st_mode):
                found.append((rel, full))
    return sorted(found)


# ----------------------------------------------------------------------------- writing
def process_record_name(process: int) -> str:
    """The record of the files one process of a multi-process job wrote."""
    return f"{_RECORD_PREFIX}.process_{process}.json"


def _body(algorithm: str, files: dict[str, list[int]], data: dict[str, int], **more: Any) -> bytes:
    fields = {"format": RECORD_FORMAT, "algorithm": algorithm, "files": files, "data": data}
    return json.dumps({**fields, **more}, indent=0, sort_keys=True).encode()


def _late_table(raw: bytes | None, algorithm: str) -> dict[str, int]:
    canonical = None if raw is None else _without_commit_time(raw)
    if canonical is None:
        return {}
    return {_STEP_METADATA: _ALGORITHMS[algorithm](0, memoryview(canonical))}


def record(
    step_dir: str,
    *,
    process_records: int = 0,
    commit_marker: str | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
) -> int:
    """Checksum the files of `step_dir` and write the step's record there; returns bytes hashed.

    `process_records` > 0: that many processes recorded their own array files
    (`record_process`), which this record leaves out and `check` then requires.
    `commit_marker`: the step's final path, which Orbax writes into `commit_success.txt`
    after the record; `check` then requires that marker.
    A URL (`gs://`, `s3://`) is recorded through fsspec (`_record_remote`).
    """
    if _paths.is_url(step_dir):
        return _record_remote(step_dir, commit_marker=commit_marker, algorithm=algorithm)
    buffer = bytearray(_CHUNK)
    files: dict[str, list[int]] = {}
    data: dict[str, int] = {}
    total = 0
    for rel, full in _files_of(step_dir):
        if process_records and _format.process_of(rel) is not None:
            continue  # in its process's own record
        size = os.lstat(full).st_size
        if _format.is_data_file(rel):
            data[rel] = size  # covered by the index's shard checksums
            continue
        files[rel] = [size, _hash_file(full, algorithm, buffer, lambda n: None)]
        total += size
    metadata_path = os.path.join(step_dir, _STEP_METADATA)
    raw = None
    if os.path.isfile(metadata_path) and not os.path.islink(metadata_path):
        with open(metadata_path, "rb") as handle:
            raw = handle.read(1 << 20)
    extra: dict[str, Any] = {"late": _late_table(raw, algorithm)}
    if process_records:
        extra["process_records"] = process_records
    if commit_marker is not None:
        extra["commit_marker"] = commit_marker
    _write_atomically(os.path.join(step_dir, RECORD_NAME), _body(algorithm, files, data, **extra))
    logger.debug("roxxel: checksummed %d files (%d bytes) of %s", len(files), total, step_dir)
    return total


def record_process(item_dir: str, process: int, *, algorithm: str = DEFAULT_ALGORITHM) -> None:
    """Record the array files that `process` wrote into the local `item_dir` (its index by
    checksum, its data files by size), once they are all written and before the step commits.

    `item_dir` is the step's `arrays` folder, which Orbax may still call
    `arrays.orbax-checkpoint-tmp` (renamed by the primary when it commits); the record goes
    into the step folder, `roxxel_checksums.process_<process>.json`, naming the files as they
    will be once committed (`arrays/...`).
    """
    buffer = bytearray(_CHUNK)
    files: dict[str, list[int]] = {}
    data: dict[str, int] = {}
    for name in sorted(os.listdir(item_dir)):
        rel = f"{_format.ITEM}/{name}"
        full = os.path.join(item_dir, name)
        if _format.process_of(rel) != process or not stat.S_ISREG(os.lstat(full).st_mode):
            continue
        size = os.lstat(full).st_size
        if _format.is_data_file(rel):
            data[rel] = size
        else:
            files[rel] = [size, _hash_file(full, algorithm, buffer, lambda n: None)]
    if not files:
        raise RuntimeError(f"process {process} wrote no array index into {item_dir}")
    body = _body(algorithm, files, data, process=process)
    step_dir = os.path.dirname(item_dir.rstrip(os.sep))
    _write_atomically(os.path.join(step_dir, process_record_name(process)), body)


def _fs_of(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of a URL and the path inside it, with fresh listings."""
    fs = _directory.client(url)  # fresh listings: another process may have written
    return fs, str(fs._strip_protocol(url)).rstrip("/")


def _remote_listing(fs: Any, root: str) -> dict[str, int]:
    """{relative path: size} of every object under `root`."""
    found = fs.find(root, detail=True)
    listing = {}
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = str(path)[len(root) + 1 :]
        if rel and not rel.endswith("/"):
            listing[rel] = int(info.get("size") or 0)
    return listing


def _read_remote(
    fs: Any, root: str, rels: list[str], sizes: dict[str, int]
) -> Iterable[tuple[str, bytes | Exception]]:
    """The content of each object, fetched concurrently in batches of at most 256 MiB."""
    batch: list[str] = []
    held = 0
    for rel in [*rels, None]:
        if rel is not None:
            batch.append(rel)
            held += sizes.get(rel, 0)
        if batch and (rel is None or held >= 256 << 20):
            got = fs.cat([f"{root}/{r}" for r in batch], on_error="return")
            for r in batch:
                yield r, got.get(f"{root}/{r}", FileNotFoundError(r))
            batch, held = [], 0


def _record_remote(step_url: str, *, commit_marker: str | None, algorithm: str) -> int:
    fs, root = _fs_of(step_url)
    listing = _remote_listing(fs, root)
    rels = sorted(r for r in listing if r not in _LATE_FILES and not r.startswith(_RECORD_PREFIX))
    files: dict[str, list[int]] = {}
    total = 0
    for rel, body in _read_remote(fs, root, rels, listing):
        if isinstance(body, Exception):
            raise body
        files[rel] = [len(body), _ALGORITHMS[algorithm](0, memoryview(body))]
        total += len(body)
    raw = fs.cat_file(f"{root}/{_STEP_METADATA}") if _STEP_METADATA in listing else None
    extra: dict[str, Any] = {"late": _late_table(raw, algorithm)}
    if commit_marker is not None:
        extra["commit_marker"] = commit_marker
    fs.pipe_file(f"{root}/{RECORD_NAME}", _body(algorithm, files, {}, **extra))
    logger.debug("roxxel: checksummed %d objects (%d bytes) of %s", len(files), total, step_url)
    return total


def _without_commit_time(raw: bytes) -> bytes | None:
    """`_CHECKPOINT_METADATA` in a canonical form without its commit timestamp, or None."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    data.pop(_COMMIT_FIELD, None)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _check_late(algorithm: str, late: dict[str, int], raw: bytes | str) -> list[str]:
    """Problems of `_CHECKPOINT_METADATA` (`raw`: its bytes, or why it could not be read)."""
    if _STEP_METADATA not in late:
        return []
    if isinstance(raw, str):
        return [f"{_STEP_METADATA}: {raw}"]
    canonical = _without_commit_time(raw)
    if canonical is None:
        return [f"{_STEP_METADATA}: not valid JSON any more (damaged or truncated)"]
    if _ALGORITHMS[algorithm](0, memoryview(canonical)) != late[_STEP_METADATA]:
        return [f"{_STEP_METADATA}: content differs from the recorded {algorithm} checksum"]
    return []


def _check_marker(step_dir: str, recorded: str, raw: bytes | str) -> list[str]:
    """Problems of the commit marker (`raw`: its bytes, or why it could not be read)."""
    if isinstance(raw, str):
        return [f"{COMMIT_MARKER}: {raw} (the step's commit marker)"]
    if raw not in {f"{_MARKER_TEXT}{path}".encode() for path in (recorded, step_dir)}:
        return [f"{COMMIT_MARKER}: damaged or truncated (holds {raw[:160]!r})"]
    return []


def _read_small_local(step_dir: str, name: str) -> bytes | str:
    """The first MiB of a top-level file of the step, or why it cannot be read."""
    path = os.path.join(step_dir, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "not a regular file any more"
            return handle.read(1 << 20)
    except OSError as exc:
        return f"missing or unreadable ({exc.strerror or exc})"


def _write_atomically(path: str, body: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------- checking
@dataclasses.dataclass(frozen=True)
class _Record:
    """One parsed record: the step's, or one process's."""

    algorithm: str
    files: dict[str, tuple[int, int]]  # relpath: (size, checksum)
    data: dict[str, int]  # data relpath: size (its shards are checked through the index)
    late: dict[str, int]
    process_records: int = 0
    commit_marker: str | None = None  # the step's path that Orbax writes into it


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_record(name: str, raw: bytes) -> _Record | str:
    """The record in `raw`, or a line saying what is wrong with it."""
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return f"{name}: unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return f"{name}: not a Roxxel checksum record (no 'files' table)"
    algorithm = data.get("algorithm")
    if algorithm not in _ALGORITHMS:
        return (
            f"{name}: unknown checksum algorithm {algorithm!r} (known: "
            f"{sorted(_ALGORITHMS)}); install google-crc32c if it is 'crc32c'"
        )
    files: dict[str, tuple[int, int]] = {}
    for rel, entry in data["files"].items():
        if not isinstance(entry, list) or len(entry) != 2 or not all(_int(v) for v in entry):
            return f"{name}: malformed entry {rel!r}: {entry!r}"
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
            return f"{name}: entry {rel!r} points outside the step folder"
        files[rel] = (entry[0], entry[1])
    data_files: dict[str, int] = {}
    raw_data = data.get("data", {})
    if not isinstance(raw_data, dict):
        return f"{name}: malformed 'data' table"
    for rel, size in raw_data.items():
        if not _format.is_data_file(rel) or not _int(size):
            return f"{name}: malformed data entry {rel!r:.80}: {size!r:.40}"
        data_files[rel] = size
    raw_late = data.get("late", {})
    if not isinstance(raw_late, dict) or any(
        k != _STEP_METADATA or not isinstance(v, int) or isinstance(v, bool)
        for k, v in raw_late.items()
    ):
        return f"{name}: malformed 'late' table"
    process_records = data.get("process_records", 0)
    if not _int(process_records) or process_records > 1 << 16:
        return f"{name}: malformed 'process_records': {process_records!r:.40}"
    commit_marker = data.get("commit_marker")
    if commit_marker is not None and not isinstance(commit_marker, str):
        return f"{name}: malformed 'commit_marker': {commit_marker!r:.40}"
    return _Record(
        str(algorithm), files, data_files, dict(raw_late), process_records, commit_marker
    )


def _load_local(step_dir: str, name: str) -> _Record | str | None:
    """The record `name` of a local step, an error text, or None when absent."""
    path = os.path.join(step_dir, name)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{name}: unreadable ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return f"{name}: not a regular file"
    if info.st_size > 64 << 20:
        return f"{name}: {info.st_size} bytes, far larger than any record Roxxel writes"
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        return f"{name}: unreadable ({type(exc).__name__}: {exc})"
    return _parse_record(name, raw)


def _records(
    load: Callable[[str], _Record | str | None], names: Iterable[str]
) -> tuple[list[_Record], list[str]] | None:
    """The step's record and the process records it calls for, with the problems found
    loading them; None when the step has no record at all."""
    names = sorted(names)
    main = load(RECORD_NAME)
    if main is None:
        orphans = [n for n in names if _PROCESS_RECORD.fullmatch(n)]
        if not orphans:
            return None
        return [], [
            f"{RECORD_NAME}: missing, but the step has per-process records ({', '.join(orphans)}):"
            " it was saved with checksums and its step-level record is lost"
        ]
    if isinstance(main, str):
        return [], [main]
    records, problems = [main], []
    for process in range(main.process_records):
        name = process_record_name(process)
        sub = load(name)
        if sub is None:
            problems.append(
                f"{name}: missing (the step was saved by {main.process_records} processes, each "
                f"recording its own files; the files of process {process} cannot be checked)"
            )
        elif isinstance(sub, str):
            problems.append(sub)
        else:
            records.append(sub)
    return records, problems


def load_record(
    step_dir: str,
) -> tuple[str, dict[str, tuple[int, int]], dict[str, int]] | str | None:
    """The record of `step_dir` for a copy checked while it streams (a promotion).

    Returns `(algorithm, {relpath: (size, checksum)}, {data relpath: size})`, an error text
    when the record is unreadable or malformed, or None when the step has none.
    """
    try:
        names = os.listdir(step_dir)
    except OSError as exc:
        return f"{step_dir}: unreadable ({exc.strerror or exc})"
    loaded = _records(lambda name: _load_local(step_dir, name), names)
    if loaded is None:
        return None
    records, problems = loaded
    if problems:
        return "; ".join(problems[:3])
    files: dict[str, tuple[int, int]] = {}
    data: dict[str, int] = {}
    for rec in records:  # the step's record, then each process's (multi-process saves)
        files.update(rec.files)
        data.update(rec.data)
    return records[0].algorithm, files, data


def extend(algorithm: str, crc: int, data: memoryview) -> int:
    """`crc` extended by `data` with the named algorithm (as the record names it)."""
    return _ALGORITHMS[algorithm](crc, data)


def check(
    step_dir: str,
    step: int,
    *,
    deep: bool = True,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> StepIntegrity:
    """Compare the files of `step_dir` with its records; never raises for damaged files.

    Data files of the array format are checked for presence and size; with `deep` every
    shard is also read and compared with its checksum in the index (`restore()` passes
    `deep=False` because it checks each shard while reading it). A URL is checked through
    fsspec (`_check_remote`).
    """
    if _paths.is_url(step_dir):
        return _check_remote(step_dir, step, deep=deep, on_bytes=on_bytes)
    try:
        names = os.listdir(step_dir)
    except OSError as exc:
        return StepIntegrity(step, False, 0, (f"{step_dir}: unreadable ({exc.strerror or exc})",))
    found = _records(lambda name: _load_local(step_dir, name), names)
    if found is None:
        return StepIntegrity(step, True, 0, (NO_RECORD,))
    records, problems = found
    if not records:
        return StepIntegrity(step, False, 0, tuple(problems))
    buffer = bytearray(_CHUNK)
    checked = 0
    for rec in records:
        checked += _check_local(step_dir, rec, buffer, problems, on_bytes)
    main = records[0]
    metadata = _read_small_local(step_dir, _STEP_METADATA)
    problems.extend(_check_late(main.algorithm, main.late, metadata))
    checked += len(main.late)
    if main.commit_marker is not None:
        checked += 1
        marker = _read_small_local(step_dir, COMMIT_MARKER)
        problems.extend(_check_marker(step_dir, main.commit_marker, marker))
    if any(rec.data for rec in records) and deep and not problems:
        problems.extend(
            _format.check_shards(os.path.join(step_dir, _format.ITEM), on_bytes=on_bytes)
        )
    return StepIntegrity(step, not problems, checked, tuple(problems))


def _check_local(
    step_dir: str,
    rec: _Record,
    buffer: bytearray,
    problems: list[str],
    on_bytes: Callable[[int], None],
) -> int:
    """Check one record's files; append the problems; return how many files were compared."""
    checked = 0
    for rel, size in sorted(rec.data.items()):
        full = os.path.join(step_dir, *rel.split("/"))
        try:
            info = os.lstat(full)
        except OSError as exc:
            problems.append(f"{rel}: missing or unreadable ({exc.strerror or exc})")
            continue
        checked += 1
        if not stat.S_ISREG(info.st_mode):
            problems.append(f"{rel}: not a regular file any more")
        elif info.st_size != size:
            problems.append(f"{rel}: {info.st_size} bytes, recorded {size} (truncated or grown)")
    for rel, (size, expected) in sorted(rec.files.items()):
        full = os.path.join(step_dir, *rel.split("/"))
        try:
            info = os.lstat(full)
        except FileNotFoundError:
            problems.append(f"{rel}: missing (recorded {size} bytes)")
            on_bytes(size)
            continue
        except OSError as exc:
            problems.append(f"{rel}: cannot be read ({exc.strerror or exc})")
            on_bytes(size)
            continue
        if not stat.S_ISREG(info.st_mode):
            problems.append(f"{rel}: not a regular file any more")
            on_bytes(size)
            continue
        checked += 1
        if info.st_size != size:
            problems.append(f"{rel}: {info.st_size} bytes, recorded {size} (truncated or grown)")
            on_bytes(size)
            continue
        try:
            actual = _hash_file(full, rec.algorithm, buffer, on_bytes)
        except OSError as exc:
            problems.append(f"{rel}: cannot be read ({exc.strerror or exc})")
            continue
        if actual != expected:
            problems.append(
                f"{rel}: content differs from the recorded {rec.algorithm} checksum "
                f"({actual:08x} != {expected:08x})"
            )
    return checked


def _check_remote(
    step_url: str, step: int, *, deep: bool, on_bytes: Callable[[int], None]
) -> StepIntegrity:
    """`check` for a step in an object store: one listing, then the objects' content.

    Without `deep`, only objects up to `SMALL_BYTES` are read (a restore reads the rest);
    errors of the store itself (unreachable, denied) are raised, never taken for damage.
    """
    fs, root = _fs_of(step_url)
    listing = _remote_listing(fs, root)

    def load(name: str) -> _Record | str | None:
        if name not in listing:
            return None
        if listing[name] > 64 << 20:
            return f"{name}: {listing[name]} bytes, far larger than any record Roxxel writes"
        return _parse_record(name, fs.cat_file(f"{root}/{name}"))

    found = _records(load, [n for n in listing if "/" not in n])
    if found is None:
        return StepIntegrity(step, True, 0, (NO_RECORD,))
    records, problems = found
    if not records:
        return StepIntegrity(step, False, 0, tuple(problems))
    checked = 0
    for rec in records:
        to_read = []
        for rel, size in sorted([*rec.data.items(), *((r, s) for r, (s, _) in rec.files.items())]):
            if rel not in listing:
                problems.append(f"{rel}: missing (recorded {size} bytes)")
                on_bytes(size)
                continue
            checked += 1
            if listing[rel] != size:
                problems.append(
                    f"{rel}: {listing[rel]} bytes, recorded {size} (truncated or grown)"
                )
                on_bytes(size)
            elif rel in rec.files and (deep or size <= SMALL_BYTES):
                to_read.append(rel)
            else:
                on_bytes(size)
        for rel, body in _read_remote(fs, root, to_read, listing):
            on_bytes(rec.files[rel][0])
            if isinstance(body, FileNotFoundError):
                problems.append(f"{rel}: missing (deleted while it was checked)")
                continue
            if isinstance(body, Exception):
                raise body
            actual = _ALGORITHMS[rec.algorithm](0, memoryview(body))
            if actual != rec.files[rel][1]:
                problems.append(
                    f"{rel}: content differs from the recorded {rec.algorithm} checksum "
                    f"({actual:08x} != {rec.files[rel][1]:08x})"
                )
    main = records[0]
    if _STEP_METADATA in main.late:
        raw: bytes | str = "missing"
        if _STEP_METADATA in listing:
            raw = fs.cat_file(f"{root}/{_STEP_METADATA}")
        problems.extend(_check_late(main.algorithm, main.late, raw))
        checked += 1
    if main.commit_marker is not None:
        checked += 1
        marker: bytes | str = "missing"
        if COMMIT_MARKER in listing:
            marker = fs.cat_file(f"{root}/{COMMIT_MARKER}")
        problems.extend(_check_marker(step_url, main.commit_marker, marker))
    if any(rec.data for rec in records) and deep and not problems:
        problems.extend(
            _format.check_shards(f"{step_url}/{_format.ITEM}", on_bytes=on_bytes, local=False)
        )
    return StepIntegrity(step, not problems, checked, tuple(problems))


def corrupt_error(directory: str, result: StepIntegrity) -> CorruptCheckpointError:
    """The error for a step that failed `check`, naming the step and each damaged file."""
    step_dir = _directory.join(directory, str(result.step))
    shown = "\n".join(f"  {p}" for p in result.problems[:10])
    more = f"\n  ... and {len(result.problems) - 10} more" if len(result.problems) > 10 else ""
    return CorruptCheckpointError(
        f"step {result.step} in {directory} is damaged: {len(result.problems)} file(s) do not "
        f"match the checksums recorded when it was saved ({step_dir}):\n{shown}{more}\n"
        "Nothing was restored. To fix: 1) restore() without a step falls back to the newest "
        'intact checkpoint (on_corrupt="fallback"); 2) restore an older step with '
        "restore(step=N); 3) run `roxxel verify` on the directory to see every damaged step.",
        step=result.step,
        path=step_dir,
        problems=result.problems,
    )


def recorded_bytes(step_dir: str) -> int:
    """The total size the step's records list (0 when there is no usable record)."""
    if _paths.is_url(step_dir):
        fs, root = _fs_of(step_dir)
        listing = _remote_listing(fs, root)

        def load(name: str) -> _Record | str | None:
            if name not in listing or listing[name] > 64 << 20:
                return None
            return _parse_record(name, fs.cat_file(f"{root}/{name}"))

        found = _records(load, [n for n in listing if "/" not in n])
    else:
        try:
            names = os.listdir(step_dir)
        except OSError:
            return 0
        found = _records(lambda name: _load_local(step_dir, name), names)
    if found is None:
        return 0
    return sum(
        sum(size for size, _ in rec.files.values()) + sum(rec.data.values()) for rec in found[0]
    )


def verify(
    checkpoint_path: str,
    *,
    step: int | None = None,
    progress: ProgressFn | None = None,
) -> list[StepIntegrity]:
    """Check the files of every committed step (or one) against their recorded checksums.

    Reads every recorded file of each step and compares size and checksum. Nothing is
    changed on disk, no JAX array is created, and no Checkpointer is needed, so this is safe
    to run while a training job writes to the same directory (a step deleted meanwhile by
    retention shows up as missing files).

    Args:
        checkpoint_path: a local checkpoint directory, or a `gs://`/`s3://` URL (read
            through fsspec: every object of every step is downloaded once).
        step: check only this step.
        progress: called as `progress(done_bytes, total_bytes)` while files are read.

    Returns:
        One `StepIntegrity` per step, ascending. A step with no record is ok, with
        `files_checked == 0` and the note "no checksums recorded".

    Raises:
        CheckpointPathError: the path is not an existing directory.
        StepNotFoundError: `step` is not a committed step there.
    """
    from . import _validate

    directory = _paths.resolve(checkpoint_path, create=False)
    if not _paths.is_url(directory) and not os.path.isdir(directory):
        raise CheckpointPathError(
            f"checkpoint directory {directory!r} does not exist. Pass the folder given to "
            "Checkpointer(checkpoint_path=...).",
            path=directory,
        )
    listing = _directory.scan(directory, asides=True)  # what a reader restores
    steps = listing.steps
    if step is not None:
        step = _validate.step(step)
        if step not in steps:
            raise StepNotFoundError(
                f"step {step} is not a committed checkpoint in {directory}; the steps there "
                f"are {steps or 'none'}.",
                step=step,
                available=steps,
            )
        steps = [step]
    total = sum(recorded_bytes(listing.path(s)) for s in steps)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    return [check(listing.path(s), s, on_bytes=advance) for s in steps]
