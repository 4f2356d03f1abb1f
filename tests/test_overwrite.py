"""`save(step, overwrite=True)` keeps the old step until the new one has committed.

Roxxel 0.1.0 deleted the old step first, so an overwrite that failed (a full disk) or was cut
short (a crash) lost both versions. Now the old step is renamed aside
(`<step>.roxxel-replaced`), deleted once the new one has committed, and renamed back by the
next writer if the new one never did. The tests below kill a process overwriting a step over
and over at random moments (real SIGKILL) and fill a real small filesystem during an
overwrite; either way exactly one of the two versions is there and restores bit for bit.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import pytest

from conftest import assert_same_state, state_arrays
from reliability import Zygote, stamp, stamped_step, tiny, tmpfs
from roxxel._orbax import REPLACED
from roxxel.checkpoint import BackgroundWriteError, Checkpointer, verify

TRIALS = 24
STEP = 2  # the step overwritten again and again; step 1 is never touched


@pytest.mark.slow
def test_sigkill_during_overwrites_always_leaves_one_intact_version(tmp_path: Path) -> None:
    rng = random.Random(4321)
    directory = tmp_path / "ck"
    model, optimizer = tiny(256)
    with Checkpointer(str(directory), model, optimizer) as ck:
        stamp(model, optimizer, 1)
        ck.save(1, {"loss": 1.0})
        stamp(model, optimizer, 0)  # version 0 of step 2
        ck.save(STEP, {"loss": 1.0})
    on_disk = 0  # the version of step 2 known to be committed
    # `tests/crash_writer.py`'s overwriter saves step 2 again and again, stamped first, first+1..
    zygote = Zygote(0, 1, tmp_path, {"CRASH_WRITER_SIZE": "256"})
    moments = {"old version only aside": 0, "aside and new committed": 0, "new being written": 0}
    restored_new = 0
    try:
        for trial in range(TRIALS):
            pid = zygote.fork(str(directory), trial * 500 + 1, command="overwrite")
            assert zygote.output.next(60) == "ready"
            time.sleep(rng.uniform(0.05, 1.2))
            zygote.kill_and_reap(pid)
            lines = zygote.output.seen[zygote.output.seen.index(f"pid {pid}") :]
            saving = [int(x.split()[1]) for x in lines if x.startswith("saving ")]
            committed = [int(x.split()[1]) for x in lines if x.startswith("committed ")]
            names = set(os.listdir(directory))
            aside = f"{STEP}{REPLACED}" in names
            moments["old version only aside"] += aside and str(STEP) not in names
            moments["aside and new committed"] += aside and str(STEP) in names
            moments["new being written"] += any(".orbax-checkpoint-tmp" in n for n in names)

            older = committed[-1] if committed else on_disk
            newer = saving[-1] if saving and saving[-1] not in committed else older
            # A reader first, before any writer settles the overwrite: step 2 is there whole
            # (from its aside while only that holds it), and the folder is left as it is.
            with Checkpointer(str(directory), model, optimizer, read_only=True) as reader:
                assert reader.all_steps() == [1, STEP], f"trial {trial}: {names}"
                assert reader.restore() == STEP
                seen = stamped_step(model, optimizer)
                assert seen in (older, newer), f"trial {trial}: reader saw {seen}"
            assert all(result.ok for result in verify(str(directory))), trial
            assert set(os.listdir(directory)) == names, f"trial {trial}: the reader changed it"
            ck = Checkpointer(str(directory), model, optimizer)
            try:
                left = sorted(n for n in os.listdir(directory) if "tmp" in n or REPLACED in n)
                assert left == [], f"trial {trial}: left behind: {left}"
                assert ck.all_steps() == [1, STEP], f"trial {trial}: {os.listdir(directory)}"
                assert ck.restore() == STEP
                version = stamped_step(model, optimizer)
                assert version == seen, f"trial {trial}: the writer restored {version}, not {seen}"
                restored_new += version == newer != older
                assert ck.restore(step=1) == 1 and stamped_step(model, optimizer) == 1
                assert all(result.ok for result in verify(str(directory))), trial
                on_disk = version
            finally:
                ck.close()
    finally:
        zygote.close()
    print(
        f"overwrite crash trials: {TRIALS}; on disk at the kill: {moments}; "
        f"the new version was restored {restored_new} times, the old one otherwise"
    )
    # The kills must land while the old version exists only under its aside name, the
    # moment at which 0.1.0 had already deleted it.
    assert moments["old version only aside"] >= TRIALS // 4, moments


def test_an_overwrite_that_fills_the_disk_keeps_the_old_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real 8 MiB tmpfs: step 2 (0.8 MB) is overwritten by a 12 MB state, which cannot fit.

    0.1.0 deleted step 2 first and then failed to write the new one: both were gone.
    """
    with tmpfs(tmp_path / "disk", "8m") as disk:
        directory = str(disk / "ck")
        model, optimizer = tiny(256)
        with Checkpointer(directory, model, optimizer) as ck:
            for step in (1, 2):
                stamp(model, optimizer, step)
                ck.save(step, {"loss": 1.0})
        saved = state_arrays(model, optimizer)

        big_model, big_optimizer = tiny(1024)  # 3 x 4 MiB of arrays
        stamp(big_model, big_optimizer, 9)
        caplog.set_level(logging.WARNING, logger="roxxel")
        with Checkpointer(directory, big_model, big_optimizer) as ck:
            with pytest.raises(BackgroundWriteError, match="step 2") as info:
                ck.save(2, {"loss": 0.5}, overwrite=True)
                ck.wait_until_finished()
            assert "No space left" in str(info.value) or "ENOSPC" in str(info.value)
            names = sorted(os.listdir(directory))
            assert not [n for n in names if "tmp" in n or REPLACED in n], names
            assert ck.all_steps() == [1, 2]
        assert any("restored step 2" in r.getMessage() for r in caplog.records)

        stamp(model, optimizer, 0)
        with Checkpointer(directory, model, optimizer) as ck:
            assert ck.restore() == 2 and stamped_step(model, optimizer) == 2
            assert_same_state(state_arrays(model, optimizer), saved)
            assert all(result.ok for result in verify(directory))
            stamp(model, optimizer, 5)  # an overwrite that fits goes through
            ck.save(2, {"loss": 0.4}, overwrite=True)
        assert sorted(os.listdir(directory)) == [".roxxel-writer.lock", "1", "2"]
        with Checkpointer(directory, model, optimizer, read_only=True) as ck:
            assert ck.restore() == 2 and stamped_step(model, optimizer) == 5


def test_settle_rules() -> None:
    """The pure rule that settles the asides a directory holds (no disk)."""
    from roxxel._overwrite import Settlement, aside_name, aside_step, settle

    assert aside_step(aside_name(12)) == 12
    assert aside_step("12") is None and aside_step("012.roxxel-replaced") is None
    # (step, aside complete): committed -> drop; not committed -> put back if whole, else stuck
    plan = settle([(3, True), (5, True), (7, False), (9, False), (11, True)], {3, 9}, live={11})
    assert plan == Settlement(drop=(3, 9), put_back=(5,), stuck=(7,))
    assert settle([], {1}, ()) == Settlement()
