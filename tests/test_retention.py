"""Retention: pure policy tests (no disk), then the same rules end to end on real folders."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import make, train_steps
from roxxel._retention import Retention, best_step, ranked_best, steps_to_keep
from roxxel.checkpoint import Checkpointer

LOSSES = [5, 4, 3, 2, 1, 2, 3, 4, 5, 6]


def infos(losses: list[float]) -> list[tuple[int, dict[str, float]]]:
    return [(step, {"loss": loss}) for step, loss in enumerate(losses)]


def test_keeps_newest_and_best() -> None:
    assert steps_to_keep(infos(LOSSES), Retention(max_to_keep=3)) == {4, 7, 8, 9}


def test_keep_best_k_and_max_mode() -> None:
    assert steps_to_keep(infos(LOSSES), Retention(max_to_keep=1, keep_best=2)) == {3, 4, 9}
    acc = [(s, {"acc": v}) for s, v in enumerate([0.1, 0.9, 0.5, 0.2])]
    rule = Retention(max_to_keep=1, best_metric="acc", best_mode="max")
    assert steps_to_keep(acc, rule) == {1, 3}


def test_keep_every_and_keep_all() -> None:
    assert steps_to_keep(infos(LOSSES), Retention(max_to_keep=1, keep_every=4, keep_best=0)) == {
        0,
        4,
        8,
        9,
    }
    assert steps_to_keep(infos(LOSSES), Retention(max_to_keep=None)) == set(range(10))


def test_non_finite_metrics_are_never_best() -> None:
    losses = [0.5, math.nan, math.nan, -math.inf, math.inf, math.nan]
    assert ranked_best(infos(losses), Retention()) == [0]
    assert steps_to_keep(infos(losses), Retention(max_to_keep=2)) == {0, 4, 5}
    assert best_step(infos([math.nan, math.nan]), Retention()) is None


def test_ties_keep_the_earlier_step_and_missing_metrics_are_unranked() -> None:
    assert best_step(infos([1.0, 1.0, 2.0]), Retention()) == 0
    assert best_step([(0, None), (1, {"acc": 1.0}), (2, {"loss": 3.0})], Retention()) == 2


@given(
    st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 5),
    st.integers(0, 3),
)
def test_policy_invariants(losses: list[float | None], max_to_keep: int, keep_best: int) -> None:
    checkpoints = [(s, None if v is None else {"loss": v}) for s, v in enumerate(losses)]
    keep = steps_to_keep(checkpoints, Retention(max_to_keep=max_to_keep, keep_best=keep_best))
    steps = [s for s, _ in checkpoints]
    assert max(steps) in keep
    assert set(steps[-max_to_keep:]) <= keep
    finite = [(v, s) for s, v in enumerate(losses) if v is not None and math.isfinite(v)]
    if keep_best and finite:
        assert min(finite)[1] in keep
    assert len(keep) <= max_to_keep + keep_best


def test_end_to_end_newest_and_best_survive_a_restart(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=3) as ck:
        for step, loss in enumerate(LOSSES):
            train_steps(model, optimizer, 1)
            ck.save(step, {"loss": loss})
    assert sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit()) == [4, 7, 8, 9]

    fresh_model, fresh_opt = make(seed=1)
    with Checkpointer(str(ckdir), fresh_model, fresh_opt, max_to_keep=3) as ck:
        assert ck.restore() == 9
        assert ck.all_steps() == [4, 7, 8, 9]
        assert ck.best_step() == 4
        assert ck.metrics(4) == {"loss": 1.0}
        assert ck.restore(best=True) == 4
        # Saving on after the restart keeps applying the same rules to the old steps.
        ck.save(10, {"loss": 7.0})
        ck.wait_until_finished()
        assert ck.all_steps() == [4, 8, 9, 10]


def test_nan_step_never_evicts_the_finite_best(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=1) as ck:
        for step, loss in enumerate([0.5, math.nan, math.nan, math.inf, math.nan]):
            ck.save(step, {"loss": loss})
        ck.wait_until_finished()
        assert ck.all_steps() == [0, 4]
        assert ck.best_step() == 0
        assert math.isnan(ck.metrics(4)["loss"])  # type: ignore[index]


def test_best_metric_none_keeps_only_newest(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=2, best_metric=None) as ck:
        for step in range(5):
            ck.save(step)
        ck.wait_until_finished()
        assert ck.all_steps() == [3, 4]
        assert ck.best_step() is None


@pytest.mark.parametrize("keep_every", [2])
def test_keep_every_on_disk(ckdir: Path, keep_every: int) -> None:
    model, optimizer = make()
    with Checkpointer(
        str(ckdir), model, optimizer, max_to_keep=1, keep_best=0, keep_every=keep_every
    ) as ck:
        for step in range(6):
            ck.save(step, {"loss": 1.0})
        ck.wait_until_finished()
        assert ck.all_steps() == [0, 2, 4, 5]


# ------------------------------------------------------------------ temporary steps (pure)
def test_a_temporary_step_does_not_count_against_max_to_keep() -> None:
    checkpoints = [(s, None) for s in (100, 200, 250)]
    rule = Retention(max_to_keep=2, keep_best=0, best_metric=None)
    assert steps_to_keep(checkpoints, rule, temporary={250}) == {100, 200, 250}
    assert steps_to_keep(checkpoints, rule) == {200, 250}  # the same step, permanent


def test_a_temporary_step_goes_once_a_newer_step_exists() -> None:
    rule = Retention(max_to_keep=None, keep_best=0, best_metric=None)
    assert steps_to_keep([(1, None), (2, None), (3, None)], rule, temporary={2}) == {1, 3}
    # a newer temporary step replaces an older one too
    assert steps_to_keep([(1, None), (2, None), (3, None)], rule, temporary={2, 3}) == {1, 3}
    # while it is the newest, it stays
    assert steps_to_keep([(1, None), (2, None)], rule, temporary={2}) == {1, 2}


def test_a_temporary_step_is_never_best_nor_a_milestone() -> None:
    checkpoints = [(0, {"loss": 3.0}), (4, {"loss": 0.1}), (5, {"loss": 2.0})]
    assert best_step(checkpoints, Retention()) == 4
    assert best_step(checkpoints, Retention(), temporary={4}) == 5
    assert ranked_best(checkpoints, Retention(), temporary={4}) == [5, 0]
    rule = Retention(max_to_keep=1, keep_best=1, keep_every=2)
    assert steps_to_keep(checkpoints, rule) == {0, 4, 5}
    assert steps_to_keep(checkpoints, rule, temporary={4}) == {0, 5}
    # nothing ranked when the only finite metric is on a temporary step
    assert best_step([(7, {"loss": 1.0})], Retention(), temporary={7}) is None


@given(
    st.lists(st.tuples(st.floats(allow_nan=True), st.booleans()), min_size=1, max_size=30),
    st.integers(1, 5),
    st.integers(0, 3),
)
def test_temporary_invariants(
    saves: list[tuple[float, bool]], max_to_keep: int, keep_best: int
) -> None:
    checkpoints = [(s, {"loss": loss}) for s, (loss, _) in enumerate(saves)]
    temporary = {s for s, (_, is_temporary) in enumerate(saves) if is_temporary}
    rule = Retention(max_to_keep=max_to_keep, keep_best=keep_best)
    keep = steps_to_keep(checkpoints, rule, temporary=temporary)
    newest = len(saves) - 1
    assert newest in keep  # resuming always has a checkpoint
    assert keep & temporary <= {newest}  # only the newest step may be a temporary one
    permanent = [s for s in range(len(saves)) if s not in temporary]
    assert set(permanent[-max_to_keep:]) <= keep  # temporaries never push one out
    assert len(keep - {newest}) <= max_to_keep + keep_best
    best = best_step(checkpoints, rule, temporary=temporary)
    assert best is None or best not in temporary
