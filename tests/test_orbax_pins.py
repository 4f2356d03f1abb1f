"""Every private Orbax name Roxxel touches, pinned: it exists, has the signature Roxxel calls or
overrides, and does what Roxxel relies on.

Roxxel overrides three private methods of `CheckpointManager` (`_finalize`,
`_finalize_checkpoint`, `_get_metrics`),
replaces three private functions of Orbax's TensorStore layer for `s3://` paths
(`_storage.install_s3_routing`), imports two private modules for that, and builds on a few
behaviours that Orbax documents nowhere (when the post-finalization callback runs, what
`_CHECKPOINT_METADATA` gains at the commit). None of the three replaced functions exists on
Orbax's main branch any more: an Orbax upgrade must fail here, in the tests, and not at a
user's first save. `test_no_private_orbax_name_is_used_without_a_pin` reads Roxxel's sources
so that a new private name cannot be added without a pin here.

If a test here fails after an upgrade, the Roxxel code named in its docstring needs the
upgrade's equivalent, not a relaxed test.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils

from conftest import REPO
from roxxel import _orbax, _storage

# Private Orbax names in Roxxel's sources -> the test below that pins each.
_S3 = "test_the_three_s3_routing_functions_behave_as_the_patch_expects"
PINNED = {
    "CheckpointManager._finalize": (
        "test_finalize_is_handed_the_steps_to_delete_and_moves_them_to_the_trash"
    ),
    "CheckpointManager._get_metrics": "test_get_metrics_is_the_one_reader_of_metrics_files",
    "CheckpointManager._finalize_checkpoint": (
        "test_finalize_checkpoint_runs_after_the_commit_and_before_deletions"
    ),
    "tensorstore_utils._normalize_path": _S3,
    "tensorstore_utils._use_gcs_driver": _S3,
    "gcs_utils.get_kvstore_for_gcs": _S3,
    "orbax.checkpoint._src.path": _S3,
    "orbax.checkpoint._src.serialization": _S3,
}


def _private_names(source: str) -> set[str]:
    """Private Orbax names a module of Roxxel uses: modules under `_src`, `_x` attributes of
    Orbax modules, and `_x` methods defined in subclasses of Orbax classes."""
    tree = ast.parse(source)
    orbax_modules: set[str] = set()
    private_modules: set[str] = set()  # imported from under `orbax.checkpoint._src`
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            orbax_modules |= {a.asname or a.name for a in node.names if a.name.startswith("orbax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("orbax"):
            module = node.module or ""
            names = {a.asname or a.name for a in node.names}
            orbax_modules |= names
            if any(part.startswith("_") for part in module.split(".")):
                found.add(module)
                private_modules |= names
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in orbax_modules
            and (node.attr.startswith("_") or node.value.id in private_modules)
        ):
            found.add(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b) for b in node.bases]
            orbax_bases = [b for b in bases if b.split(".")[0] in orbax_modules]
            for item in node.body:
                name = getattr(item, "name", "")
                if (
                    orbax_bases
                    and isinstance(item, ast.FunctionDef)
                    and name.startswith("_")
                    and not name.startswith("__")
                ):
                    found.add(f"{orbax_bases[0].split('.')[-1]}.{name}")
    return found


def test_no_private_orbax_name_is_used_without_a_pin() -> None:
    used: set[str] = set()
    for module in sorted((REPO / "src" / "roxxel").glob("*.py")):
        used |= _private_names(module.read_text())
    assert used == set(PINNED), (
        f"private Orbax names used but not pinned: {sorted(used - set(PINNED))}; "
        f"pinned but no longer used: {sorted(set(PINNED) - used)}"
    )
    tests = {name for name, value in globals().items() if name.startswith("test_")}
    assert set(PINNED.values()) <= tests


def _params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _json_manager(directory: Path, cls: type[Any] = ocp.CheckpointManager, **options: Any) -> Any:
    return cls(
        directory,
        options=ocp.CheckpointManagerOptions(**options),
        item_handlers={"meta": ocp.JsonCheckpointHandler()},
    )


def _save(manager: Any, step: int, **kwargs: Any) -> None:
    manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave({"step": step})), **kwargs)


class _KeepNewest:
    """A preservation policy as Roxxel's `_RetentionPolicy` is one: duck-typed."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[int, Any]]] = []

    def should_preserve(self, checkpoints: Any, *, context: Any) -> list[bool]:
        self.seen.append([(c.step, c.metrics) for c in checkpoints])
        newest = max(c.step for c in checkpoints)
        return [c.step == newest for c in checkpoints]


