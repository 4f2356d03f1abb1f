"""Two tiers: local saves promoted to a remote tier (`_tiers`), with real files and servers.

The pure policy is tested without disk; promotion, per-tier retention, restore across tiers,
a damaged local step, a deleted local tier and a failing remote are tested with a second
local folder as the remote tier; promotion, a kill during a promotion, restore on a new
machine and an unreachable remote against the real S3 (SeaweedFS) and GCS
(fake-gcs-server) servers of `tests/servers.py`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import servers
from conftest import assert_same_state, make, state_arrays, train_steps
from roxxel import _format, _tiers
from roxxel._cli import main as roxxel_main
from roxxel._retention import Retention
from roxxel.checkpoint import (
    Checkpointer,
    InvalidArgumentError,
    PromotionError,
    StorageUnreachableError,
    verify,
)
from test_cloud import (  # noqa: F401  silent_endpoint is a fixture
    delete_object,
    fresh_url,
    object_keys,
    silent_endpoint,
    top_level,
)

# -------------------------------------------------------------------------- pure policy


def test_the_first_step_is_always_promoted_then_every_nth() -> None:
    policy = _tiers.PromotePolicy(every=3)
    assert _tiers.due(policy, _tiers.PromoteClock(1, None), 0.0)
    assert not _tiers.due(policy, _tiers.PromoteClock(1, 5.0), 100.0)
    assert not _tiers.due(policy, _tiers.PromoteClock(2, 5.0), 100.0)
    assert _tiers.due(policy, _tiers.PromoteClock(3, 5.0), 100.0)


def test_interval_promotes_the_first_step_after_it_elapsed() -> None:
    policy = _tiers.PromotePolicy(every=None, interval_s=60.0)
    assert not _tiers.due(policy, _tiers.PromoteClock(50, 0.0), 59.9)
    assert _tiers.due(policy, _tiers.PromoteClock(1, 0.0), 60.0)
    both = _tiers.PromotePolicy(every=10, interval_s=60.0)
    assert _tiers.due(both, _tiers.PromoteClock(10, 0.0), 1.0)
    assert _tiers.due(both, _tiers.PromoteClock(2, 0.0), 61.0)
    assert not _tiers.due(both, _tiers.PromoteClock(2, 0.0), 30.0)


def test_each_process_uploads_its_own_files_and_process_0_the_shared_ones() -> None:
    files = [
        "_CHECKPOINT_METADATA",
        "arrays/data.process_0.0",
        "arrays/data.process_0.1",
        "arrays/data.process_1.0",
        "arrays/data.process_10.0",
        "arrays/index.process_0.json",
        "arrays/index.process_1.json",
        "metrics/metrics",
        "roxxel/metadata",
        "roxxel_checksums.json",
    ]
    zero = _tiers.files_of_process(files, 0)
    one = _tiers.files_of_process(files, 1)
    assert one == ["arrays/data.process_1.0", "arrays/index.process_1.json"]
    assert "arrays/data.process_10.0" not in zero + one
    assert set(zero) == set(files) - set(one) - {"arrays/data.process_10.0"}
    assert _tiers.files_of_process(files, 10) == ["arrays/data.process_10.0"]


def test_a_step_counts_as_promoted_when_every_process_marked_it() -> None:
    entries = ["arrays", _tiers.marker_name(0), "metrics"]
    assert _tiers.all_promoted(entries, 1)
    assert not _tiers.all_promoted(entries, 2)
    assert _tiers.all_promoted([*entries, _tiers.marker_name(1)], 2)


def test_remote_retention_keeps_newest_and_best() -> None:
    retention = Retention(max_to_keep=1, keep_best=1)
    checkpoints = [(1, {"loss": 0.9}), (2, {"loss": 0.1}), (3, {"loss": 0.5}), (4, None)]
    assert _tiers.remote_to_delete(checkpoints, retention) == [1, 3]
    assert _tiers.stale_uploads([(2, "2"), (5, "5"), (None, "x")], newest=4) == ["2"]
    assert _tiers.stale_uploads([(2, "2")], newest=None) == []


def test_shard_checksums_are_computed_across_chunk_boundaries() -> None:
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8)
    spans = [(0, 100), (4096, 3000), (7096, 2904)]
    shards = [(o, n, _format.crc32c(data[o : o + n])) for o, n in spans]
    check = _tiers._ShardCheck(shards)
    view = memoryview(data.tobytes())
    for start in range(0, len(data), 777):  # chunks that cut through every shard
        check.feed(start, view[start : start + 777])
    assert check.problems("arrays/data.process_0.0") == []
    damaged = data.copy()
    damaged[5000] ^= 1
    check = _tiers._ShardCheck(shards)
    check.feed(0, memoryview(damaged.tobytes()))
    problems = check.problems("arrays/data.process_0.0")
    assert len(problems) == 1 and "offset 4096" in problems[0]


# ------------------------------------------------------------- a local folder as remote


def _train_and_save(ck: Checkpointer, model, optimizer, losses: dict[int, float]) -> None:  # type: ignore[no-untyped-def]
    for step, loss in losses.items():
        train_steps(model, optimizer, 1)
        ck.save(step, {"loss": loss})
        ck.wait_until_finished()


def _steps(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def test_promotion_and_retention_per_tier(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    model, optimizer = make(0)
    losses = {1: 0.9, 2: 0.2, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.5}
    with Checkpointer(
        str(remote), model, optimizer, local_path=str(local), max_to_keep=2, keep_best=0
    ) as ck:
        assert ck.remote_path == str(remote)
        assert ck.directory == str(local)
        for step, loss in losses.items():
            train_steps(model, optimizer, 1)
            ck.save(step, {"loss": loss})
            ck.wait_until_finished()
            assert ck.wait_until_promoted() == step
        # local: the two newest; remote (remote_max_to_keep=1, keep_best=0 applies there too)
        assert ck.all_steps() == [5, 6]
        assert ck.remote_steps() == [6]
        assert ck.last_promoted == 6
    with Checkpointer(
        str(remote), model, optimizer, local_path=str(local), max_to_keep=2, keep_best=1
    ) as ck:
        _train_and_save(ck, model, optimizer, {7: 0.4, 8: 0.1, 9: 0.3})
        ck.wait_until_promoted()
        assert ck.remote_steps() == [8, 9]  # newest and best remotely
        assert ck.all_steps() == [8, 9]
    assert _steps(remote) == [8, 9]
    assert not [p for p in remote.iterdir() if "orbax-checkpoint-tmp" in p.name]
    for step in (8, 9):  # a promoted step commits like a local one, with its marker too
        assert (remote / str(step) / "commit_success.txt").is_file()
        assert (remote / str(step) / "roxxel_checksums.json").is_file()


def test_promote_every_nth_and_the_last_step_at_close(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    model, optimizer = make(0)
    with Checkpointer(
        str(remote),
        model,
        optimizer,
        local_path=str(local),
        max_to_keep=None,
        promote_every=3,
        remote_max_to_keep=None,
    ) as ck:
        _train_and_save(ck, model, optimizer, {s: 1.0 / s for s in range(1, 9)})
        ck.wait_until_promoted()
        assert ck.remote_steps() == [1, 4, 7]
    # close() promoted the newest local step (8), not due by the policy
    assert _steps(remote) == [1, 4, 7, 8]
    assert _steps(local) == list(range(1, 9))


def test_restore_takes_the_newest_step_across_tiers(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    model, optimizer = make(0)
    with Checkpointer(str(remote), model, optimizer, local_path=str(local)) as ck:
        _train_and_save(ck, model, optimizer, {1: 0.5, 2: 0.4})
        ck.wait_until_promoted()
    saved = state_arrays(model, optimizer)

    # the local tier deleted (a new machine): the remote copy is fetched and restored
    shutil.rmtree(local)
    model2, optimizer2 = make(1)
    with Checkpointer(str(remote), model2, optimizer2, local_path=str(local)) as ck:
        assert ck.restore() == 2
        assert ck.all_steps() == [2]  # now on the local tier too
        assert_same_state(state_arrays(model2, optimizer2), saved)
        # a restored run goes on saving locally and promoting
        _train_and_save(ck, model2, optimizer2, {3: 0.3})
        assert ck.wait_until_promoted() == 3
    assert _steps(remote) == [3]

    # the local tier newer than the remote (a step not promoted yet): local wins
    model3, optimizer3 = make(2)
    with Checkpointer(
        str(remote), model3, optimizer3, local_path=str(local), promote_every=10
    ) as ck:
        assert ck.restore() == 3
        _train_and_save(ck, model3, optimizer3, {4: 0.2, 5: 0.1})  # 4 promoted (first), 5 not
        ck.wait_until_promoted()
        assert ck.remote_steps() == [4]
        newest = state_arrays(model3, optimizer3)
        train_steps(model3, optimizer3, 1)
        assert ck.restore() == 5
        assert_same_state(state_arrays(model3, optimizer3), newest)


def test_restore_best_ranks_the_steps_of_both_tiers(tmp_path: Path) -> None:
    """`restore(best=True)` fetches the best step from the remote tier when the local tier
    lacks it (a new machine, or local retention deleted it) and keeps a better local one."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    model, optimizer = make(0)
    states = {}
    with Checkpointer(
        str(remote),
        model,
        optimizer,
        local_path=str(local),
        max_to_keep=1,
        keep_best=0,
        remote_max_to_keep=None,
    ) as ck:
        for step, loss in {1: 0.9, 2: 0.1, 3: 0.5}.items():
            _train_and_save(ck, model, optimizer, {step: loss})
            states[step] = state_arrays(model, optimizer)
        ck.wait_until_promoted()
        assert ck.all_steps() == [3] and ck.remote_steps() == [1, 2, 3]

    # the local tier holds only step 3: the remote step 2 (loss 0.1) is the best of both
    model2, optimizer2 = make(1)
    with Checkpointer(str(remote), model2, optimizer2, local_path=str(local)) as ck:
        assert ck.restore(best=True) == 2
        assert_same_state(state_arrays(model2, optimizer2), states[2])
        assert 2 in ck.all_steps()  # copied to the local tier, checked on the way

    # a new machine (empty local tier): the same step
    shutil.rmtree(local)
    model3, optimizer3 = make(2)
    with Checkpointer(str(remote), model3, optimizer3, local_path=str(local)) as ck:
        assert ck.restore(best=True) == 2
        assert_same_state(state_arrays(model3, optimizer3), states[2])
        # a local step better than every remote one is kept as it is
        _train_and_save(ck, model3, optimizer3, {4: 0.01})
        ck.wait_until_finished()
        best_local = state_arrays(model3, optimizer3)
    model4, optimizer4 = make(3)
    with Checkpointer(
        str(remote), model4, optimizer4, local_path=str(local), promote_every=10
    ) as ck:
        assert ck.restore(best=True) == 4
        assert_same_state(state_arrays(model4, optimizer4), best_local)


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_damaged_local_step_is_restored_from_the_remote_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    model, optimizer = make(0)
    with Checkpointer(str(remote), model, optimizer, local_path=str(local)) as ck:
        _train_and_save(ck, model, optimizer, {1: 0.5, 2: 0.4})
        ck.wait_until_promoted()
    saved = state_arrays(model, optimizer)

    # a flipped bit inside a shard: found while the shard is read
    data = sorted((local / "2" / "arrays").glob("data.process_0.*"))[0]
    _flip_byte(data, 10)
    model2, optimizer2 = make(1)
    with caplog.at_level(logging.WARNING, logger="roxxel"):
        with Checkpointer(str(remote), model2, optimizer2, local_path=str(local)) as ck:
            assert ck.restore() == 2
    assert_same_state(state_arrays(model2, optimizer2), saved)
    assert "restoring the copy from the remote tier" in caplog.text

    # a damaged small file: found by the checksum record before anything is read
    metadata = local / "2" / "roxxel" / "metadata"
    metadata.write_text(metadata.read_text().replace("{", "{ ", 1))
    model3, optimizer3 = make(2)
    with Checkpointer(str(remote), model3, optimizer3, local_path=str(local)) as ck:
        assert ck.restore() == 2
    assert_same_state(state_arrays(model3, optimizer3), saved)
    assert not metadata.read_text().startswith("{ ")  # the damaged copy was replaced


