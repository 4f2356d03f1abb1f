"""Round trips through real checkpoints: exact state, chosen steps, views of what is on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import assert_same_state, make, state_arrays, train_steps
from roxxel.checkpoint import Checkpointer, NoCheckpointError


def test_empty_directory_restores_to_zero(ckdir: Path) -> None:
    model, optimizer = make()
    before = state_arrays(model, optimizer)
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        assert ck.restore() == 0
        assert ck.latest_step() is None and ck.best_step() is None and ck.all_steps() == []
        assert ck.last_restore_report is None
    assert_same_state(before, state_arrays(model, optimizer))


def test_round_trip_is_exact_and_captured_at_save_time(ckdir: Path) -> None:
    model, optimizer = make()
    train_steps(model, optimizer, 3)
    at_save = state_arrays(model, optimizer)
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        assert ck.save(3, {"loss": 0.5}) is True
        train_steps(model, optimizer, 2)  # keeps training while the save is written
    assert not np.array_equal(
        at_save["model/head/kernel"], state_arrays(model)["model/head/kernel"]
    )

    fresh_model, fresh_opt = make(seed=7)
    with Checkpointer(str(ckdir), fresh_model, fresh_opt) as ck:
        assert ck.restore() == 3
        report = ck.last_restore_report
    assert_same_state(at_save, state_arrays(fresh_model, fresh_opt))
    assert report is not None and report.exact and report.applied
    assert "optimizer/step" in report.restored
    assert int(fresh_opt.step.get_value()) == 3


def test_restore_given_step_and_best(ckdir: Path) -> None:
    model, optimizer = make()
    snapshots = {}
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=5) as ck:
        for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0)]:
            train_steps(model, optimizer, 1)
            snapshots[step] = state_arrays(model, optimizer)
            ck.save(step, {"loss": loss})
    model2, opt2 = make(seed=1)
    with Checkpointer(str(ckdir), model2, opt2, max_to_keep=5) as ck:
        assert ck.restore(step=1) == 1
        assert_same_state(snapshots[1], state_arrays(model2, opt2))
        assert ck.restore(best=True) == 2
        assert_same_state(snapshots[2], state_arrays(model2, opt2))
        assert ck.restore() == 3
        assert_same_state(snapshots[3], state_arrays(model2, opt2))


def test_best_without_finite_metric_is_a_clear_error(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        ck.save(0, {"loss": float("nan")})
        ck.wait_until_finished()
        try:
            ck.restore(best=True)
        except NoCheckpointError as exc:
            assert "no checkpoint" in str(exc) and "[0]" in str(exc)
        else:
            raise AssertionError("restore(best=True) should have raised")


def test_dry_run_reports_without_touching_the_model(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        ck.save(1, {"loss": 1.0})
    other, other_opt = make(seed=5)
    before = state_arrays(other, other_opt)
    with Checkpointer(str(ckdir), other, other_opt) as ck:
        report = ck.plan_restore()
    assert report is not None and report.step == 1 and not report.applied
    assert len(report.restored) == len(before)
    assert_same_state(before, state_arrays(other, other_opt))
