"""Two tiers: every step commits on a local disk; some are promoted to durable storage.

A two-tier Checkpointer (`Checkpointer(remote, model, optimizer, local_path=...)`) saves every
step on its local folder, in Roxxel's format 2, at local speed. When a local step commits
(Orbax's finalize thread, `_orbax._Manager._finalize_checkpoint`), `Promoter.committed` asks
the pure policy (`due`) whether it is to be promoted, and if so hands it to one background
thread. That thread copies the committed local files to the remote tier (any fsspec URL such
as `s3://` or `gs://`, or another local folder such as a network mount):

* each file is read once; the bytes sent are checked on the way against the step's local
  record (`_integrity`: CRC-32C of every small file, size of every data file) and against
  the CRC-32C of every shard in the index (data files), and each uploaded object's size is
  checked after it is written;
* `commit_success.txt` is written last (on object stores a step counts only with it, as
  `_directory.scan` reads it); on a local remote the step is written into
  `<step>.orbax-checkpoint-tmp-promote` and renamed into place;
* then remote retention runs (its own `Retention`): a step is deleted commit marker first, so
  a half-deleted step never looks committed; unfinished uploads older than the newest
  committed step are removed.

`save()` never waits for a promotion: at most one promotion runs and one waits; a newer step
due for promotion replaces the waiting one (logged). A step waiting or being promoted is
pinned against local retention (`Store.pinned`), so its files stay until it is uploaded.

In a multi-process job each process uploads its own files (`arrays/*.process_<p>*`; process 0
the shared ones), then writes `roxxel_promoted.process_<p>`; process 0 writes the commit
marker once every process's marker is there (waiting at most `timeout`).

Restoring (`choose_for_restore`): the remote listing is bounded by `timeout` (an unreachable
remote is a warning and the local tier is used alone). A remote step newer than the newest
intact local step, or the same step when the local copy is damaged, is fetched into the local
tier (checked whole, shard by shard, before it is renamed into place) and then restored from
there by the ordinary path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import _directory, _format, _integrity, _layout, _lifecycle, _paths, _storage
from ._errors import PromotionError
from ._retention import Retention, steps_to_keep

logger = logging.getLogger("roxxel")

_CHUNK = 8 << 20
PROMOTE_TMP = f"{_layout.TMP_MARKER}-promote"
FETCH_TMP = f"{_layout.TMP_MARKER}-fetch"
MARKER_PREFIX = "roxxel_promoted.process_"


# ------------------------------------------------------------------------- pure policy
@dataclasses.dataclass(frozen=True)
class PromotePolicy:
    """When a committed local step is promoted.

    Attributes:
        every: promote every `every`-th committed permanent local step (1: each one).
        interval_s: promote the first step committed once this many seconds passed since
            the last promotion was started.
    """

    every: int | None = 1
    interval_s: float | None = None


@dataclasses.dataclass(frozen=True)
class PromoteClock:
    """The promotion history a decision needs.

    Attributes:
        since: committed permanent local steps since the last one promoted (this one counted).
        last: `time.monotonic()` when the last promotion was started (None: never).
    """

    since: int = 0
    last: float | None = None


def due(policy: PromotePolicy, clock: PromoteClock, now: float) -> bool:
    """Whether the step just committed (counted in `clock.since`) is to be promoted.

    The first committed step of a Checkpointer is always promoted, so the remote tier has a
    step early in a run; after that either rule may fire.
    """
    if clock.last is None:
        return True
    if policy.every is not None and clock.since >= policy.every:
        return True
    return policy.interval_s is not None and now - clock.last >= policy.interval_s


def files_of_process(relpaths: Iterable[str], process: int) -> list[str]:
    """The files of a step that `process` uploads: its own array files; process 0 the rest."""
    mine = []
    own = (f"data.process_{process}.", f"index.process_{process}.json")
    for rel in relpaths:
        parts = rel.split("/")
        per_process = (
            len(parts) == 2
            and parts[0] == _format.ITEM
            and parts[1].startswith(("data.process_", "index.process_"))
        )
        if per_process:
            name = parts[1]
            if name.startswith(own[0]) or name == own[1]:
                mine.append(rel)
        elif process == 0:
            mine.append(rel)
    return sorted(mine)


def marker_name(process: int) -> str:
    """The object a process writes in the remote step once its files are uploaded."""
    return f"{MARKER_PREFIX}{process}"


def all_promoted(entries: Iterable[str], process_count: int) -> bool:
    """True when every process's promotion marker is among `entries`."""
    names = set(entries)
    return all(marker_name(p) in names for p in range(process_count))