def test_a_damaged_local_step_is_never_promoted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    model, optimizer = make(0)
    ck = Checkpointer(str(remote), model, optimizer, local_path=str(local), promote_every=5)
    _train_and_save(ck, model, optimizer, {1: 0.5, 2: 0.4})
    ck.wait_until_promoted()
    assert ck.remote_steps() == [1]  # step 2 is not due
    data = sorted((local / "2" / "arrays").glob("data.process_0.*"))[0]
    _flip_byte(data, 3)
    with caplog.at_level(logging.ERROR, logger="roxxel"):
        ck.close()  # promotes the newest local step: refused, and reported
    assert "promoting step 2" in caplog.text and "shard at offset" in caplog.text
    assert _steps(remote) == [1]
    assert not [p for p in remote.iterdir() if p.name.startswith("2")]


def test_options_need_local_path_and_are_checked(tmp_path: Path) -> None:
    model, optimizer = make(0)
    with pytest.raises(InvalidArgumentError, match=r"promote_every.*local_path"):
        Checkpointer(str(tmp_path / "a"), model, optimizer, promote_every=2)
    with pytest.raises(InvalidArgumentError, match="local_path"):
        Checkpointer(str(tmp_path / "a"), model, optimizer, local_path="s3://bucket/x")
    with pytest.raises(InvalidArgumentError, match="local tier must be another folder"):
        Checkpointer(str(tmp_path / "a"), model, optimizer, local_path=str(tmp_path / "a"))
    with pytest.raises(InvalidArgumentError, match="promote_every"):
        Checkpointer(
            str(tmp_path / "a"), model, optimizer, local_path=str(tmp_path / "b"), promote_every=0
        )
    with pytest.raises(InvalidArgumentError, match="read_only"):
        Checkpointer(
            str(tmp_path / "a"), model, optimizer, local_path=str(tmp_path / "b"), read_only=True
        )
    with Checkpointer(str(tmp_path / "c"), model, optimizer) as ck:
        with pytest.raises(InvalidArgumentError, match="two-tier"):
            ck.wait_until_promoted()


