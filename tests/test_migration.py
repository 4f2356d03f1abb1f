"""Folders written without Roxxel restore into the current model, and saving goes on in
Roxxel's layout beside them (issue: resumes from other layouts).

The three layouts are written here by Orbax itself, as their users write them: the page's
sketch (a CheckpointManager with `max_to_keep`, `best_fn`, `best_mode`, saving
`StandardSave(nnx.state((model, optimizer)))` as its one item, with metrics), plain Orbax
(`StandardSave(nnx.state(model))`), and Flax's NNX guide (one
`StandardCheckpointer().save(dir / "state", nnx.state(model))`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import MLP, assert_same_state, make, state_arrays, train_steps
from roxxel import _cli
from roxxel.checkpoint import (
    Checkpointer,
    CorruptCheckpointError,
    StepExistsError,
    StepNotFoundError,
)


def write_page_sketch(directory: Path, steps: dict[int, float], seed: int = 0) -> dict[int, dict]:
    """What the page's own sketch leaves on disk; returns each step's state by Roxxel name."""
    model, optimizer = make(seed)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=3, create=True, best_fn=lambda m: m["loss"], best_mode="min"
    )
    saved = {}
    with ocp.CheckpointManager(os.fspath(directory), options=options) as mngr:
        for step, loss in steps.items():
            train_steps(model, optimizer, 1, seed=step)
            _, state = nnx.split((model, optimizer))
            mngr.save(step, args=ocp.args.StandardSave(state), metrics={"loss": loss})
            mngr.wait_until_finished()
            saved[step] = state_arrays(model, optimizer)
    return saved


def write_plain_orbax(directory: Path, step: int, seed: int = 0) -> dict:
    model, optimizer = make(seed)
    train_steps(model, optimizer, 2)
    with ocp.CheckpointManager(os.fspath(directory)) as mngr:
        mngr.save(step, args=ocp.args.StandardSave(nnx.state(model)))
        mngr.wait_until_finished()
    return state_arrays(model)


def write_nnx_guide(directory: Path, seed: int = 0) -> dict:
    model, optimizer = make(seed)
    train_steps(model, optimizer, 2)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.fspath(directory / "state"), nnx.state(model))
    return state_arrays(model)


def only_model(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("model/")}


def test_a_folder_of_the_page_sketch_resumes_model_and_optimizer(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    saved = write_page_sketch(directory, {100: 0.9, 200: 0.4, 300: 0.6})
    model, optimizer = make(7)
    with Checkpointer(str(directory), model, optimizer, max_to_keep=1) as ck:
        assert ck.all_steps() == [100, 200, 300]
        assert ck.restore() == 300
        report = ck.last_restore_report
        assert report is not None and report.exact and report.all_params_restored
        assert report.layout == "orbax: nnx.state((model, optimizer)) in 300/default"
        assert_same_state(state_arrays(model, optimizer), saved[300])
        assert ck.metrics(200) == {"loss": 0.4}
        # Best by the loss the sketch saved, across its steps.
        assert ck.best_step() == 200
        assert ck.restore(best=True) == 200
        assert_same_state(state_arrays(model, optimizer), saved[200])
        ck.restore()
        # Saving goes on in Roxxel's layout; retention never deletes the old steps.
        for step, loss in ((400, 0.3), (500, 0.2), (600, 0.25)):
            train_steps(model, optimizer, 1)
            ck.save(step, {"loss": loss})
        ck.wait_until_finished()
        after = state_arrays(model, optimizer)
        # Roxxel's own: the newest and the best; the sketch's three are all still there.
        assert ck.all_steps() == [100, 200, 300, 500, 600]
    assert sorted(os.listdir(directory / "300")) == sorted(os.listdir(directory / "100"))
    model2, optimizer2 = make(8)
    with Checkpointer(str(directory), model2, optimizer2) as ck:
        assert ck.restore() == 600
        assert ck.last_restore_report is not None
        assert ck.last_restore_report.layout == "roxxel"
    assert_same_state(state_arrays(model2, optimizer2), after)


def test_plain_orbax_model_only_restores_into_a_model_without_optimizer(tmp_path: Path) -> None:
    saved = write_plain_orbax(tmp_path / "ck", 7)
    model, _ = make(3)
    with Checkpointer(str(tmp_path / "ck"), model, None) as ck:
        assert ck.restore() == 7
        assert ck.last_restore_report is not None
        assert ck.last_restore_report.layout == "orbax: nnx.state(model) in 7/default"
    assert_same_state(state_arrays(model), saved)


def test_plain_orbax_model_only_into_model_and_optimizer_keeps_the_optimizer(
    tmp_path: Path,
) -> None:
    saved = write_plain_orbax(tmp_path / "ck", 7)
    model, optimizer = make(3)
    before = state_arrays(model, optimizer)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer) as ck:
        assert ck.restore() == 7
        report = ck.last_restore_report
    assert report is not None and report.all_params_restored
    # The optimizer was not saved: all of it is missing and keeps its current values.
    assert "optimizer/step" in report.missing
    assert all(path.startswith("optimizer/") for path in report.missing)
    now = state_arrays(model, optimizer)
    assert_same_state(only_model(now), saved)
    for path in report.missing:
        np.testing.assert_array_equal(now[path], before[path])


def test_the_nnx_guide_layout_restores_as_step_0(tmp_path: Path) -> None:
    saved = write_nnx_guide(tmp_path / "run")
    model, optimizer = make(4)
    with Checkpointer(str(tmp_path / "run"), model, optimizer) as ck:
        assert ck.all_steps() == [0]
        assert ck.restore() == 0
        report = ck.last_restore_report
        assert report is not None and report.layout == "orbax: nnx.state(model) in state"
        assert_same_state(only_model(state_arrays(model, optimizer)), saved)
        ck.save(10, {"loss": 1.0})
    assert sorted(os.listdir(tmp_path / "run")) == [".roxxel-writer.lock", "10", "state"]


def test_the_nnx_guide_folder_itself_opens_read_only(tmp_path: Path) -> None:
    saved = write_nnx_guide(tmp_path / "run")
    model, _ = make(4)
    with Checkpointer(str(tmp_path / "run" / "state"), model, None, read_only=True) as ck:
        assert ck.restore() == 0
    assert_same_state(state_arrays(model), saved)


def test_renames_and_casts_apply_to_migrated_steps(tmp_path: Path) -> None:
    class Renamed(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.enc = nnx.Linear(4, 8, rngs=rngs, param_dtype=jnp.bfloat16)
            self.head = nnx.Linear(8, 2, rngs=rngs)

    saved = write_page_sketch(tmp_path / "ck", {5: 1.0})[5]
    model = Renamed(nnx.Rngs(9))
    with Checkpointer(str(tmp_path / "ck"), model, None) as ck:
        plan = ck.plan_restore()
        assert plan is not None and plan.suggested_rename == {"enc": "encoder"}
        assert plan.params_restored == 2 and plan.params_total == 4
        assert ck.restore(rename={"enc": "encoder"}) == 5
        report = ck.last_restore_report
    assert report is not None
    assert report.renamed["model/enc/kernel"] == "model/encoder/kernel"
    assert report.cast["model/enc/kernel"] == ("float32", "bfloat16")
    np.testing.assert_array_equal(
        np.asarray(model.enc.kernel.get_value()),
        saved["model/encoder/kernel"].astype(jnp.bfloat16),
    )


def test_a_step_of_the_page_sketch_is_never_overwritten(tmp_path: Path) -> None:
    write_page_sketch(tmp_path / "ck", {5: 1.0})
    model, optimizer = make(0)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer) as ck:
        with pytest.raises(StepExistsError, match="Roxxel never overwrites or deletes"):
            ck.save(5, {"loss": 1.0}, overwrite=True)
    assert "default" in os.listdir(tmp_path / "ck" / "5")


def test_a_damaged_migrated_step_says_so_without_calling_it_roxxels(tmp_path: Path) -> None:
    write_page_sketch(tmp_path / "ck", {5: 1.0})
    (tmp_path / "ck" / "5" / "default" / "_METADATA").write_text("{not json")
    model, optimizer = make(0)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer) as ck:
        with pytest.raises(CorruptCheckpointError) as caught:
            ck.restore()
    message = str(caught.value)
    assert "written by Orbax without Roxxel" in message and "5/default" in message
    assert "was not written by Roxxel" not in message


def test_a_step_in_a_layout_roxxel_cannot_read_is_reported_not_called_damaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, optimizer = make(0)
    with ocp.CheckpointManager(os.fspath(tmp_path / "ck"), item_names=("params", "opt")) as m:
        m.save(
            3,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(nnx.state(model)),
                opt=ocp.args.StandardSave(nnx.state(optimizer, nnx.optimizer.OptState)),
            ),
        )
        m.wait_until_finished()
    with Checkpointer(str(tmp_path / "ck"), model, optimizer) as ck:
        with caplog.at_level(logging.WARNING, logger="roxxel"):
            assert ck.restore() == 0
        with pytest.raises(StepNotFoundError, match="not one PyTree Roxxel can read"):
            ck.restore(step=3)
    assert "nothing to restore" in caplog.text and "3/" in caplog.text


def test_roxxel_ls_shows_migrated_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_page_sketch(tmp_path / "ck", {100: 0.9, 200: 0.4})
    code = _cli.main(["ls", str(tmp_path / "ck")])
    out = capsys.readouterr().out
    assert code == 0
    assert "committed (orbax)" in out and "2 committed (2 written by Orbax" in out
    code = _cli.main(["show", str(tmp_path / "ck"), "--step", "100"])
    out = capsys.readouterr().out
    assert code == 0 and "model/encoder/kernel" in out and "optimizer/opt_state" in out


def test_mlp_is_the_model_of_these_tests() -> None:
    # The sketch writes conftest's MLP; a change there must not silently hollow these tests.
    assert {"encoder", "head"} <= set(vars(MLP(nnx.Rngs(0))))
