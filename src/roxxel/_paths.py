"""Checkpoint directory names (local folders are made absolute, URLs pass through untouched),
and making a local folder's renames durable."""

from __future__ import annotations

import errno
import os
import re

from ._errors import CheckpointPathError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str) -> bool:
    """True for `gs://…`, `s3://…` and other scheme URLs, which are never made local."""
    return bool(_URL.match(path))


def resolve(path: object, *, create: bool) -> str:
    """Return the checkpoint directory as a string, checked and (when `create`) created.

    URLs are returned exactly as given (only a trailing slash is dropped). A local path is made
    absolute; it must not be a regular file, and it must be writable when `create` is True.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path.strip():
        raise CheckpointPathError(
            f"checkpoint_path must be a non-empty string or os.PathLike, got {path!r}. "
            'Pass a folder such as "./checkpoints" or a URL such as "gs://bucket/run".',
            path=repr(path),
        )
    if is_url(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}"  # "s3://" stays a URL (and is refused later)
    absolute = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(absolute) and not os.path.isdir(absolute):
        raise CheckpointPathError(
            f"checkpoint_path {absolute!r} exists and is not a directory. Checkpoints are "
            "folders of steps: pass a folder path, or move the file away.",
            path=absolute,
        )
    if not create:
        return absolute
    try:
        os.makedirs(absolute, exist_ok=True)
    except OSError as exc:
        raise CheckpointPathError(
            f"cannot create checkpoint directory {absolute!r}: {exc.strerror or exc} "
            f"[errno {exc.errno}]. Choose a folder you can write to, or create it first.",
            path=absolute,
        ) from exc
    if _read_only_filesystem(absolute):
        raise CheckpointPathError(
            f"checkpoint directory {absolute!r} is on a read-only filesystem "
            f"({os.strerror(errno.EROFS)}). Remount it read-write or choose another folder to "
            "save; open it with read_only=True to restore only.",
            path=absolute,
        )
    if not os.access(absolute, os.W_OK | os.X_OK):
        raise CheckpointPathError(
            f"checkpoint directory {absolute!r} is not writable by this process "
            f"({os.strerror(errno.EACCES)}). Fix its permissions, choose another folder, or "
            "open it with read_only=True to restore only.",
            path=absolute,
        )
    return absolute


def _read_only_filesystem(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def fsync_dir(directory: str, *, best_effort: bool = False) -> None:
    """Make the renames and new entries in local `directory` durable (fsync the folder).

    An OSError is raised, unless `best_effort`: then a folder that cannot be opened or synced
    (some filesystems refuse a directory fsync) is left as it is.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not best_effort:
            raise
    finally:
        os.close(fd)