# ------------------------------------------------------------------ real object stores


def test_promotion_to_the_bucket_and_restore_on_a_new_machine(
    store: tuple[str, servers.Server], tmp_path: Path
) -> None:
    backend, server = store
    url = fresh_url(backend)
    local = tmp_path / "local"
    model, optimizer = make(0)
    losses = {1: 0.5, 2: 0.1, 3: 0.4, 4: 0.3}
    states = {}
    with Checkpointer(url, model, optimizer, local_path=str(local), max_to_keep=2) as ck:
        for step, loss in losses.items():
            train_steps(model, optimizer, 1)
            states[step] = state_arrays(model, optimizer)
            ck.save(step, {"loss": loss})
            ck.wait_until_finished()
            assert ck.wait_until_promoted() == step
        assert ck.remote_steps() == [2, 4]  # newest + best
    saved = state_arrays(model, optimizer)
    keys = object_keys(backend, server, url)
    assert top_level(keys) == {"2", "4"}
    for step in ("2", "4"):
        assert f"{step}/commit_success.txt" in keys
        assert f"{step}/arrays/index.process_0.json" in keys
        assert f"{step}/roxxel_checksums.json" in keys
    # the promoted copies verify against the records the local steps were saved with
    results = verify(url)
    assert [(r.step, r.ok) for r in results] == [(2, True), (4, True)]
    assert all(r.files_checked for r in results)

    # a promoted step is an ordinary format-2 step of the bucket, read with ranged reads
    model2, optimizer2 = make(1)
    with Checkpointer(url, model2, optimizer2, read_only=True) as reader:
        assert reader.all_steps() == [2, 4]
        assert reader.restore() == 4
    assert_same_state(state_arrays(model2, optimizer2), saved)

    # a new machine: an empty local tier
    model3, optimizer3 = make(2)
    with Checkpointer(url, model3, optimizer3, local_path=str(tmp_path / "new")) as ck:
        assert ck.restore() == 4
        assert ck.all_steps() == [4]
        assert ck.restore(step=2) == 2  # a given step is fetched too
    assert_same_state(state_arrays(model3, optimizer3), states[2])
    model4, optimizer4 = make(3)
    with Checkpointer(url, model4, optimizer4, local_path=str(tmp_path / "new2")) as ck:
        assert ck.restore() == 4
    assert_same_state(state_arrays(model4, optimizer4), saved)

    # the unfinished copy of a step (no marker) is never restored
    delete_object(backend, server, url, "4/commit_success.txt")
    model5, optimizer5 = make(4)
    with Checkpointer(url, model5, optimizer5, local_path=str(tmp_path / "new3")) as ck:
        assert ck.restore() == 2


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import make, train_steps
    from roxxel.checkpoint import Checkpointer

    model, optimizer = make(0, hidden=1 << 19)
    ck = Checkpointer({url!r}, model, optimizer, local_path={local!r})
    ck.save(1, {{"loss": 1.0}})
    ck.wait_until_finished()
    ck.wait_until_promoted()
    train_steps(model, optimizer, 1)
    ck.save(2, {{"loss": 0.5}})
    ck.wait_until_finished()
    print("committed 2", flush=True)
    time.sleep(600)  # killed during the promotion of step 2
    """
)


@pytest.mark.slow
def test_a_kill_during_a_promotion_leaves_the_remote_step_uncommitted(
    s3_server: servers.Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    url = fresh_url("s3")
    local = tmp_path / "local"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), url=url, local=str(local))
    log = tmp_path / "child.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        killed_with: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            keys = object_keys("s3", s3_server, url)
            if any(k.startswith("2/arrays/data.process_0.") for k in keys):
                os.killpg(proc.pid, signal.SIGKILL)
                killed_with = keys
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed_with, f"the promotion of step 2 never started: {log.read_text()[-3000:]}"
    keys = object_keys("s3", s3_server, url)
    assert "1/commit_success.txt" in keys
    assert any(k.startswith("2/") for k in keys)
    assert "2/commit_success.txt" not in keys  # killed before its marker

    # a new machine restores step 1: the half-uploaded step 2 is not a checkpoint
    model, optimizer = make(1, hidden=1 << 19)
    with Checkpointer(url, model, optimizer, local_path=str(tmp_path / "new")) as ck:
        assert ck.remote_steps() == [1]
        assert ck.restore() == 1
    # the old machine's local tier still has step 2: restarting there promotes it again
    model2, optimizer2 = make(2, hidden=1 << 19)
    with Checkpointer(url, model2, optimizer2, local_path=str(local)) as ck:
        assert ck.restore() == 2
        saved = state_arrays(model2, optimizer2)
        ck.save(3, {"loss": 0.4})
        ck.wait_until_finished()
        ck.wait_until_promoted()
        assert ck.remote_steps() == [3]
    model3, optimizer3 = make(3, hidden=1 << 19)
    with Checkpointer(url, model3, optimizer3, local_path=str(tmp_path / "new2")) as ck:
        assert ck.restore() == 3
    assert_same_state(state_arrays(model3, optimizer3), saved)
    assert not [k for k in object_keys("s3", s3_server, url) if k.startswith("2/")]


def test_an_unreachable_remote_leaves_the_local_tier_working(
    s3_server: servers.Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import s3fs

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    url = fresh_url("s3")
    local = tmp_path / "local"
    model, optimizer = make(0)
    with Checkpointer(url, model, optimizer, local_path=str(local)) as ck:
        _train_and_save(ck, model, optimizer, {1: 0.5})
        assert ck.wait_until_promoted() == 1
    dead = f"http://127.0.0.1:{servers.free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    s3fs.S3FileSystem.clear_instance_cache()  # clients made before read the old endpoint
    try:
        model2, optimizer2 = make(1)
        with caplog.at_level(logging.WARNING, logger="roxxel"):
            ck = Checkpointer(url, model2, optimizer2, local_path=str(local), timeout=60)
            assert "remote tier is unreachable" in caplog.text
            started = time.monotonic()
            assert ck.restore() == 1  # from the local tier
            assert time.monotonic() - started < 30
            assert "restoring from the local tier only" in caplog.text
            _train_and_save(ck, model2, optimizer2, {2: 0.4})
            assert ck.all_steps() == [1, 2]
            with pytest.raises(PromotionError, match="step 2"):
                ck.wait_until_promoted()
            with pytest.raises(StorageUnreachableError):
                ck.remote_steps()
            ck.close()
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()


def _committed(listed: dict[str, Any]) -> list[int]:
    # (SeaweedFS keeps an emptied folder: a deleted step may still be listed, as incomplete)
    return [c["step"] for c in listed["checkpoints"] if c["state"] == "committed"]


def test_a_remote_that_never_answers_delays_neither_saves_nor_the_exit(
    s3_server: servers.Server,
    monkeypatch: pytest.MonkeyPatch,
    silent_endpoint: str,  # noqa: F811  the fixture imported from test_cloud
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A black-holed endpoint: the first promotion hangs; local saves go on at local speed,
    the step being promoted is kept locally, and close() waits only promote_grace_s."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    model, optimizer = make(0)
    with caplog.at_level(logging.WARNING, logger="roxxel"):
        ck = Checkpointer(
            fresh_url("s3"),
            model,
            optimizer,
            local_path=str(tmp_path / "local"),
            timeout=2,
            promote_grace_s=1,
        )
        assert "remote tier is unreachable" in caplog.text
        seconds = []
        for step in range(1, 6):
            train_steps(model, optimizer, 1)
            started = time.perf_counter()
            ck.save(step, {"loss": 1.0 / step})
            ck.wait_until_finished()  # the local commit
            seconds.append(time.perf_counter() - started)
        assert max(seconds) < 5, seconds
        # step 1 is being promoted (stuck), so local retention keeps it; 2 went as usual
        assert ck.all_steps() == [1, 3, 4, 5]
        started = time.perf_counter()
        ck.close()
        assert time.perf_counter() - started < 10
    assert "did not finish within the grace period" in caplog.text


def test_roxxel_ls_shows_both_tiers(
    store: tuple[str, servers.Server], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend, _ = store
    url = fresh_url(backend)
    local = tmp_path / "local"
    model, optimizer = make(0)
    with Checkpointer(url, model, optimizer, local_path=str(local), promote_every=2) as ck:
        _train_and_save(ck, model, optimizer, {1: 0.5, 2: 0.4, 3: 0.3})
        ck.wait_until_promoted()
        assert ck.remote_steps() == [3]
        assert roxxel_main(["ls", str(local), "--remote", url]) == 0
        text = capsys.readouterr().out
        assert roxxel_main(["ls", str(local), "--remote", url, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
    assert text.index(f"local tier: {local}") < text.index(f"remote tier: {url}")
    assert _committed(listed["local"]) == [1, 2, 3]
    assert _committed(listed["remote"]) == [3]
    assert listed["remote"]["directory"] == url
    # a new machine: the local tier is empty, the remote is still listed
    assert roxxel_main(["ls", str(tmp_path / "empty"), "--remote", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["local"] is None
    assert _committed(listed["remote"]) == [3]


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import make, train_steps
    from roxxel.checkpoint import Checkpointer

    model, optimizer = make(0, hidden=1 << 16)
    ck = Checkpointer({url!r}, model, optimizer, local_path={local!r}, promote_every=100)
    for step in range(1, 1000):
        train_steps(model, optimizer, 1)
        ck.save(step, {{"loss": 1.0 / step}})
        print("save", step, "started", flush=True)
    """
)