def test_finalize_is_handed_the_steps_to_delete_and_moves_them_to_the_trash(
    tmp_path: Path,
) -> None:
    """`_orbax._Manager._finalize` calls Orbax's, then empties `TRASH` when it was handed
    steps to remove: Orbax's must take `(step, steps_to_remove)`, run on a thread of Orbax's
    own, and have renamed those steps into `todelete_subdir` by the time it returns. Also pins
    the preservation-policy protocol Roxxel's retention uses (`should_preserve(checkpoints, *,
    context)`, items with `.step` and `.metrics`)."""
    assert _params(ocp.CheckpointManager._finalize) == ["self", "step", "steps_to_remove"]
    calls: list[tuple[int, list[int], list[str], str]] = []

    class Recording(ocp.CheckpointManager):  # type: ignore[misc]
        def _finalize(self, step: int, steps_to_remove: list[int]) -> None:
            super()._finalize(step, steps_to_remove)
            trash = tmp_path / "ck" / "trash"
            inside = sorted(os.listdir(trash)) if trash.is_dir() else []
            calls.append((step, list(steps_to_remove), inside, threading.current_thread().name))

    policy = _KeepNewest()
    directory = tmp_path / "ck"
    manager = _json_manager(
        directory,
        Recording,
        preservation_policy=policy,
        best_fn=lambda m: m["loss"],
        todelete_subdir="trash",
    )
    with manager:
        for step in (1, 2):
            _save(manager, step, metrics={"loss": float(step)})
            manager.wait_until_finished()
    assert [c[:3] for c in calls] == [(1, [], []), (2, [1], ["1"])]
    assert all(c[3] != threading.main_thread().name for c in calls)
    assert sorted(n for n in os.listdir(directory) if n.isdigit()) == ["2"]
    assert [(1, {"loss": 1.0}), (2, {"loss": 2.0})] in policy.seen


def test_get_metrics_is_the_one_reader_of_metrics_files(tmp_path: Path) -> None:
    """`_orbax._Manager._get_metrics` turns a damaged metrics file into "no metrics": Orbax
    must read every step's metrics through `_get_metrics(step)` (when a directory is opened
    and from `metrics()`), and its own lets a parse error escape (why the override exists)."""
    assert _params(ocp.CheckpointManager._get_metrics) == ["self", "step"]
    directory = tmp_path / "ck"
    with _json_manager(directory, best_fn=lambda m: m["loss"]) as manager:
        for step in (1, 2):
            _save(manager, step, metrics={"loss": 0.5})
        manager.wait_until_finished()
    (directory / "2" / "metrics" / "metrics").write_text("{not json")

    with pytest.raises(ValueError):
        _json_manager(directory, best_fn=lambda m: m["loss"])

    asked: list[int] = []

    class Tolerant(ocp.CheckpointManager):  # type: ignore[misc]
        def _get_metrics(self, step: int) -> Any:
            asked.append(step)
            try:
                return super()._get_metrics(step)
            except ValueError:
                return None

    with _json_manager(directory, Tolerant, best_fn=lambda m: m["loss"]) as manager:
        assert sorted(set(asked)) == [1, 2]  # read on open
        asked.clear()
        assert manager.metrics(1) == {"loss": 0.5} and manager.metrics(2) is None
        assert asked == [1, 2]
    # Roxxel's override, on the same directory.
    with _json_manager(directory, _orbax._Manager, best_fn=lambda m: m["loss"]) as manager:
        assert manager.metrics(1) == {"loss": 0.5} and manager.metrics(2) is None


def _original(module: Any, name: str) -> Any:
    """Orbax's own function, whether or not `install_s3_routing` has replaced it already."""
    return _storage.ORIGINALS.get(name, getattr(module, name))


