"""The one reading of a checkpoint directory: which steps it holds, and which one to choose.

`scan` lists a checkpoint directory (local or `gs://`/`s3://`) and classifies every folder by
the rules of `_layout`: the committed steps Roxxel wrote, the steps of layouts it migrates
from, saves that never finished, and folders that are not Roxxel's (a Hydra job folder `0/`,
a `7/` of plots, a `007/`), which are reported and otherwise left alone. `choose_step` picks a
step from a listing. The Checkpointer, the Orbax layer (through its step name format), the
`roxxel` command and `verify` all read a directory through these two functions, so they
cannot disagree about what counts as a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Collection, Iterable
from typing import Any

from . import _layout, _paths, _storage
from ._errors import CorruptCheckpointError, NoCheckpointError, StepNotFoundError
from ._layout import Ignored, StepFolder


@dataclasses.dataclass(frozen=True)
class Listing:
    """What a checkpoint directory holds.

    Attributes:
        directory: the directory (absolute path or URL).
        folders: the committed steps, ascending (a Roxxel step wins over another folder of
            the same step).
        ignored: folders named like steps that are not checkpoints Roxxel can read.
        pending: `(step or None, folder name)` of saves that never finished.
    """

    directory: str
    folders: tuple[StepFolder, ...]
    ignored: tuple[Ignored, ...] = ()
    pending: tuple[tuple[int | None, str], ...] = ()

    @property
    def steps(self) -> list[int]:
        """Committed steps, ascending."""
        return [folder.step for folder in self.folders]

    def folder(self, step: int) -> StepFolder | None:
        """The folder of `step`, or None."""
        for folder in self.folders:
            if folder.step == step:
                return folder
        return None

    def path(self, step: int) -> str:
        """The folder of `step` as a path (or URL) inside the directory."""
        folder = self.folder(step)
        name = str(step) if folder is None else folder.name
        return join(self.directory, name)


def join(directory: str, *names: str) -> str:
    """`directory/name/...` for a local path or a URL; empty names are skipped."""
    parts = [name for name in names if name]
    if _paths.is_url(directory):
        return "/".join([directory.rstrip("/"), *parts])
    return os.path.join(directory, *parts)


_clients: dict[tuple[str, str], Any] = {}


def client(url: str) -> Any:
    """The fsspec client of an object-store URL, one per scheme and endpoint, listings fresh.

    Not fsspec's shared instance: that one keeps the endpoint it was first made with, so a
    process that moves to another endpoint (another server) would go on listing the old one.
    """
    import fsspec

    key = (url.split("://", 1)[0], _storage.endpoint_for(url)[0])
    fs = _clients.get(key)
    if fs is None:
        fs = _clients.setdefault(key, fsspec.core.url_to_fs(url, skip_instance_cache=True)[0])
    fs.invalidate_cache()
    return fs


class _Lister:
    """Directory listing and small-file reads, by `os` locally and fsspec remotely.

    Remote listings are always fresh: s3fs and gcsfs cache listings in the filesystem object
    that Orbax's own listing (through etils) shares, and another process may have written
    since. The cache is dropped when a lister is made.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.remote = _paths.is_url(directory)
        self._fs: Any = client(directory) if self.remote else None

    def entries(self, name: str) -> dict[str, bool] | None:
        """`{entry name: is a directory}` of `name` (None when it is not a listable folder)."""
        path = join(self.directory, name)
        try:
            if self.remote:
                found = self._fs.ls(self._fs._strip_protocol(path), detail=True)
                return {
                    str(info["name"]).rstrip("/").rsplit("/", 1)[-1]: info.get("type")
                    == "directory"
                    for info in found
                }
            if name and os.path.islink(path):
                return None  # Roxxel never makes a symlinked step; it could point anywhere
            with os.scandir(path) as it:
                return {e.name: e.is_dir(follow_symlinks=False) for e in it}
        except (OSError, ValueError):
            return None

    def read(self, name: str, file: str) -> bytes | None:
        path = join(self.directory, name, file)
        try:
            if self.remote:
                return bytes(self._fs.cat_file(self._fs._strip_protocol(path)))
            with open(path, "rb") as f:
                return f.read(1 << 20)
        except (OSError, ValueError):
            return None