def test_sigterm_commits_locally_and_promotes_within_the_grace_period(
    s3_server: servers.Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    url = fresh_url("s3")
    local = tmp_path / "local"
    script = SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent), url=url, local=str(local))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "save 4 started" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        out, stderr = proc.communicate(timeout=120)
        out = "".join(seen) + out
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    last = max(int(line.split()[1]) for line in out.splitlines() if line.startswith("save "))
    assert last >= 4
    local_steps = _steps(local)
    assert local_steps and local_steps[-1] >= last  # the save in flight committed locally
    keys = object_keys("s3", s3_server, url)
    # step 1 (the first) by the policy, the newest local step at exit within the grace period
    assert f"{local_steps[-1]}/commit_success.txt" in keys, keys
    assert "1/commit_success.txt" in keys or local_steps[-1] != 1
    model, optimizer = make(1, hidden=1 << 16)
    with Checkpointer(url, model, optimizer, local_path=str(tmp_path / "new")) as ck:
        assert ck.restore() == local_steps[-1]


@pytest.mark.slow
def test_two_processes_each_promote_their_files_and_process_0_commits(tmp_path: Path) -> None:
    from mpjob import check_ok, run_job

    remote, out = tmp_path / "remote", tmp_path / "out"
    out.mkdir()
    job = run_job("tiers", remote, out, processes=2, local_devices=4, limit=240)
    check_ok(job)
    for pid in (0, 1):
        assert job.result(pid, "promoted") == 3
    # remote retention (remote_max_to_keep=1, the best is the newest): step 3 alone
    assert _steps(remote) == [3]
    names = {p.name for p in (remote / "3" / "arrays").iterdir()}
    assert {"index.process_0.json", "index.process_1.json"} <= names
    assert any(n.startswith("data.process_1.") for n in names)
    assert {_tiers.marker_name(0), _tiers.marker_name(1)} <= {
        p.name for p in (remote / "3").iterdir()
    }
    assert (remote / "3" / "commit_success.txt").is_file()
    assert not [p for p in remote.iterdir() if "orbax-checkpoint-tmp" in p.name]

    # a new two-process job reads the remote tier (format 2) equal, leaf for leaf: with a
    # one-tier Checkpointer on it, and with two tiers on an empty local tier ("new machines")
    for mode in ("tiers-restore", "tiers-new-machine"):
        restored = run_job(mode, remote, out, processes=2, local_devices=4, limit=240)
        check_ok(restored)
        for pid in (0, 1):
            assert restored.result(pid, "restored") == 3
            assert restored.result(pid, "steps") == [3]
        with np.load(out / "expected-tiers.npz") as a, np.load(out / "restored-tiers.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{mode}: {key}")
        (out / "restored-tiers.npz").unlink()
