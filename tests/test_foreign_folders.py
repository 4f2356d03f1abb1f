"""Folders Roxxel did not write are never counted, restored or deleted (issue: nothing lost).

A checkpoint folder that also holds a Hydra multirun job folder `0/`, a `7/` of plots, or a
copy named `007/` must not stop a fresh run, must survive retention, and must be named as
ignored by `roxxel ls`; the Checkpointer, the command and `verify` agree on all of it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import assert_same_state, make, state_arrays, train_steps
from roxxel import _cli
from roxxel.checkpoint import Checkpointer, StepExistsError, StepNotFoundError, verify


def plant_foreign_folders(directory: Path) -> dict[str, bytes]:
    """A Hydra job folder `0/` and a folder of plots `7/`; returns their files' bytes."""
    files = {
        "0/.hydra/config.yaml": b"lr: 0.01\n",
        "0/main.log": b"[INFO] job 0 started\n",
        "7/loss.png": b"\x89PNG\r\n\x1a\n" + bytes(range(64)),
    }
    for name, body in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(body)
    return files


def assert_untouched(directory: Path, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        assert (directory / name).read_bytes() == body, name


def test_a_fresh_run_starts_and_retention_leaves_other_folders_alone(tmp_path: Path) -> None:
    directory = tmp_path / "ck"
    directory.mkdir()
    files = plant_foreign_folders(directory)
    model, optimizer = make(0)
    with Checkpointer(str(directory), model, optimizer, max_to_keep=2, keep_best=0) as ck:
        assert ck.all_steps() == []
        assert ck.restore() == 0  # a fresh start, not CorruptCheckpointError
        for step in (10, 20, 30, 40, 50):
            train_steps(model, optimizer, 1)
            ck.save(step, {"loss": 1.0 / step})
        ck.wait_until_finished()
        assert ck.all_steps() == [40, 50]
        saved = state_arrays(model, optimizer)
    assert_untouched(directory, files)
    model2, optimizer2 = make(1)
    with Checkpointer(str(directory), model2, optimizer2) as ck:
        assert ck.restore() == 50
        with pytest.raises(StepNotFoundError, match="'7' is not a checkpoint"):
            ck.restore(step=7)
    assert_same_state(state_arrays(model2, optimizer2), saved)
    assert [r.step for r in verify(str(directory))] == [40, 50]


def test_a_save_into_a_foreign_folder_is_refused_and_the_folder_kept(tmp_path: Path) -> None:
    directory = tmp_path / "ck"
    directory.mkdir()
    files = plant_foreign_folders(directory)
    model, optimizer = make(0)
    with Checkpointer(str(directory), model, optimizer) as ck:
        with pytest.raises(StepExistsError, match=r"its folder 7/ holds a folder Roxxel did not"):
            ck.save(7, {"loss": 1.0})
        with pytest.raises(StepExistsError, match="never overwrites or deletes"):
            ck.save(0, {"loss": 1.0}, overwrite=True)
        ck.save(8, {"loss": 1.0})
    assert_untouched(directory, files)


def test_a_non_canonical_copy_of_a_step_is_ignored_by_every_reader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "ck"
    model, optimizer = make(0)
    with Checkpointer(str(directory), model, optimizer) as ck:
        ck.save(5, {"loss": 1.0})
    shutil.copytree(directory / "5", directory / "007")
    with Checkpointer(str(directory), model, optimizer, max_to_keep=1, keep_best=0) as ck:
        assert ck.all_steps() == [5]
        assert ck.restore() == 5
        ck.save(6, {"loss": 1.0})
        ck.save(9, {"loss": 1.0})
        ck.wait_until_finished()
        assert ck.all_steps() == [9]
    assert (directory / "007").is_dir()
    assert [r.step for r in verify(str(directory))] == [9]
    code = _cli.main(["ls", "--json", str(directory)])
    listed = json.loads(capsys.readouterr().out)
    assert code == 0
    states = {c["name"]: c["state"] for c in listed["checkpoints"]}
    assert states == {"9": "committed", "007": "ignored"}
    assert "plain numbers" in next(c["note"] for c in listed["checkpoints"] if c["name"] == "007")


def test_roxxel_ls_names_the_ignored_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "ck"
    directory.mkdir()
    plant_foreign_folders(directory)
    model, optimizer = make(0)
    with Checkpointer(str(directory), model, optimizer) as ck:
        ck.save(10, {"loss": 0.5})
    code = _cli.main(["ls", str(directory)])
    out = capsys.readouterr().out
    assert code == 0
    assert "1 committed, 2 ignored" in out
    assert "ignored 0/: not a checkpoint (it holds ['.hydra', 'main.log'])" in out
    assert "ignored 7/: not a checkpoint (it holds ['loss.png'])" in out


def test_a_folder_of_only_foreign_folders_is_no_checkpoint_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "ck"
    directory.mkdir()
    plant_foreign_folders(directory)
    code = _cli.main(["ls", str(directory)])
    err = capsys.readouterr().err
    assert code == _cli.EXIT_NO_CHECKPOINT
    assert "ignored 7/" in err and "are not checkpoints" in err


def test_a_symlinked_step_folder_is_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "ck"
    model, optimizer = make(0)
    with Checkpointer(str(directory), model, optimizer) as ck:
        ck.save(5, {"loss": 1.0})
    shutil.copytree(directory / "5", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", directory / "6")
    with Checkpointer(str(directory), model, optimizer, max_to_keep=1, keep_best=0) as ck:
        assert ck.all_steps() == [5]
        ck.save(7, {"loss": 1.0})
        ck.save(8, {"loss": 1.0})
    assert (tmp_path / "elsewhere" / "_CHECKPOINT_METADATA").exists()