def classify(
    directory: str, name: str, lister: _Lister | None = None
) -> StepFolder | Ignored | None:
    """Classify one step-named folder of `directory` (used by Orbax's step listing too).

    None: an object-store step without its commit marker, a save that never finished.
    """
    lister = lister or _Lister(directory)
    entries = lister.entries(name)
    if entries is None:
        return Ignored(name, "not a folder (a symbolic link, or unreadable)")
    if not _committed(entries, remote=lister.remote):
        return None
    metadata = lister.read(name, _layout.CHECKPOINT_METADATA)
    return _layout.classify_step(name, entries, metadata)


def classify_aside(directory: str, name: str, lister: _Lister | None = None) -> StepFolder | None:
    """The step an overwrite cut short left in `<step>.roxxel-replaced`, or None.

    The aside holds the old version of a committed step, whole (a local rename, or an
    object-store copy with its commit marker). While the new version has not committed, it is
    that step's committed folder for readers (`scan(..., asides=True)`).
    """
    step = _layout.aside_step(name)
    if step is None:
        return None
    lister = lister or _Lister(directory)
    entries = lister.entries(name)
    if entries is None or not entries or not _committed(entries, remote=lister.remote):
        return None
    found = _layout.classify_step(
        str(step), entries, lister.read(name, _layout.CHECKPOINT_METADATA)
    )
    if not isinstance(found, StepFolder):
        return None
    return dataclasses.replace(found, name=name)


def _committed(entries: Collection[str], *, remote: bool) -> bool:
    # Local steps are committed by a rename; object-store steps by a marker written last.
    return not remote or _layout.COMMIT_MARKER in entries


def scan(directory: str, *, asides: bool = False) -> Listing:
    """List and classify the folders of a checkpoint directory (read-only).

    A missing directory lists as empty. Only folder names, the small `_CHECKPOINT_METADATA`
    of each step-named folder, and the top of non-step folders are read.

    With `asides`, a step whose overwrite was cut short (its old version whole in
    `<step>.roxxel-replaced`, the new one never committed) is listed from that folder: what
    readers (a read-only Checkpointer, `roxxel ls`, `verify`) see until a writer opens the
    directory and puts it back. Writers list without: for them the aside is their own
    overwrite in flight, or one to settle (`_overwrite`), never a step of its own.
    """
    lister = _Lister(directory)
    top = lister.entries("")
    if top is None:
        return Listing(directory, ())
    folders: dict[int, StepFolder] = {}
    ignored: list[Ignored] = []
    pending: list[tuple[int | None, str]] = []
    singles: list[str] = []
    aside_names: list[str] = []
    for name, is_dir in sorted(top.items()):
        if not is_dir:
            continue
        if _layout.aside_step(name) is not None:
            aside_names.append(name)
            continue
        marker = _layout.pending_step(name)
        if marker is not False:
            pending.append((marker, name))
            continue
        if _layout.looks_like_step(name):
            found = classify(directory, name, lister)
            if found is None:
                pending.append((_layout.step_number(name), name))
            elif isinstance(found, Ignored):
                ignored.append(found)
            else:
                folders[found.step] = found
        elif not name.startswith((".", "_")) and name != _layout.TRASH:
            singles.append(name)
    for name in aside_names if asides else ():
        step = _layout.aside_step(name)
        if step not in folders:
            found = classify_aside(directory, name, lister)
            if found is not None:
                folders[found.step] = found
    single = _single_checkpoint(lister, top, singles)
    if single is not None and 0 not in folders:
        folders[0] = single
    return Listing(
        directory,
        tuple(folders[step] for step in sorted(folders)),
        tuple(ignored),
        tuple(sorted(pending, key=lambda p: (p[0] is None, p[0] or 0, p[1]))),
    )


def _single_checkpoint(
    lister: _Lister, top: dict[str, bool], children: Iterable[str]
) -> StepFolder | None:
    """The directory itself, or one folder in it, holding one `StandardCheckpointer` save.

    That is the layout of Flax's NNX guide (`StandardCheckpointer().save(dir / "state",
    state)`): no steps, so it stands for step 0.
    """
    if _layout.is_single_checkpoint(top, lister.read("", _layout.CHECKPOINT_METADATA)):
        return StepFolder(0, "", "orbax", "")
    for name in children:
        entries = lister.entries(name)
        if entries is None or _layout.PYTREE_METADATA not in entries:
            continue
        if not _committed(entries, remote=lister.remote):
            continue
        if _layout.is_single_checkpoint(entries, lister.read(name, _layout.CHECKPOINT_METADATA)):
            return StepFolder(0, name, "orbax", "")
    return None


