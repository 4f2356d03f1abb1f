"""The names on disk, and what a folder inside a checkpoint directory is.

Every file and folder name of the on-disk layout (Orbax's and Roxxel's own) is defined here
and nowhere else, together with the pure rules that classify a folder: a step Roxxel wrote,
a step in a layout Roxxel can migrate from (Orbax's `CheckpointManager` with one PyTree item,
as the page's sketch and plain Orbax write it, or one `StandardCheckpointer` folder as in
Flax's NNX guide), a save that never finished, or someone else's folder that Roxxel must
neither count, restore nor delete. No I/O happens here: the caller lists the folders and
reads the metadata (`_directory.scan`), so the rules are tested without disk.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from typing import Literal

# Orbax's names.
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"  # a step's (or a single checkpoint's) metadata
PYTREE_METADATA = "_METADATA"  # a PyTree item's tree metadata
COMMIT_MARKER = "commit_success.txt"  # written last on object stores (COMMIT_FILE mode)
TMP_MARKER = ".orbax-checkpoint-tmp"  # `<step>.orbax-checkpoint-tmp-<n>`: a save in flight
METRICS_ITEM = "metrics"  # CheckpointManager's metrics item
DEFAULT_ITEM = "default"  # CheckpointManager's item in single-item mode (the page's sketch)

# Roxxel's names.
META_ITEM = "roxxel"  # Roxxel's own record of a step: its presence marks a Roxxel step
ARRAYS_ITEM = "arrays"  # format 2: Roxxel's array files
STATE_ITEM = "state"  # format 1 (0.1.0, and object stores): TensorStore PyTree
EXTRAS_ITEM = "extras"  # the JSON states of a step's non-array extras
CHECKSUMS = "roxxel_checksums.json"  # the step's checksum record
TRASH = ".roxxel-deleted"  # steps retention is deleting
REPLACED = ".roxxel-replaced"  # `<step>.roxxel-replaced`: the old step of an overwrite in flight
WRITER_LOCK = ".roxxel-writer.lock"

Layout = Literal["roxxel", "orbax"]
"""`roxxel`: written by Roxxel. `orbax`: a PyTree written by Orbax alone (migrated on read)."""


@dataclasses.dataclass(frozen=True)
class StepFolder:
    """One step a checkpoint directory holds.

    Attributes:
        step: the step number.
        name: the folder's path relative to the checkpoint directory (`"7"`, or `""` for a
            directory that is itself one `StandardCheckpointer` checkpoint, or `"state"` for
            such a checkpoint one level down).
        layout: who wrote it.
        item: for the `orbax` layout, the PyTree folder relative to the step folder
            (`"default"` for a CheckpointManager step, `""` for a single checkpoint).
    """

    step: int
    name: str
    layout: Layout
    item: str = ""


@dataclasses.dataclass(frozen=True)
class Ignored:
    """A folder named like a step that Roxxel neither counts, restores nor deletes."""

    name: str
    reason: str


def step_number(name: str) -> int | None:
    """The step a folder name stands for: a plain decimal number as Orbax writes it.

    `"7"` is step 7; `"007"`, `"+7"`, non-ASCII digits and `"7.orbax-checkpoint-tmp-1"`
    are not step names.
    """
    if name.isascii() and name.isdigit() and name == str(int(name)):
        return int(name)
    return None


def looks_like_step(name: str) -> bool:
    """True for names made of ASCII digits only (step-like, whether or not canonical)."""
    return name.isascii() and name.isdigit()


def aside_name(step: int) -> str:
    """The folder an overwritten `step` waits in until the new one has committed."""
    return f"{step}{REPLACED}"


def aside_step(name: str) -> int | None:
    """The step of an aside folder's name (`12.roxxel-replaced` -> 12), else None."""
    if not name.endswith(REPLACED):
        return None
    return step_number(name[: -len(REPLACED)])


def pending_step(name: str) -> int | Literal[False] | None:
    """For `<step>.orbax-checkpoint-tmp…` the step (None when unreadable); False otherwise."""
    if TMP_MARKER not in name:
        return False
    head = name.split(TMP_MARKER, 1)[0]
    return int(head) if looks_like_step(head) else None


def item_handlers(raw: bytes | None) -> dict[str, str] | str | None:
    """The `item_handlers` entry of a `_CHECKPOINT_METADATA` file, or None when unreadable.

    A CheckpointManager step maps item names to handler class names; a single checkpoint
    (`StandardCheckpointer().save(path, ...)`) names one handler.
    """
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    handlers = value.get("item_handlers")
    if isinstance(handlers, str):
        return handlers
    if isinstance(handlers, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in handlers.items()
    ):
        return dict(handlers)
    return None


_PYTREE_HANDLERS = ("StandardCheckpointHandler", "PyTreeCheckpointHandler")


def _is_pytree_handler(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _PYTREE_HANDLERS


def classify_step(
    name: str, entries: Collection[str], metadata: bytes | None
) -> StepFolder | Ignored:
    """Classify a folder named like a step, from its entry names and `_CHECKPOINT_METADATA`.

    Args:
        name: the folder's name in the checkpoint directory.
        entries: the names inside the folder.
        metadata: the bytes of its `_CHECKPOINT_METADATA`, or None when absent or unreadable.

    A Roxxel step has Roxxel's item (its `roxxel/` folder, named in the metadata's item
    handlers). A step whose metadata is damaged but whose `roxxel/` folder is there is still
    Roxxel's: it must be reported as damaged, not ignored. A step written by Orbax alone has
    exactly one PyTree item besides `metrics` (the page's sketch saves `default`).
    """
    step = step_number(name)
    if step is None:
        return Ignored(name, "not a step name Roxxel writes (steps are plain numbers: 7, not 007)")
    handlers = item_handlers(metadata)
    if META_ITEM in entries or (isinstance(handlers, dict) and META_ITEM in handlers):
        return StepFolder(step, name, "roxxel")
    if isinstance(handlers, dict):
        trees = [
            item
            for item, handler in handlers.items()
            if item != METRICS_ITEM and _is_pytree_handler(handler)
        ]
        others = [item for item in handlers if item not in (METRICS_ITEM, *trees)]
        if len(trees) == 1 and not others and trees[0] in entries:
            return StepFolder(step, name, "orbax", trees[0])
        if handlers:
            return Ignored(
                name,
                f"an Orbax step with items {sorted(handlers)}, not one PyTree Roxxel can read",
            )
    if metadata is None and DEFAULT_ITEM in entries:
        return Ignored(name, f"an Orbax step without its {CHECKPOINT_METADATA}")
    shown = sorted(entries)[:4]
    return Ignored(name, f"not a checkpoint (it holds {shown or 'nothing'})")


def is_single_checkpoint(entries: Collection[str], metadata: bytes | None) -> bool:
    """True for a folder that is one `StandardCheckpointer`/`PyTreeCheckpointer` checkpoint."""
    handlers = item_handlers(metadata)
    if isinstance(handlers, str):
        return _is_pytree_handler(handlers) and PYTREE_METADATA in entries
    return metadata is None and PYTREE_METADATA in entries and "manifest.ocdbt" in entries