def test_the_three_s3_routing_functions_behave_as_the_patch_expects() -> None:
    """`_storage.install_s3_routing` replaces `tensorstore_utils._normalize_path`,
    `tensorstore_utils._use_gcs_driver` and `gcs_utils.get_kvstore_for_gcs`, looked up as module
    globals by `build_kvstore_tspec`, which then builds `s3` kvstore specs for `s3://`."""
    normalize = _original(tensorstore_utils, "_normalize_path")
    use_gcs = _original(tensorstore_utils, "_use_gcs_driver")
    kvstore = _original(gcs_utils, "get_kvstore_for_gcs")
    assert _params(normalize) == ["path"]
    assert _params(use_gcs) == ["directory"]
    assert _params(kvstore) == ["ckpt_path"]
    # What the patch corrects: "s3://" collapses to "s3:/", only gs:// goes to a remote driver.
    assert normalize("s3://bucket/run/") == "s3:/bucket/run"
    assert normalize("gs://bucket/run/") == "gs://bucket/run"
    assert (use_gcs("s3://bucket/run"), use_gcs("gs://bucket/run")) == (False, True)
    assert kvstore("gs://bucket/run/x") == {"driver": "gcs", "bucket": "bucket", "path": "run/x"}
    # Orbax reaches them through the module globals that the patch replaces.
    assert tensorstore_utils.gcs_utils is gcs_utils
    for name in ("_build_ocdbt_kvstore_tspec", "_build_non_ocdbt_kvstore_tspec"):
        code = getattr(tensorstore_utils, name).__code__
        assert {"_normalize_path", "_use_gcs_driver", "gcs_utils"} <= set(code.co_names), name

    _storage.install_s3_routing()
    path = "s3://bucket/run/1/state"
    ocdbt = tensorstore_utils.build_kvstore_tspec(path, use_ocdbt=True)
    plain = tensorstore_utils.build_kvstore_tspec(path, "w", use_ocdbt=False)
    assert ocdbt["driver"] == "ocdbt"
    base = ocdbt["base"]
    assert (base["driver"], base["bucket"], base["path"]) == ("s3", "bucket", "run/1/state")
    assert (plain["driver"], plain["bucket"], plain["path"]) == ("s3", "bucket", "run/1/state/w")
    # gs:// and local paths are untouched by the patch.
    assert tensorstore_utils.build_kvstore_tspec("gs://bucket/run", "w", use_ocdbt=False) == {
        "driver": "gcs",
        "bucket": "bucket",
        "path": "run/w",
    }
    local = tensorstore_utils.build_kvstore_tspec("/tmp/run", "w", use_ocdbt=False)
    assert local["driver"] == "file"


def test_post_finalization_callback_runs_in_the_unfinished_folder_before_the_commit(
    tmp_path: Path,
) -> None:
    """`Store._record_checksums` (Orbax's `post_finalization_callback`) finds the step in its
    `<step>.orbax-checkpoint-tmp` folder with every file written, and `_integrity` expects the
    commit to add only `commit_timestamp_nsecs` to `_CHECKPOINT_METADATA` afterwards."""
    directory = tmp_path / "ck"
    seen: list[tuple[list[str], dict[str, Any]]] = []

    def callback() -> None:
        names = sorted(os.listdir(directory))
        unfinished = [n for n in names if n.startswith("1" + _orbax._TMP_MARKER)]
        metadata = json.loads((directory / unfinished[0] / "_CHECKPOINT_METADATA").read_text())
        seen.append((names, metadata))

    with _json_manager(
        directory,
        async_options=ocp.AsyncOptions(post_finalization_callback=callback),
    ) as manager:
        assert manager.is_saving_in_progress() is False
        _save(manager, 1)
        assert manager.is_saving_in_progress()  # `Store.is_saving` relies on it until commit
        manager.wait_until_finished()
        assert manager.is_saving_in_progress() is False
    ((names, before),) = seen
    assert "1" not in names and any(n.startswith("1.orbax-checkpoint-tmp") for n in names)
    after = json.loads((directory / "1" / "_CHECKPOINT_METADATA").read_text())
    assert isinstance(after["commit_timestamp_nsecs"], int)
    assert before.get("commit_timestamp_nsecs") != after["commit_timestamp_nsecs"]

    def without_commit_time(metadata: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in metadata.items() if k != "commit_timestamp_nsecs"}

    assert without_commit_time(after) == without_commit_time(before)


def test_finalize_checkpoint_runs_after_the_commit_and_before_deletions(tmp_path: Path) -> None:
    """Why `_Manager._finalize_checkpoint` reports the commit (telemetry) and why a temporary
    step is never deleted before its replacement commits: Orbax's finalize thread reaches
    `_finalize_checkpoint` once the step's folder is renamed into place, with the steps that
    retention let go still on disk, and deletes them after it."""
    assert _params(ocp.CheckpointManager._finalize_checkpoint) == ["self", "step"]
    seen: list[tuple[int, bool, list[str]]] = []

    class Manager(ocp.CheckpointManager):  # type: ignore[misc]
        def _finalize_checkpoint(self, step: int) -> None:
            super()._finalize_checkpoint(step)
            names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
            seen.append((step, (tmp_path / str(step)).is_dir(), names))

    options = ocp.CheckpointManagerOptions(max_to_keep=1)
    with Manager(tmp_path, options=options) as manager:
        for step in (1, 2):
            manager.save(step, args=ocp.args.StandardSave({"w": np.full((4,), float(step))}))
        manager.wait_until_finished()
        assert list(manager.all_steps()) == [2]
    assert seen == [(1, True, ["1"]), (2, True, ["1", "2"])]