def parse_metrics(raw: bytes | str) -> dict[str, float] | None:
    """A step's `metrics/metrics` JSON as `{name: number}` (non-numbers dropped), or None."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    return {
        str(k): float(v)
        for k, v in value.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


# ------------------------------------------------------------------------- choosing a step
@dataclasses.dataclass(frozen=True)
class Wording:
    """How the caller names its options in error messages (Python call or command line)."""

    best: str = "restore(best=True)"
    step: str = "restore(step=N)"
    newest: str = "restore()"
    name_metric: str = "create the Checkpointer with best_metric=<a name in metrics_dict>"


CLI_WORDING = Wording(
    best="--best",
    step="--step N",
    newest="no --step",
    name_metric="name the metric with --best-metric NAME (e.g. --best-metric loss)",
)


def choose_step(
    listing: Listing,
    *,
    step: int | None,
    best: bool,
    best_metric: str | None,
    best_step: Callable[[], int | None],
    exclude: Collection[int] = (),
    wording: Wording = Wording(),
) -> int | None:
    """The step to read: `step`, the best (`best=True`), or the newest not in `exclude`.

    Returns None when the directory has no committed step and none was asked for.

    Raises:
        StepNotFoundError: `step` is not a committed step there.
        NoCheckpointError: `best` without a metric, or no step has a finite metric.
        CorruptCheckpointError: every step is in `exclude` (all were found damaged).
    """
    steps = listing.steps
    directory = listing.directory
    if best:
        if best_metric is None:
            raise NoCheckpointError(
                f"{wording.best} needs a metric to rank the checkpoints of {directory}, and "
                f"none was named: {wording.name_metric}, or choose the newest ({wording.newest}) "
                f"or a given step ({wording.step}); steps there: {steps or 'none'}."
            )
        chosen = best_step()
        if chosen is None:
            raise NoCheckpointError(
                f"{wording.best}: no checkpoint in {directory} has a finite {best_metric!r} "
                f"metric (steps there: {steps or 'none'}). Choose the newest ({wording.newest}) "
                f"or a given step ({wording.step}), or rank by a metric they have: "
                f"{wording.name_metric}."
            )
        return chosen
    if step is None:
        if steps and exclude and all(s in exclude for s in steps):
            raise CorruptCheckpointError(
                f"every checkpoint in {directory} is damaged (steps {sorted(exclude)}); "
                f"nothing was restored. Run `roxxel verify {directory}` for the full list; "
                "start from scratch with a new checkpoint_path if none can be repaired.",
                step=max(exclude),
                path=directory,
                problems=(),
            )
        left = [s for s in steps if s not in exclude]
        return left[-1] if left else None
    if step not in steps:
        extra = ""
        pending = [name for s, name in listing.pending if s == step]
        ignored = [i for i in listing.ignored if _layout.step_number(i.name) == step]
        if pending:
            extra = f" Step {step} was being saved but never committed ({pending[0]})."
        elif ignored:
            extra = f" The folder {ignored[0].name!r} is not a checkpoint: {ignored[0].reason}."
        raise StepNotFoundError(
            f"step {step} is not a committed checkpoint in {directory}; the steps there are "
            f"{steps or 'none'}.{extra}",
            step=step,
            available=steps,
        )
    return step


def no_checkpoint_error(listing: Listing) -> NoCheckpointError:
    """The error for a directory without a committed step, saying what the folder holds."""
    directory = listing.directory
    detail = "it is empty"
    if listing.pending:
        detail = (
            f"it holds only saves that never finished: {[n for _, n in listing.pending]} (the "
            "training process stopped before committing them)"
        )
    elif listing.ignored:
        shown = "; ".join(f"{i.name}/: {i.reason}" for i in listing.ignored[:4])
        detail = f"its step-named folders are not checkpoints ({shown})"
    elif not _paths.is_url(directory) and os.path.isdir(directory):
        if os.path.exists(os.path.join(directory, _layout.CHECKPOINT_METADATA)):
            parent = os.path.dirname(directory)
            detail = f"it looks like one step's folder; pass its parent {parent!r}"
        else:
            names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
            if names:
                shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                detail = f"it holds no step folders, only: {shown}"
    return NoCheckpointError(
        f"no committed checkpoint in {directory}: {detail}. Pass the folder given to "
        "Checkpointer(checkpoint_path=...)."
    )
