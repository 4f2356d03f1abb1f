"""An overwrite keeps the old step until the new one has committed.

`save(step, overwrite=True)` first sets the committed `<step>` aside as
`<step>.roxxel-replaced`; the new `<step>` is then saved as any other. Once it has committed the
aside is deleted; if it never commits (a failed write, a crash, Ctrl-C) the next writer puts the
aside back. At every moment one of the two versions is whole on disk:

* **Local directory**: one rename each way (then the directory is fsynced).
* **Object store** (no rename): the aside is a server-side copy whose commit marker is copied
  last, so an aside without its marker is incomplete. Only then is the old step's own marker
  deleted (the step stops being committed) and its other files after it. Putting it back
  deletes whatever the failed save left in `<step>/`, copies the aside back with the marker
  last, then deletes the aside.

`settle` is the pure rule applied by the next writer (and after a save commits); the functions
below it do the file operations. In a multi-process job only the primary process calls them,
between barriers (`_orbax.Store`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Collection, Iterable
from typing import Any

from . import _directory, _layout, _paths

logger = logging.getLogger("roxxel")

REPLACED = _layout.REPLACED
aside_name = _layout.aside_name
aside_step = _layout.aside_step


@dataclasses.dataclass(frozen=True)
class Settlement:
    """What to do with the asides of a directory.

    Attributes:
        drop: steps whose aside goes (the new version committed).
        put_back: steps whose aside becomes the step again (the new version never committed).
        stuck: steps whose aside is incomplete while the step is not committed (neither
            version is whole: left as they are, reported).
    """

    drop: tuple[int, ...] = ()
    put_back: tuple[int, ...] = ()
    stuck: tuple[int, ...] = ()


def settle(
    asides: Iterable[tuple[int, bool]], committed: Collection[int], live: Collection[int]
) -> Settlement:
    """Decide each aside's fate from `(step, aside is complete)` pairs.

    `committed` are the committed steps; `live` the steps being saved now in this process,
    whose asides are left alone until their save is over.
    """
    drop: list[int] = []
    put_back: list[int] = []
    stuck: list[int] = []
    for step, complete in sorted(asides):
        if step in live:
            continue
        if step in committed:
            drop.append(step)
        elif complete:
            put_back.append(step)
        else:
            stuck.append(step)
    return Settlement(tuple(drop), tuple(put_back), tuple(stuck))


# ---------------------------------------------------------------------------- local
def _local_asides(directory: str) -> list[tuple[int, bool]]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = [(aside_step(n), n) for n in names]
    return [(step, True) for step, name in found if step is not None]  # a rename is whole


def set_aside(directory: str, step: int) -> None:
    """Move the committed `step` of `directory` to its aside (local or object store)."""
    if _paths.is_url(directory):
        _set_aside_remote(directory, step)
        return
    aside = os.path.join(directory, aside_name(step))
    if os.path.lexists(aside):  # an older aside of this step: the committed one is newer
        shutil.rmtree(aside)
    os.rename(os.path.join(directory, str(step)), aside)
    _paths.fsync_dir(directory, best_effort=True)


def settle_directory(
    directory: str, committed: Callable[[], Collection[int]], live: Collection[int]
) -> Settlement:
    """Apply `settle` to the asides in `directory`; returns what was done.

    `committed()` lists the committed steps (called only when there is an aside).
    """
    remote = _paths.is_url(directory)
    asides = _remote_asides(directory) if remote else _local_asides(directory)
    if not asides:
        return Settlement()
    plan = settle(asides, committed(), live)
    for step in plan.drop:
        _remove(directory, aside_name(step))
    for step in plan.put_back:
        if remote:
            _put_back_remote(directory, step)
        else:
            os.rename(os.path.join(directory, aside_name(step)), os.path.join(directory, str(step)))
            _paths.fsync_dir(directory, best_effort=True)
    if plan.stuck:
        logger.error(
            "roxxel: step %s in %s was being overwritten, and neither the new version nor the "
            "copy of the old one (%s) is complete; both are left as they are. Copy the step back "
            "from another tier or backup, or delete these folders to go on without it",
            ", ".join(map(str, plan.stuck)),
            directory,
            ", ".join(aside_name(s) for s in plan.stuck),
        )
    return plan


def _remove(directory: str, name: str) -> None:
    if _paths.is_url(directory):
        fs = _directory.client(directory)
        path = fs._strip_protocol(_directory.join(directory, name))
        if fs.exists(path):
            fs.rm(path, recursive=True)
        return
    shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


# --------------------------------------------------------------------------- object stores
def _files(fs: Any, root: str) -> list[str]:
    """The objects under `root`, relative to it."""
    found = fs.find(root)
    return sorted(str(path)[len(root) + 1 :] for path in found if str(path).startswith(root + "/"))


def _copy_marker_last(fs: Any, source: str, target: str) -> None:
    """Server-side copy of every object under `source` to `target`, the commit marker last."""
    files = _files(fs, source)
    body = [f for f in files if f != _layout.COMMIT_MARKER]
    if body:
        fs.copy([f"{source}/{f}" for f in body], [f"{target}/{f}" for f in body])
    if _layout.COMMIT_MARKER in files:
        fs.cp_file(f"{source}/{_layout.COMMIT_MARKER}", f"{target}/{_layout.COMMIT_MARKER}")


def _set_aside_remote(directory: str, step: int) -> None:
    fs = _directory.client(directory)
    source = fs._strip_protocol(_directory.join(directory, str(step)))
    aside = fs._strip_protocol(_directory.join(directory, aside_name(step)))
    if fs.exists(aside):  # an older aside of this step: the committed one is newer
        fs.rm(aside, recursive=True)
    _copy_marker_last(fs, source, aside)
    fs.invalidate_cache()
    if _layout.COMMIT_MARKER not in _files(fs, aside):
        raise OSError(f"the copy of step {step} to {aside} has no commit marker")
    fs.rm_file(f"{source}/{_layout.COMMIT_MARKER}")  # from here on the aside is the step
    fs.rm(source, recursive=True)
    fs.invalidate_cache()


def _remote_asides(directory: str) -> list[tuple[int, bool]]:
    fs = _directory.client(directory)
    root = fs._strip_protocol(directory)
    try:
        names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except (OSError, ValueError):
        return []
    found: list[tuple[int, bool]] = []
    for name in names:
        step = aside_step(name)
        if step is None:
            continue
        # Objects, not folders: SeaweedFS goes on listing a prefix whose objects are all gone.
        files = _files(fs, f"{root}/{name}")
        if files:
            found.append((step, _layout.COMMIT_MARKER in files))
    return found


def _put_back_remote(directory: str, step: int) -> None:
    fs = _directory.client(directory)
    target = fs._strip_protocol(_directory.join(directory, str(step)))
    aside = fs._strip_protocol(_directory.join(directory, aside_name(step)))
    if fs.exists(target):  # what the failed save left: never mixed with the old files
        fs.rm(target, recursive=True)
    _copy_marker_last(fs, aside, target)
    fs.invalidate_cache()
    fs.rm(aside, recursive=True)
    fs.invalidate_cache()
