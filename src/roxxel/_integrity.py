"""Content checksums: recorded inside each step before it commits, verified before a restore.

Orbax writes a step into `<step>.orbax-checkpoint-tmp`, then renames it to `<step>`. Roxxel
hooks the last moment before that rename (Orbax's `post_finalization_callback`, which runs on
Orbax's background commit thread, never the training thread): it checksums every small file
of the step and writes `roxxel_checksums.json` beside them (tmp + fsync + rename). A step is
therefore committed *with* its record, or not at all.

The data files of Roxxel's array format (`arrays/data.process_*`, see `_format`) are not read
back: their record entry holds only the size, and their content is covered by the CRC-32C of
every shard, computed from memory while it was written and kept in the index (whose own
checksum is in the record). `restore()` checks those shard checksums while it reads; `check`
with `deep=True` (`roxxel verify`) reads every shard.

Orbax rewrites the step's `_CHECKPOINT_METADATA` after the hook, only to add its commit
timestamp: the record keeps the checksum of its content without that one field (table
`late`), so a damaged or truncated file is still found. `commit_success.txt` (written after
the hook, fixed text, never read back) is left out.

The hash is CRC-32C through `google_crc32c` when its C implementation is installed (about
6 GB/s including the read back from the page cache on the 2-core test host, i.e. 0.15-0.19
CPU-s per GB), else zlib's CRC-32 (about 2.5 GB/s, 0.4 CPU-s per GB); the record names the
algorithm, and verification uses the one named. These checksums detect accidental damage (a
flipped bit, a truncated or missing file); they are not a signature against an attacker, who
can rewrite the record too.

A step without a record (written by a multi-process job, to a `gs://`/`s3://` directory, or
by a Roxxel before checksums existed) is *unverified*, not corrupt: it restores, and
`verify` reports it as ok with the note "no checksums recorded".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import _format
from ._errors import CheckpointPathError, CorruptCheckpointError, StepNotFoundError

logger = logging.getLogger("roxxel")

RECORD_NAME = "roxxel_checksums.json"
RECORD_FORMAT = 2
"""1: every file read back and checksummed (Roxxel 0.1.0); 2: adds the `data` table."""
NO_RECORD = "no checksums recorded (the step is unverified, not known to be damaged)"
# Written by Orbax after the record is made (see the module docstring).
_LATE_FILES = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt"})
_STEP_METADATA = "_CHECKPOINT_METADATA"
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
            if rel in _LATE_FILES or rel.startswith(RECORD_NAME):  # the record and its tmp
                continue
            if stat.S_ISREG(os.lstat(full).st_mode):
                found.append((rel, full))
    return sorted(found)


# ----------------------------------------------------------------------------- writing
def record(step_dir: str, *, algorithm: str = DEFAULT_ALGORITHM) -> int:
    """Checksum every file of `step_dir` and write the record there; returns bytes hashed."""
    buffer = bytearray(_CHUNK)
    files: dict[str, list[int]] = {}
    data: dict[str, int] = {}
    total = 0
    for rel, full in _files_of(step_dir):
        size = os.lstat(full).st_size
        if _format.is_data_file(rel):
            data[rel] = size  # covered by the index's shard checksums
            continue
        files[rel] = [size, _hash_file(full, algorithm, buffer, lambda n: None)]
        total += size
    late: dict[str, int] = {}
    metadata_path = os.path.join(step_dir, _STEP_METADATA)
    if os.path.isfile(metadata_path) and not os.path.islink(metadata_path):
        with open(metadata_path, "rb") as handle:
            canonical = _without_commit_time(handle.read(1 << 20))
        if canonical is not None:
            late[_STEP_METADATA] = _ALGORITHMS[algorithm](0, memoryview(canonical))
    body = json.dumps(
        {
            "format": RECORD_FORMAT,
            "algorithm": algorithm,
            "files": files,
            "data": data,
            "late": late,
        },
        indent=0,
        sort_keys=True,
    ).encode()
    _write_atomically(os.path.join(step_dir, RECORD_NAME), body)
    logger.debug("roxxel: checksummed %d files (%d bytes) of %s", len(files), total, step_dir)
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


def _check_late(step_dir: str, algorithm: str, late: dict[str, int]) -> list[str]:
    problems = []
    for rel, expected in sorted(late.items()):
        path = os.path.join(step_dir, rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    problems.append(f"{rel}: not a regular file any more")
                    continue
                raw = handle.read(1 << 20)
        except OSError as exc:
            problems.append(f"{rel}: missing or unreadable ({exc.strerror or exc})")
            continue
        canonical = _without_commit_time(raw)
        if canonical is None:
            problems.append(f"{rel}: not valid JSON any more (damaged or truncated)")
        elif _ALGORITHMS[algorithm](0, memoryview(canonical)) != expected:
            problems.append(f"{rel}: content differs from the recorded {algorithm} checksum")
    return problems


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
_Record = tuple[str, dict[str, tuple[int, int]], dict[str, int], dict[str, int]]


def _read_record(step_dir: str) -> _Record | str | None:
    """(algorithm, {relpath: (size, checksum)}, {data relpath: size}), an error text, or None
    when absent."""
    path = os.path.join(step_dir, RECORD_NAME)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return f"{RECORD_NAME}: not a regular file"
    if info.st_size > 64 << 20:
        return f"{RECORD_NAME}: {info.st_size} bytes, far larger than any record Roxxel writes"
    try:
        with open(path, "rb") as handle:
            data: Any = json.loads(handle.read())
    except (OSError, ValueError, RecursionError) as exc:
        return f"{RECORD_NAME}: unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return f"{RECORD_NAME}: not a Roxxel checksum record (no 'files' table)"
    algorithm = data.get("algorithm")
    if algorithm not in _ALGORITHMS:
        return (
            f"{RECORD_NAME}: unknown checksum algorithm {algorithm!r} (known: "
            f"{sorted(_ALGORITHMS)}); install google-crc32c if it is 'crc32c'"
        )
    files: dict[str, tuple[int, int]] = {}
    for rel, entry in data["files"].items():
        if (
            not isinstance(rel, str)
            or not isinstance(entry, list)
            or len(entry) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry)
        ):
            return f"{RECORD_NAME}: malformed entry {rel!r}: {entry!r}"
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
            return f"{RECORD_NAME}: entry {rel!r} points outside the step folder"
        files[rel] = (entry[0], entry[1])
    data_files: dict[str, int] = {}
    raw_data = data.get("data", {})
    if not isinstance(raw_data, dict):
        return f"{RECORD_NAME}: malformed 'data' table"
    for rel, size in raw_data.items():
        if (
            not isinstance(rel, str)
            or not _format.is_data_file(rel)
            or not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
        ):
            return f"{RECORD_NAME}: malformed data entry {rel!r:.80}: {size!r:.40}"
        data_files[rel] = size
    late: dict[str, int] = {}
    raw_late = data.get("late", {})
    if not isinstance(raw_late, dict) or any(
        k != _STEP_METADATA or not isinstance(v, int) or isinstance(v, bool)
        for k, v in raw_late.items()
    ):
        return f"{RECORD_NAME}: malformed 'late' table"
    late.update(raw_late)
    return str(algorithm), files, data_files, late


def load_record(
    step_dir: str,
) -> tuple[str, dict[str, tuple[int, int]], dict[str, int]] | str | None:
    """The record of `step_dir` for a copy checked while it streams (a promotion).

    Returns `(algorithm, {relpath: (size, checksum)}, {data relpath: size})`, an error text
    when the record is unreadable or malformed, or None when the step has none.
    """
    loaded = _read_record(step_dir)
    if loaded is None or isinstance(loaded, str):
        return loaded
    return loaded[0], loaded[1], loaded[2]


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
    """Compare the files of `step_dir` with its record; never raises for damaged files.

    Data files of the array format are checked for presence and size; with `deep` every
    shard is also read and compared with its checksum in the index (`restore()` passes
    `deep=False` because it checks each shard while reading it).
    """
    loaded = _read_record(step_dir)
    if loaded is None:
        return StepIntegrity(step, True, 0, (NO_RECORD,))
    if isinstance(loaded, str):
        return StepIntegrity(step, False, 0, (loaded,))
    algorithm, files, data_files, late = loaded
    buffer = bytearray(_CHUNK)
    problems: list[str] = []
    checked = 0
    for rel, size in sorted(data_files.items()):
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
    for rel, (size, expected) in sorted(files.items()):
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
            actual = _hash_file(full, algorithm, buffer, on_bytes)
        except OSError as exc:
            problems.append(f"{rel}: cannot be read ({exc.strerror or exc})")
            continue
        if actual != expected:
            problems.append(
                f"{rel}: content differs from the recorded {algorithm} checksum "
                f"({actual:08x} != {expected:08x})"
            )
    problems.extend(_check_late(step_dir, algorithm, late))
    checked += len(late)
    if data_files and deep and not problems:  # the index and every data file are sound
        problems.extend(
            _format.check_shards(os.path.join(step_dir, _format.ITEM), on_bytes=on_bytes)
        )
    return StepIntegrity(step, not problems, checked, tuple(problems))


def corrupt_error(directory: str, result: StepIntegrity) -> CorruptCheckpointError:
    """The error for a step that failed `check`, naming the step and each damaged file."""
    step_dir = os.path.join(directory, str(result.step))
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
    """The total size the record lists (0 when there is no usable record)."""
    loaded = _read_record(step_dir)
    if loaded is None or isinstance(loaded, str):
        return 0
    return sum(size for size, _ in loaded[1].values()) + sum(loaded[2].values())


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
        checkpoint_path: a local checkpoint directory (cloud URLs are not supported: their
            stores keep their own checksums).
        step: check only this step.
        progress: called as `progress(done_bytes, total_bytes)` while files are read.

    Returns:
        One `StepIntegrity` per step, ascending. A step with no record is ok, with
        `files_checked == 0` and the note "no checksums recorded".

    Raises:
        CheckpointPathError: the path is a URL, or not an existing directory.
        StepNotFoundError: `step` is not a committed step there.
    """
    from . import _directory, _paths, _validate

    directory = _paths.resolve(checkpoint_path, create=False)
    if _paths.is_url(directory):
        raise CheckpointPathError(
            f"verify works on local checkpoint directories, got {directory!r}. Object stores "
            "check their own content hashes; copy the directory locally to verify it here.",
            path=directory,
        )
    if not os.path.isdir(directory):
        raise CheckpointPathError(
            f"checkpoint directory {directory!r} does not exist. Pass the folder given to "
            "Checkpointer(checkpoint_path=...).",
            path=directory,
        )
    listing = _directory.scan(directory)
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