def remote_to_delete(
    checkpoints: Sequence[tuple[int, Mapping[str, float] | None]], retention: Retention
) -> list[int]:
    """The committed remote steps that remote retention does not keep, ascending."""
    keep = steps_to_keep(checkpoints, retention)
    return sorted(step for step, _ in checkpoints if step not in keep)


def stale_uploads(pending: Iterable[tuple[int | None, str]], newest: int | None) -> list[str]:
    """Unfinished uploads (folder names) older than the newest committed remote step."""
    if newest is None:
        return []
    return sorted(name for step, name in pending if step is not None and step < newest)


# ------------------------------------------------------------------- streaming checks
class _ShardCheck:
    """CRC-32C of every shard of one data file, computed from the bytes as they stream by."""

    def __init__(self, shards: Iterable[tuple[int, int, int]]) -> None:
        self.shards = sorted(shards)  # (offset, length, crc)
        self.crcs = [0] * len(self.shards)
        self.first = 0

    def feed(self, position: int, chunk: memoryview) -> None:
        end = position + len(chunk)
        i = self.first
        while i < len(self.shards):
            offset, length, _ = self.shards[i]
            if offset + length <= position:
                if i == self.first:
                    self.first += 1
                i += 1
                continue
            if offset >= end:
                break
            start, stop = max(offset, position), min(offset + length, end)
            piece = np.frombuffer(chunk[start - position : stop - position], np.uint8)
            self.crcs[i] = _format.crc32c(piece, self.crcs[i])
            i += 1

    def problems(self, rel: str) -> list[str]:
        return [
            f"{rel}: shard at offset {offset} ({length} bytes) differs from its checksum"
            for (offset, length, crc), actual in zip(self.shards, self.crcs, strict=True)
            if crc != actual
        ]


@dataclasses.dataclass
class _Expected:
    size: int | None = None
    algorithm: str | None = None
    crc: int | None = None
    shards: _ShardCheck | None = None


def _expectations(step_dir: str, relpaths: Sequence[str]) -> dict[str, _Expected]:
    """What each file of a committed local step must hold, from its record and index.

    Raises:
        PromotionError: the local step's record is unreadable, or lists a file not there.
    """
    expected = {rel: _Expected() for rel in relpaths}
    record = _integrity.load_record(step_dir)
    if isinstance(record, str):
        raise PromotionError(f"the local copy is damaged: {record}", step=None)
    if record is not None:
        algorithm, files, data = record
        missing = sorted((set(files) | set(data)) - set(relpaths))
        if missing:
            raise PromotionError(
                f"the local copy is damaged: recorded files are missing: {missing[:5]}",
                step=None,
            )
        for rel, (size, crc) in files.items():
            expected[rel] = _Expected(size, algorithm, crc)
        for rel, size in data.items():
            expected[rel].size = size
    if any(_format.is_data_file(rel) for rel in relpaths):
        index = _format.load_index(os.path.join(step_dir, _format.ITEM))
        by_file: dict[str, list[tuple[int, int, int]]] = {}
        for leaf in index.leaves.values():
            for shard in leaf.shards:
                by_file.setdefault(shard.file, []).append((shard.offset, shard.length, shard.crc))
        for rel in relpaths:
            if _format.is_data_file(rel):
                shards = set(by_file.get(rel.split("/", 1)[1], []))
                expected[rel].shards = _ShardCheck(shards)
    return expected


