"""Turn a failed background write into a sentence that names the cause and the fix.

Orbax reports a full disk as `ValueError: RESOURCE_EXHAUSTED ... [os_error_code='28']` from
TensorStore, or as `OSError(ENOSPC)` from Python code; a read-only filesystem or a permission
problem arrives as `OSError` with `EROFS`/`EACCES`/`EPERM`. `explain` looks through the
exception chain for either form and, for a local directory, adds the free space that
`statvfs` reports against the bytes the step needs.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

_CODE = re.compile(r"os_error_code='?(\d+)")
_TEXT = {
    errno.ENOSPC: ("no space left on device", "resource_exhausted"),
    errno.EDQUOT: ("disk quota exceeded",),
    errno.EROFS: ("read-only file system",),
    errno.EACCES: ("permission denied",),
    errno.EPERM: ("operation not permitted",),
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)
        stack.extend(e for e in getattr(current, "exceptions", ()) if isinstance(e, BaseException))


def error_code(exc: BaseException) -> int | None:
    """The errno behind `exc` (from an OSError or TensorStore's text), or None."""
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno:
            return item.errno
        match = _CODE.search(str(item))
        if match:
            return int(match.group(1))
        text = str(item).lower()
        for code, needles in _TEXT.items():
            if any(needle in text for needle in needles):
                return code
    return None


def tree_bytes(tree: Mapping[str, Any]) -> int:
    """The bytes of array data in a flat tree of arrays (what a save writes, uncompressed)."""
    return sum(int(getattr(leaf, "nbytes", 0) or 0) for leaf in tree.values())


def free_bytes(directory: str) -> int | None:
    """Bytes available to this process on the filesystem of a local `directory`."""
    try:
        stats = os.statvfs(directory)
    except (OSError, AttributeError):
        return None
    return stats.f_bavail * stats.f_frsize


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def explain(exc: BaseException, directory: str, needed: int | None) -> str:
    """A sentence (with a leading space) on why a write to `directory` failed, or ""."""
    code = error_code(exc)
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full" if code == errno.ENOSPC else "the disk quota is exceeded"
        free = None if "://" in directory else free_bytes(directory)
        amounts = []
        if needed:
            amounts.append(f"the step needs about {_mb(needed)}")
        if free is not None:
            amounts.append(f"{_mb(free)} are free")
        detail = f" ({', '.join(amounts)})" if amounts else ""
        return (
            f" Cause: {what}{detail} on the filesystem of {directory}. Free space (delete "
            "old files, or lower max_to_keep), or choose a larger disk."
        )
    if code == errno.EROFS:
        return f" Cause: the filesystem of {directory} is read-only. Remount it read-write."
    if code in (errno.EACCES, errno.EPERM):
        return (
            f" Cause: permission denied under {directory} (ownership, mode bits or an "
            "immutable flag). Make the directory writable by this process."
        )
    return ""
