"""Save policies: the pure rules first (no disk, times passed in), then a Checkpointer
saving real steps under them, temporary steps included."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import make
from reliability import stamp, stamped_step, tiny, tmpfs
from roxxel import _cli
from roxxel._policy import Decision, LastSave, SavePolicy, check, decide, restored, saved
from roxxel.checkpoint import (
    BackgroundWriteError,
    Checkpointer,
    CheckpointerClosedError,
    InvalidArgumentError,
    StepExistsError,
    StepOrderError,
)

SKIP, PERMANENT, TEMPORARY = Decision.SKIP, Decision.PERMANENT, Decision.TEMPORARY


# ------------------------------------------------------------------------ pure rules
def test_without_a_policy_every_call_saves() -> None:
    assert not SavePolicy().active
    last = saved(LastSave(), 5, 0.0, temporary=False)
    assert decide(SavePolicy(), last, 5, 0.0) is PERMANENT  # even the same step (the
    assert decide(SavePolicy(), last, 6, 0.0) is PERMANENT  # Checkpointer refuses it)


def test_the_first_save_is_always_due() -> None:
    for policy in (
        SavePolicy(save_every=100),
        SavePolicy(save_interval_s=60),
        SavePolicy(temporary_interval_s=60),
    ):
        assert decide(policy, LastSave(), 7, 1000.0) is PERMANENT


def test_save_every_saves_multiples_and_never_the_same_step_twice() -> None:
    policy = SavePolicy(save_every=100)
    last = saved(LastSave(), 0, 0.0, temporary=False)
    assert [s for s in range(1, 301) if decide(policy, last, s, 0.0) is not SKIP] == [100, 200, 300]
    last = saved(last, 100, 1.0, temporary=False)
    assert decide(policy, last, 100, 2.0) is SKIP  # nothing new in it
    assert decide(policy, last, 200, 2.0) is PERMANENT


def test_after_a_restore_the_restored_step_is_the_last_saved_one() -> None:
    policy = SavePolicy(save_every=100, save_interval_s=60)
    last = restored(900, now=50.0)
    assert decide(policy, last, 900, 51.0) is SKIP  # the page's loop saves it again: skipped
    assert decide(policy, last, 950, 100.0) is SKIP  # the interval counts from the restore
    assert decide(policy, last, 951, 110.0) is PERMANENT
    assert decide(policy, last, 1000, 51.0) is PERMANENT


def test_a_step_going_backwards_is_judged_by_the_same_rules() -> None:
    policy = SavePolicy(save_every=100, save_interval_s=60)
    # restore(step=500) in a run that had saved 900: the clock follows the restore
    last = restored(500, now=0.0)
    assert [s for s in range(501, 701) if decide(policy, last, s, 1.0) is not SKIP] == [600, 700]
    # a lower step without a restore is not skipped in silence once due (the Checkpointer
    # then raises StepOrderError unless overwrite=True)
    last = saved(LastSave(), 900, 0.0, temporary=False)
    assert decide(policy, last, 450, 1.0) is SKIP
    assert decide(policy, last, 450, 61.0) is PERMANENT
    assert decide(policy, last, 400, 1.0) is PERMANENT


def test_the_interval_with_a_clock() -> None:
    policy = SavePolicy(save_interval_s=10)
    last = saved(LastSave(), 1, 100.0, temporary=False)
    assert decide(policy, last, 2, 109.99) is SKIP
    assert decide(policy, last, 2, 110.0) is PERMANENT
    last = saved(last, 2, 110.0, temporary=False)
    assert decide(policy, last, 3, 119.0) is SKIP
    assert decide(policy, last, 3, 125.0) is PERMANENT


def test_temporary_saves_between_permanent_ones() -> None:
    policy = SavePolicy(save_every=100, temporary_interval_s=5)
    last = saved(LastSave(), 0, 0.0, temporary=False)
    assert decide(policy, last, 3, 4.9) is SKIP
    assert decide(policy, last, 4, 5.0) is TEMPORARY
    last = saved(last, 4, 5.0, temporary=True)
    assert decide(policy, last, 5, 9.9) is SKIP  # counts from the temporary save
    assert decide(policy, last, 6, 10.0) is TEMPORARY
    assert decide(policy, last, 100, 6.0) is PERMANENT  # a permanent rule wins


def test_temporary_saves_do_not_reset_the_permanent_interval() -> None:
    policy = SavePolicy(save_interval_s=10, temporary_interval_s=3)
    last = saved(LastSave(), 0, 0.0, temporary=False)
    kinds = []
    for step, now in enumerate((3.0, 6.0, 9.0, 10.0, 12.0, 13.0), start=1):
        kind = decide(policy, last, step, now)
        kinds.append(kind)
        if kind is not SKIP:
            last = saved(last, step, now, temporary=kind is TEMPORARY)
    assert kinds == [TEMPORARY, TEMPORARY, TEMPORARY, PERMANENT, SKIP, TEMPORARY]
    # an explicit temporary first save: the permanent interval counts from it
    first = saved(LastSave(), 0, 0.0, temporary=True)
    assert first.permanent_time is None
    assert decide(SavePolicy(save_interval_s=10), first, 1, 10.0) is PERMANENT


def test_a_temporary_interval_that_could_never_fire_is_refused() -> None:
    check(SavePolicy(save_interval_s=60, temporary_interval_s=10))
    with pytest.raises(InvalidArgumentError, match="temporary_interval_s=60 is not shorter"):
        check(SavePolicy(save_interval_s=60, temporary_interval_s=60))


@given(st.integers(1, 50), st.integers(0, 500), st.integers(1, 400))
def test_a_loop_that_calls_every_step_saves_exactly_the_multiples(
    every: int, resumed: int, length: int
) -> None:
    policy = SavePolicy(save_every=every)
    last = restored(resumed, now=0.0)
    saves = []
    for step in range(resumed, resumed + length):
        if decide(policy, last, step, 0.0) is not SKIP:
            saves.append(step)
            last = saved(last, step, 0.0, temporary=False)
    assert saves == [s for s in range(resumed + 1, resumed + length) if s % every == 0]


# ------------------------------------------------------------------- on real folders
def _steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _meta(directory: Path, step: int) -> dict[str, object]:
    return json.loads((directory / str(step) / "roxxel" / "metadata").read_text())


def test_save_every_on_disk_and_should_save(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=None, save_every=10) as ck:
        started = [step for step in range(25) if ck.save(step, {"loss": 1.0})]
        assert started == [0, 10, 20]
        assert ck.should_save(30) and not ck.should_save(21) and not ck.should_save(20)
        ck.wait_until_finished()
        assert ck.all_steps() == [0, 10, 20]
    assert _steps(ckdir) == [0, 10, 20]

    # A resumed run: the restored step is the last saved one.
    model, optimizer = make(seed=1)
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=None, save_every=10) as ck:
        assert ck.restore() == 20
        assert [step for step in range(20, 35) if ck.save(step, {"loss": 1.0})] == [30]
        # Back to an older step: the clock follows it; a due step that exists is refused.
        assert ck.restore(step=10) == 10
        assert not ck.save(15, {"loss": 1.0})
        with pytest.raises(StepExistsError):
            ck.save(20, {"loss": 1.0})
        assert ck.save(20, {"loss": 1.0}, overwrite=True)
        ck.wait_until_finished()
        assert ck.all_steps() == [0, 10, 20, 30]


def test_should_save_answers_what_save_does_without_a_policy(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        assert ck.should_save(3) and ck.save(3, {"loss": 1.0})
    model, optimizer = make(seed=1)
    ck = Checkpointer(str(ckdir), model, optimizer)
    assert ck.restore() == 3
    assert not ck.should_save(3) and not ck.save(3, {"loss": 1.0})  # the page's resumed loop
    assert ck.should_save(4)
    ck.close()
    with pytest.raises(CheckpointerClosedError):
        ck.should_save(5)


def test_skipped_calls_still_check_their_arguments(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, save_every=10) as ck:
        assert ck.save(0, {"loss": 1.0})
        with pytest.raises(InvalidArgumentError, match="loss"):
            ck.save(1, {"accuracy": 1.0})  # not due, but the missing metric is reported now
        with pytest.raises(InvalidArgumentError, match="force"):
            ck.save(1, {"loss": 1.0}, force="yes")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="temporary"):
            ck.save(1, {"loss": 1.0}, temporary=1)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            ck.should_save(-1)


def test_force_and_final_save_are_always_due(ckdir: Path) -> None:
    model, optimizer = make()
    ck = Checkpointer(str(ckdir), model, optimizer, max_to_keep=None, save_every=1000)
    assert ck.save(0, {"loss": 1.0})
    assert not ck.save(5, {"loss": 1.0})
    assert ck.save(5, {"loss": 1.0}, force=True)
    assert ck.final_save(7, {"loss": 1.0}) == 7
    assert _steps(ckdir) == [0, 5, 7]
    assert "temporary" not in _meta(ckdir, 7)


def test_the_interval_on_a_real_clock(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(
        str(ckdir), model, optimizer, max_to_keep=None, best_metric=None, save_interval_s=0.5
    ) as ck:
        assert ck.save(1)  # the first save
        assert not ck.save(2)  # well within 0.5 s
        time.sleep(0.6)
        assert ck.should_save(3) and ck.save(3)
        assert not ck.save(4)
        ck.wait_until_finished()
        assert ck.all_steps() == [1, 3]


def test_temporary_steps_on_disk(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=2) as ck:
        ck.save(1, {"loss": 3.0})
        ck.save(2, {"loss": 2.0})
        ck.save(3, {"loss": 0.1}, temporary=True)
        ck.wait_until_finished()
        # Not counted against max_to_keep, never best, recorded in the step's own metadata.
        assert ck.all_steps() == [1, 2, 3]
        assert ck.best_step() == 2
        assert _meta(ckdir, 3)["temporary"] is True and "temporary" not in _meta(ckdir, 2)
        assert ck.last_save is not None and ck.last_save.temporary

        # A newer temporary step replaces it once committed.
        ck.save(4, {"loss": 0.1}, temporary=True)
        ck.wait_until_finished()
        assert ck.all_steps() == [1, 2, 4]

    # After a restart the newest (temporary) step resumes, and is replaced by the next save.
    model, optimizer = make(seed=1)
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=2) as ck:
        assert ck.restore() == 4
        assert ck.best_step() == 2
        ck.save(5, {"loss": 1.0})
        ck.wait_until_finished()
        assert ck.all_steps() == [2, 5]
    assert _steps(ckdir) == [2, 5]


def test_temporary_interval_saves_temporary_steps(
    ckdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, optimizer = make()
    with Checkpointer(
        str(ckdir),
        model,
        optimizer,
        max_to_keep=None,
        best_metric=None,
        save_every=1000,
        temporary_interval_s=0.3,
    ) as ck:
        assert ck.save(0)  # first: permanent
        assert not ck.save(1)
        time.sleep(0.35)
        assert ck.save(2)  # due only by the temporary interval
        assert not ck.save(3)
        ck.wait_until_finished()
        assert ck.last_save is not None and ck.last_save.step == 2 and ck.last_save.temporary
        assert ck.all_steps() == [0, 2]

        assert _cli.main(["ls", str(ckdir)]) == 0
        lines = capsys.readouterr().out.splitlines()[2:-1]  # between header and summary
        rows = {line.split()[0]: line.split() for line in lines}
        assert rows["2"][1:3] == ["committed", "latest,temporary"]
        assert rows["0"][1:3] == ["committed", "-"]
        assert _cli.main(["ls", "--json", str(ckdir)]) == 0
        records = json.loads(capsys.readouterr().out)["checkpoints"]
        assert [(r["step"], r["temporary"]) for r in records] == [(0, False), (2, True)]

        time.sleep(0.35)
        assert ck.save(4)  # temporary again: replaces step 2 once committed
        assert ck.save(1000)  # permanent: replaces step 4
        ck.wait_until_finished()
        assert ck.all_steps() == [0, 1000]
        kinds = [(stats.step, stats.temporary) for stats in ck.save_history]
        assert kinds == [(0, False), (2, True), (4, True), (1000, False)]


def test_a_lower_step_that_is_due_is_refused_not_skipped(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, save_every=10) as ck:
        assert ck.save(50, {"loss": 1.0})
        with pytest.raises(StepOrderError):
            ck.save(40, {"loss": 1.0})


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@needs_root
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_temporary_step_survives_a_newer_save_that_failed(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        directory = disk / "ck"
        model, optimizer = tiny(512)  # about 3.1 MB a step
        ck = Checkpointer(str(directory), model, optimizer, max_to_keep=1, best_metric=None)
        stamp(model, optimizer, 1)
        ck.save(1, temporary=True)
        ck.wait_until_finished()

        filler = disk / "filler"
        stats = os.statvfs(disk)
        filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - (1 << 20)))
        stamp(model, optimizer, 2)
        with pytest.raises(BackgroundWriteError):
            ck.save(2)
            ck.wait_until_finished()
        assert ck.all_steps() == [1]  # the only checkpoint is not lost
        assert ck.last_save is not None and ck.last_save.step == 1  # no figures for step 2

        filler.unlink()
        stamp(model, optimizer, 3)
        ck.save(3)
        ck.wait_until_finished()
        assert ck.all_steps() == [3]  # replaced only now
        ck.restore()
        assert stamped_step(model, optimizer) == 3
        ck.close()


def test_policy_options_are_checked_at_the_call(ckdir: Path) -> None:
    model, optimizer = make()
    bad: list[tuple[dict[str, object], str]] = [
        ({"save_every": 0}, "save_every"),
        ({"save_every": 2.5}, "save_every"),
        ({"save_interval_s": -1}, "save_interval_s"),
        ({"temporary_interval_s": float("nan")}, "temporary_interval_s"),
        ({"save_interval_s": 10, "temporary_interval_s": 10}, "temporary_interval_s=10"),
        ({"on_commit": "log"}, "on_commit"),
    ]
    for kwargs, name in bad:
        with pytest.raises(InvalidArgumentError, match=name):
            Checkpointer(str(ckdir), model, optimizer, **kwargs)  # type: ignore[arg-type]
