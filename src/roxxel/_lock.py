"""The writer lock: one writing process per checkpoint directory.

A writing Checkpointer holds an exclusive `flock` on `<directory>/.roxxel-writer.lock` from
construction to `close()`, and writes its host name, pid and start time into the file so that a
second writer's error can name the holder. The kernel drops the lock when the holder dies,
however it dies (SIGKILL included), so a lock left by a dead process is taken over at once;
its stale content is logged. The file itself is never deleted (deleting a lock file races
with a process that has just opened it); a clean release empties it.

Only JAX process 0 takes the lock, since a multi-process job has one Checkpointer per process,
all writing one checkpoint. Read-only Checkpointers take no lock. Within one process, several
Checkpointers on the same directory share the lock (a notebook cell run twice must not lock
itself out; `_orbax` keeps them from removing each other's saves in flight); `gs://` and
`s3://` directories are not locked (no `flock` there). On a local filesystem without `flock`
support the lock is skipped with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from . import _layout
from ._errors import CheckpointLockedError, CheckpointPathError

logger = logging.getLogger("roxxel")

LOCK_NAME = _layout.WRITER_LOCK

_guard = threading.Lock()
_held: dict[str, _Held] = {}


class _Held:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0


class WriterLock:
    """A held writer lock; `release()` once (later calls do nothing)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._released = False

    def release(self, *, clean: bool = True) -> None:
        """Drop the lock; `clean=False` (a save is stuck) leaves the file untouched.

        Emptying the file is a write, which would block on storage that stopped answering.
        """
        with _guard:
            if self._released:
                return
            self._released = True
            held = _held.get(self.directory)
            if held is None:
                return
            held.users -= 1
            if held.users > 0:
                return
            del _held[self.directory]
            if clean:
                try:
                    os.ftruncate(held.fd, 0)  # a clean release: no holder to report
                except OSError:
                    logger.debug("could not empty %s", self.path, exc_info=True)
            os.close(held.fd)  # closing drops the flock


def _holder(fd: int) -> dict[str, Any]:
    """The holder recorded in the lock file (empty when none or unreadable)."""
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    host = info.get("host", "an unknown host")
    pid = info.get("pid", "?")
    since = info.get("since")
    when = ""
    if isinstance(since, (int, float)):
        when = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    return f"host {host} pid {pid}{when}"


def acquire(directory: str) -> WriterLock | None:
    """Take the writer lock of a local `directory`, or raise `CheckpointLockedError`.

    Returns None where no lock is taken (see the module docstring).
    """
    from . import _paths

    if _paths.is_url(directory):
        return None
    import jax

    if jax.process_index() != 0:
        return None
    lock = WriterLock(directory)
    with _guard:
        held = _held.get(directory)
        if held is not None:
            held.users += 1
            return lock
        try:
            fd = os.open(lock.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CheckpointPathError(
                f"cannot create the writer lock {lock.path!r}: {exc.strerror or exc} "
                f"[errno {exc.errno}]. The checkpoint directory must be writable to save: fix "
                "its permissions or mount, choose another folder, or open it with "
                "read_only=True to restore only.",
                path=directory,
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _holder(fd)
            os.close(fd)
            raise CheckpointLockedError(
                f"checkpoint directory {directory} is being written by another process "
                f"({_describe(info)}), which holds {lock.path}. Two writers would delete "
                "each other's checkpoints. To fix: 1) stop that process or let it finish "
                "(its lock goes when it exits, even if it is killed); 2) open this one with "
                "read_only=True to restore only; or 3) use another checkpoint_path.",
                path=lock.path,
                host=str(info.get("host", "")),
                pid=int(info.get("pid", -1)) if isinstance(info.get("pid"), int) else -1,
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            logger.warning(
                "roxxel: the filesystem of %s does not support flock (%s); a second writer "
                "to this directory will not be detected",
                directory,
                exc.strerror,
            )
            os.close(fd)
            return None
        previous = _holder(fd)
        if previous and previous.get("pid") != os.getpid():
            logger.warning(
                "roxxel: took over the writer lock of %s left by %s, which is no longer "
                "running (it did not close its Checkpointer)",
                directory,
                _describe(previous),
            )
        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, body.encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise CheckpointPathError(
                f"cannot write the writer lock {lock.path!r}: {exc.strerror or exc} "
                f"[errno {exc.errno}]. Free space or fix permissions on the checkpoint "
                "directory, or open it with read_only=True to restore only.",
                path=directory,
            ) from exc
        held = _Held(fd)
        held.users = 1
        _held[directory] = held
    return lock