def _local_files(step_dir: str) -> list[str]:
    """Relative paths of every regular file of a committed local step (record tmp excluded)."""
    found = []
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in files:
            full = os.path.join(root, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            rel = os.path.relpath(full, step_dir).replace(os.sep, "/")
            if rel.startswith(f"{_integrity.RECORD_NAME}.tmp"):
                continue
            found.append(rel)
    return sorted(found)


_MARKER = _layout.COMMIT_MARKER


def _upload_order(rel: str) -> tuple[int, str]:
    # Data first, metadata after, the step's own metadata and record last: a reader that
    # ignores the commit marker still meets an index only once its data is there.
    if _format.is_data_file(rel):
        return (0, rel)
    if rel in (_layout.CHECKPOINT_METADATA, _integrity.RECORD_NAME):
        return (2, rel)
    return (1, rel)


# ---------------------------------------------------------------------------- remote
def remote_fs(remote: str) -> tuple[Any, str]:
    """An fsspec filesystem and root path for the remote tier (a URL or a local folder).

    A fresh client (not fsspec's shared instance): its settings are read from the
    environment when the Checkpointer is made.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(remote, skip_instance_cache=True)
    return fs, str(root).rstrip("/")


def _is_remote_url(path: str) -> bool:
    return _paths.is_url(path)


class Promoter:
    """The background promotion of committed local steps, and remote retention.

    Args:
        local: the local tier (an absolute folder).
        remote: the remote tier (a URL or an absolute folder).
        retention: the remote tier's retention.
        policy: when to promote.
        is_temporary: temporary local steps are never promoted.
        local_steps: the committed local steps, ascending.
        timeout: bound of every wait on the remote (listing, the multi-process markers).
        process: this JAX process; process_count: how many there are.
    """

    def __init__(
        self,
        local: str,
        remote: str,
        retention: Retention,
        policy: PromotePolicy,
        *,
        is_temporary: Callable[[int], bool],
        local_steps: Callable[[], list[int]],
        timeout: float,
        process: int = 0,
        process_count: int = 1,
    ) -> None:
        self.local = local
        self.remote = remote
        self.retention = retention
        self.policy = policy
        self._is_temporary = is_temporary
        self._local_steps = local_steps
        self.timeout = timeout
        self.process = process
        self.process_count = process_count
        self.fs, self.root = remote_fs(remote)
        self._url = _is_remote_url(remote)
        self._clock = PromoteClock()
        self._cond = threading.Condition()
        self._waiting: int | None = None
        self._running: int | None = None
        self._stop = False
        self._remote_metrics: dict[int, Mapping[str, float] | None] = {}
        self.on_remote: set[int] = set()
        """Steps known to be committed on the remote tier (copied from it by a restore)."""
        self.promoted: list[int] = []
        """Steps this Checkpointer promoted, in order."""
        self.last_promoted: int | None = None
        self.last_seconds: float | None = None
        """Seconds the last successful promotion took (upload, checks and commit)."""
        self._errors: list[PromotionError] = []
        self._thread = threading.Thread(target=self._loop, name="roxxel-promote", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ queueing
    def committed(self, step: int) -> None:
        """A local step committed (Orbax's finalize thread): queue it if it is due. Never
        blocks on the remote."""
        if self._is_temporary(step):
            return
        now = time.monotonic()
        with self._cond:
            clock = dataclasses.replace(self._clock, since=self._clock.since + 1)
            if not due(self.policy, clock, now):
                self._clock = clock
                return
            self._clock = PromoteClock(0, now)
        self.enqueue(step)

    def enqueue(self, step: int) -> None:
        """Queue `step` for promotion; a newer step replaces one still waiting."""
        with self._cond:
            if self._stop:
                return
            if self._waiting is not None and self._waiting != step:
                logger.info(
                    "roxxel: step %d will not be promoted to %s: step %d replaced it while "
                    "step %s was being promoted",
                    self._waiting,
                    self.remote,
                    step,
                    self._running,
                )
            if self._waiting is None or step > self._waiting:
                self._waiting = step
            self._cond.notify_all()

    def pinned(self) -> set[int]:
        """Steps local retention must keep for now (waiting or being promoted)."""
        with self._cond:
            return {s for s in (self._waiting, self._running) if s is not None}

    def idle(self) -> bool:
        with self._cond:
            return self._waiting is None and self._running is None

    def wait(self, timeout: float) -> bool:
        """Wait until no promotion waits or runs; False when `timeout` ran out first."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._waiting is not None or self._running is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def take_error(self) -> PromotionError | None:
        """The oldest promotion failure not yet reported by `take_error`, if any."""
        with self._cond:
            return self._errors.pop(0) if self._errors else None

    def close(self, grace_s: float) -> None:
        """Promote the newest permanent local step if it is not yet, within `grace_s` seconds.

        What is not done by then is logged; the local tier keeps it.
        """
        try:
            steps = [s for s in self._local_steps() if not self._is_temporary(s)]
        except Exception:  # noqa: BLE001  the local listing failing must not stop the close
            logger.warning("roxxel: cannot list %s to promote its last step", self.local)
            steps = []
        newest = steps[-1] if steps else None
        with self._cond:
            known = {self._waiting, self._running, self.last_promoted, *self.on_remote}
        if (
            newest is not None
            and newest not in known
            and (self.last_promoted is None or newest > self.last_promoted)
        ):
            self.enqueue(newest)
        done = self.wait(grace_s)
        with self._cond:
            left = [s for s in (self._running, self._waiting) if s is not None]
            self._stop = True
            self._waiting = None
            self._cond.notify_all()
        if not done:
            logger.warning(
                "roxxel: promotion of step(s) %s to %s did not finish within the grace period "
                "(promote_grace_s=%g s); they are committed on the local tier %s only",
                left,
                self.remote,
                grace_s,
                self.local,
            )

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        _lifecycle.signals_to_main_thread()
        while True:
            with self._cond:
                while self._waiting is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                step = self._waiting
                assert step is not None
                self._waiting = None
                self._running = step
            started = time.monotonic()
            try:
                self.promote(step)
            except Exception as exc:  # noqa: BLE001  reported below and by wait_until_promoted
                error = PromotionError(
                    f"promoting step {step} from {self.local} to {self.remote} failed: "
                    f"{type(exc).__name__}: {exc}. The step is committed on the local tier; "
                    "the remote tier keeps its older steps. A later step is promoted as usual.",
                    step=step,
                )
                error.__cause__ = exc
                logger.error("roxxel: %s", error)
                with self._cond:
                    self._errors.append(error)
            else:
                with self._cond:
                    self.promoted.append(step)
                    self.last_promoted = step
                    self.last_seconds = time.monotonic() - started
                logger.info(
                    "roxxel: step %d promoted to %s in %.2f s",
                    step,
                    self.remote,
                    time.monotonic() - started,
                )
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    # ------------------------------------------------------------------ one promotion
    def _remote_path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    def promote(self, step: int) -> None:
        """Upload this process's files of committed local `step`, checked, then commit it."""
        src = os.path.join(self.local, str(step))
        if not os.path.isdir(src):
            raise FileNotFoundError(f"the local step folder {src} is gone")
        name = str(step) if self._url else f"{step}{PROMOTE_TMP}"
        dst = self._remote_path(name)
        if self.process_count == 1 and self.fs.exists(dst):
            self.fs.rm(dst, recursive=True)  # an earlier upload that never committed
        try:
            relpaths = _local_files(src)
            expected = _expectations(src, relpaths)
            # The commit marker goes last, by `_commit`: on an object store it is the commit.
            mine = [r for r in files_of_process(relpaths, self.process) if r != _MARKER]
            buffer = bytearray(_CHUNK)
            for rel in sorted(mine, key=_upload_order):
                source = os.path.join(src, *rel.split("/"))
                self._upload(source, f"{dst}/{rel}", rel, expected[rel], buffer)
        except BaseException:
            if self.process_count == 1:  # best effort: an uncommitted upload is ignored anyway
                try:
                    if self.fs.exists(dst):
                        self.fs.rm(dst, recursive=True)
                except Exception:  # noqa: BLE001
                    logger.debug("roxxel: could not remove the partial upload %s", dst)
            raise
        if self.process_count > 1:
            self.fs.pipe_file(f"{dst}/{marker_name(self.process)}", b"promoted\n")
            if self.process != 0:
                return
            self._wait_for_markers(dst, step)
        self._commit(step, dst, src)
        with self._cond:
            self._remote_metrics[step] = _read_metrics(os.path.join(src, "metrics", "metrics"))
        if self.process == 0:
            self.apply_retention()

    def _upload(self, src: str, dst: str, rel: str, expected: _Expected, buffer: bytearray) -> None:
        view = memoryview(buffer)
        crc = 0
        position = 0
        if not self._url:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(src, "rb", buffering=0) as handle, self.fs.open(dst, "wb") as out:
            while True:
                n = handle.readinto(view)
                if not n:
                    break
                chunk = view[:n]
                if expected.algorithm is not None:
                    crc = _integrity.extend(expected.algorithm, crc, chunk)
                if expected.shards is not None:
                    expected.shards.feed(position, chunk)
                out.write(chunk)
                position += n
            problems = []
            if expected.size is not None and position != expected.size:
                problems.append(f"{rel}: {position} bytes, recorded {expected.size}")
            if expected.crc is not None and crc != expected.crc:
                problems.append(f"{rel}: content differs from the recorded checksum")
            if expected.shards is not None:
                problems.extend(expected.shards.problems(rel))
            if problems:
                raise PromotionError(
                    "the local copy is damaged, so it was not promoted: " + "; ".join(problems),
                    step=None,
                )
        remote_size = int(self.fs.info(dst)["size"])
        if remote_size != position:
            raise OSError(f"{dst}: the remote object has {remote_size} bytes, {position} were sent")

    def _wait_for_markers(self, dst: str, step: int) -> None:
        end = time.monotonic() + self.timeout
        while True:
            entries = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(dst, detail=False)]
            if all_promoted(entries, self.process_count):
                return
            if time.monotonic() > end:
                missing = [
                    p for p in range(self.process_count) if marker_name(p) not in set(entries)
                ]
                raise TimeoutError(
                    f"step {step}: processes {missing} did not finish promoting their files "
                    f"within timeout={self.timeout:g} s"
                )
            time.sleep(0.2)
            self.fs.invalidate_cache(dst)

    def _commit(self, step: int, dst: str, src: str) -> None:
        # The local step's own marker, byte for byte: its checksum record names that text, so
        # the remote copy verifies (and restores) like the local one.
        try:
            with open(os.path.join(src, _MARKER), "rb") as local_marker:
                body = local_marker.read(1 << 16)
        except OSError:
            body = f"promoted by roxxel from {socket.gethostname()}:{self.local}\n".encode()
        self.fs.pipe_file(f"{dst}/{_MARKER}", body)
        if not self._url:
            final = os.path.join(self.remote, str(step))
            if os.path.isdir(final):
                _remove_local(self.remote, final)
            os.replace(dst, final)
            _paths.fsync_dir(self.remote)

    # ------------------------------------------------------------------ retention
    def listing(self) -> _directory.Listing:
        """The remote tier's listing (`_directory.scan`)."""
        _storage.forget_listings(self.remote)
        return _directory.scan(self.remote)

    def _metrics_of(self, step: int, listing: _directory.Listing) -> Mapping[str, float] | None:
        with self._cond:
            if step in self._remote_metrics:
                return self._remote_metrics[step]
        try:
            value = _directory.parse_metrics(
                self.fs.cat_file(self._remote_path(str(step), "metrics", "metrics"))
            )
        except OSError:
            value = None
        with self._cond:
            self._remote_metrics[step] = value
        return value

    def apply_retention(self) -> list[int]:
        """Delete the remote steps remote retention does not keep, and stale uploads."""
        listing = self.listing()
        ours = [f.step for f in listing.folders if f.layout == "roxxel" and f.name == str(f.step)]
        checkpoints = [(s, self._metrics_of(s, listing)) for s in ours]
        doomed = remote_to_delete(checkpoints, self.retention)
        for step in doomed:
            self.delete(step)
        newest = max(ours) if ours else None
        for name in stale_uploads(listing.pending, newest):
            path = self._remote_path(name)
            if self._url:
                self.fs.rm(path, recursive=True)
            else:
                _remove_local(self.remote, os.path.join(self.remote, name))
        if doomed:
            logger.info("roxxel: remote retention deleted steps %s from %s", doomed, self.remote)
        return doomed

    def delete(self, step: int) -> None:
        """Delete a remote step: its commit marker first, then the rest."""
        path = self._remote_path(str(step))
        if self._url:
            marker = f"{path}/{_layout.COMMIT_MARKER}"
            if self.fs.exists(marker):
                self.fs.rm_file(marker)
            self.fs.rm(path, recursive=True)
        else:
            _remove_local(self.remote, path)
        with self._cond:
            self._remote_metrics.pop(step, None)


def _read_metrics(path: str) -> dict[str, float] | None:
    try:
        with open(path, "rb") as handle:
            return _directory.parse_metrics(handle.read(1 << 20))
    except OSError:
        return None


def _remove_local(parent: str, path: str) -> None:
    """Delete a local folder by one rename into the trash first (never half-deleted)."""
    trash = os.path.join(parent, _layout.TRASH)
    os.makedirs(trash, exist_ok=True)
    aside = os.path.join(trash, f"{os.path.basename(path)}-{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


# ---------------------------------------------------------------------------- restore
def remote_listing(remote: str, timeout: float) -> _directory.Listing | None:
    """The remote tier's listing, or None (with a warning) when it cannot be read in time."""
    from ._orbax import run_bounded

    found: list[_directory.Listing] = []

    def call() -> None:
        if _storage.is_object_store(remote):
            # `scan` reads an unreachable store as an empty one; ask the endpoint first.
            _storage.check_reachable(remote, timeout=timeout)
        _storage.forget_listings(remote)
        found.append(_directory.scan(remote))

    try:
        worker = run_bounded(call, timeout=timeout, name="roxxel-remote-listing")
    except Exception as exc:  # noqa: BLE001  unreachable: the local tier alone is used
        logger.warning(
            "roxxel: cannot list the remote tier %s (%s: %s); restoring from the local tier only",
            remote,
            type(exc).__name__,
            exc,
        )
        return None
    if (worker is not None and worker.is_alive()) or not found:
        logger.warning(
            "roxxel: the remote tier %s did not answer within timeout=%g s; restoring from the "
            "local tier only",
            remote,
            timeout,
        )
        return None
    return found[0]


def fetch(remote: str, local: str, step: int, *, timeout: float) -> None:
    """Copy committed remote `step` into the local tier, checked whole before it is used.

    The files go into `<step>.orbax-checkpoint-tmp-fetch`, are checked against the step's
    record and every shard's checksum (`_integrity.check(deep=True)`), and the folder is
    renamed to `<step>` (a damaged local copy of the step is deleted first).

    Raises:
        TimeoutError: the copy did not finish within `timeout` seconds.
        CorruptCheckpointError-like `ValueError`: the remote copy fails its checks.
        OSError: the remote cannot be read.
    """
    from ._orbax import run_bounded

    cancelled = threading.Event()
    tmp = os.path.join(local, f"{step}{FETCH_TMP}-{uuid.uuid4().hex[:8]}")

    def call() -> None:
        fs, root = remote_fs(remote)
        base = f"{root}/{step}"
        names = [str(p) for p in fs.find(base)]
        os.makedirs(tmp)
        try:
            for path in names:
                rel = path[len(base) + 1 :]
                if rel.startswith(MARKER_PREFIX):
                    continue
                target = os.path.join(tmp, *rel.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with fs.open(path, "rb") as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                if cancelled.is_set():
                    raise TimeoutError("cancelled")
            result = _integrity.check(tmp, step, deep=True)
            if not result.ok:
                raise ValueError(
                    f"the remote copy of step {step} is damaged: {'; '.join(result.problems[:3])}"
                )
            if cancelled.is_set():
                raise TimeoutError("cancelled")
            final = os.path.join(local, str(step))
            if os.path.isdir(final):
                _remove_local(local, final)
            os.replace(tmp, final)
            _paths.fsync_dir(local)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    worker = run_bounded(call, timeout=timeout, name="roxxel-fetch")
    if worker is not None and worker.is_alive():
        cancelled.set()
        raise TimeoutError(
            f"copying step {step} from {remote} did not finish within timeout={timeout:g} s"
        )


def bring_for_restore(
    remote: str,
    local: str,
    *,
    local_steps: list[int],
    intact: Callable[[int], bool],
    step: int | None,
    timeout: float,
    seen: set[int] | None = None,
    best: Callable[[list[tuple[int, Mapping[str, float] | None]]], int | None] | None = None,
) -> int | None:
    """Fetch into the local tier the remote step a restore should read, if there is one.

    Without `step`: the newest committed remote step newer than the newest intact local step
    (older remote steps in turn if fetching fails). With `step`: that step, when the local
    tier lacks it or holds it damaged. With `best`: the remote step `best` picks when given
    the `(step, metrics)` of the remote steps the local tier lacks (or holds damaged), which
    it ranks together with the local ones. Returns the step fetched, or None (the local tier is
    used as it is: nothing better remotely, or the remote unreachable, logged).
    """
    listing = remote_listing(remote, timeout)
    if listing is None:
        return None
    remote_steps = [f.step for f in listing.folders if f.layout == "roxxel"]
    if seen is not None:
        seen.update(remote_steps)  # committed remotely: close() need not promote them
    if best is not None:
        missing = [s for s in remote_steps if s not in local_steps or not intact(s)]
        chosen = best(list(remote_metrics(remote, missing).items()))
        if chosen is None or chosen not in missing:
            return None
        candidates = [chosen]
    elif step is not None:
        if step not in remote_steps or (step in local_steps and intact(step)):
            return None
        candidates = [step]
    else:
        newest_local = next((s for s in reversed(local_steps) if intact(s)), None)
        candidates = [s for s in reversed(remote_steps) if newest_local is None or s > newest_local]
    for candidate in candidates:
        try:
            fetch(remote, local, candidate, timeout=timeout)
        except Exception as exc:  # noqa: BLE001  an older step (or the local tier) is used
            logger.warning(
                "roxxel: could not copy step %d from the remote tier %s: %s: %s",
                candidate,
                remote,
                type(exc).__name__,
                exc,
            )
            continue
        logger.info("roxxel: step %d copied from the remote tier %s", candidate, remote)
        return candidate
    return None


def remote_metrics(remote: str, steps: Sequence[int]) -> dict[int, Mapping[str, float] | None]:
    """The metrics saved with each of `steps` on the remote tier (None: none or unreadable),
    read in one batch of requests."""
    if not steps:
        return {}
    fs, root = remote_fs(remote)
    paths = {f"{root}/{step}/{_layout.METRICS_ITEM}/metrics": step for step in steps}
    try:
        found = fs.cat(list(paths), on_error="omit")
    except OSError as exc:
        logger.warning("roxxel: cannot read the metrics of the remote tier %s: %s", remote, exc)
        found = {}
    read = {paths[str(p)]: body for p, body in found.items() if str(p) in paths}
    return {step: _directory.parse_metrics(read[step]) if step in read else None for step in steps}


def prepare_remote(remote: str, *, timeout: float) -> None:
    """Check the remote tier's client at construction; an unreachable endpoint is a warning.

    Raises:
        CheckpointPathError: the fsspec client of a `gs://`/`s3://` URL is not installed.
    """
    from ._errors import StorageUnreachableError

    if not _storage.is_object_store(remote):
        return
    _storage.check_client(remote)
    try:
        _storage.check_reachable(remote, timeout=min(timeout, 10.0))
    except StorageUnreachableError as exc:
        logger.warning(
            "roxxel: the remote tier is unreachable for now; steps are saved on the local tier "
            "and promoted once it answers: %s",
            exc,
        )
