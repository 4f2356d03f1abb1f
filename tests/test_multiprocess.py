"""Multi-process: real 2-process `jax.distributed` jobs on CPU (4 fake devices each).

The processes run `tests/mp_worker.py`; they join on 127.0.0.1 with gloo collectives, shard the
model's kernels and the optimizer state over a mesh of all 8 devices, and save through the
public `Checkpointer`. The checkpoint is then restored in the same job, in a new 2-process job
and in single processes with 8, 2 and 1 devices. Every process runs under `timeout`, with a low
heartbeat timeout, so a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mpjob import Job, check_ok, run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Job]:
    """A checkpoint directory written by a 2-process job (steps 1-4; step 4 left in flight)."""
    root = tmp_path_factory.mktemp("multiprocess")
    ckpt, out = root / "ck", root / "out"
    out.mkdir()
    job = run_job("save", ckpt, out, processes=2, local_devices=4)
    check_ok(job)
    print(f"2-process save job: {job.wall:.1f} s wall; per-save (save+wait) seconds:")
    for pid in (0, 1):
        print(f"  process {pid}: {job.result(pid, 'save_seconds')}")
    return ckpt, out, job


def expected(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "expected.npz") as data:
        return {key: data[key] for key in data.files}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    assert any(key.startswith("optimizer/opt_state") for key in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_state_is_sharded_across_both_processes(saved: tuple[Path, Path, Job]) -> None:
    _, _, job = saved
    for pid in (0, 1):
        assert job.result(pid, "devices") == 8
        assert job.result(pid, "local") == 4
        # parameters and optimizer state each have shards in both processes
        assert job.result(pid, "kernel_spans_processes") is True
        assert job.result(pid, "mu_spans_processes") is True


def test_one_checkpoint_with_shared_files_written_once(saved: tuple[Path, Path, Job]) -> None:
    ckpt, _, _ = saved
    entries = sorted(p.name for p in ckpt.iterdir() if not p.name.startswith("."))
    # retention ran once: best (step 1, loss 0.5) and the 2 newest (3, 4); no partial folders
    assert entries == ["1", "3", "4"]
    for step in ("1", "3", "4"):
        arrays = ckpt / step / "arrays"
        # each process wrote its own shards and index into the one checkpoint
        for process in (0, 1):
            assert (arrays / f"index.process_{process}.json").is_file()
            assert (arrays / f"data.process_{process}.0").is_file()
        # the shared files exist once per step, with one consistent content
        assert (ckpt / step / "_CHECKPOINT_METADATA").is_file()
        assert json.loads((ckpt / step / "roxxel" / "metadata").read_text())["format"] == 2
    metrics = {s: json.loads((ckpt / s / "metrics" / "metrics").read_text()) for s in ("1", "3")}
    assert metrics["1"]["loss"] == 0.5 and metrics["3"]["loss"] == pytest.approx(0.8)
    # the training loss, a replicated array over both processes, was accepted as a metric
    assert 0 < metrics["3"]["train_loss"] < metrics["1"]["train_loss"]


def test_restore_in_the_same_job(saved: tuple[Path, Path, Job]) -> None:
    _, _, job = saved
    for pid in (0, 1):
        assert job.result(pid, "same_job_restored") == 3
        assert job.result(pid, "same_job_equal") is True


def test_last_save_committed_at_exit_in_every_process(saved: tuple[Path, Path, Job]) -> None:
    ckpt, _, _ = saved
    # step 4 was still being written when both processes reached the end of the script
    metrics = json.loads((ckpt / "4" / "metrics" / "metrics").read_text())
    assert metrics["loss"] == pytest.approx(0.7)
    assert not [p for p in ckpt.iterdir() if "tmp" in p.name]


def test_restore_in_a_new_two_process_job(saved: tuple[Path, Path, Job]) -> None:
    ckpt, out, _ = saved
    job = run_job("restore", ckpt, out, processes=2, local_devices=4)
    check_ok(job)
    for pid in (0, 1):
        assert job.result(pid, "restored") == 4
        assert job.result(pid, "steps") == [1, 3, 4]
        assert job.result(pid, "best") == 1
    with np.load(out / "restored-2x4.npz") as data:
        assert_same(expected(out), {key: data[key] for key in data.files})


@pytest.mark.parametrize("devices", [8, 2, 1])
def test_restore_in_one_process(saved: tuple[Path, Path, Job], devices: int) -> None:
    ckpt, out, _ = saved
    job = run_job("restore", ckpt, out, processes=1, local_devices=devices)
    check_ok(job)
    assert job.result(0, "restored") == 4
    assert job.result(0, "devices") == devices
    with np.load(out / f"restored-1x{devices}.npz") as data:
        assert_same(expected(out), {key: data[key] for key in data.files})


def test_dead_peer_gives_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # process 1 exits abruptly before saving; process 0 saves alone. A hang would hit the
    # 120 s `timeout` (rc 124/137) instead.
    job = run_job("die", tmp_path / "ck", out, processes=2, local_devices=4, limit=120)
    assert job.returncodes[1] == 3
    assert job.returncodes[0] not in (0, 124, 137), job.outputs[0][-6000:]
    assert job.result(0, "outcome") == "BackgroundWriteError"
    message = str(job.result(0, "message"))
    assert "could not start saving step 1" in message
    assert "2 JAX processes" in message and "peer process died" in message
    # nothing half-written is taken for a checkpoint
    assert not (tmp_path / "ck" / "1").exists()


def test_each_process_records_its_own_files_and_restore_checks_them_all(
    saved: tuple[Path, Path, Job], tmp_path: Path
) -> None:
    """Every process records the array files it wrote (before Orbax's commit barrier); the
    primary's record covers the step's shared files and names how many process records
    there must be. `verify` and `restore()` check them all."""
    import shutil

    from roxxel._integrity import RECORD_NAME, process_record_name
    from roxxel.checkpoint import verify

    ckpt, out, _ = saved
    for step in ("1", "3", "4"):
        step_dir = ckpt / step
        main = json.loads((step_dir / RECORD_NAME).read_text())
        assert main["process_records"] == 2
        assert main["commit_marker"] == str(step_dir)
        assert "_CHECKPOINT_METADATA" in main["late"]
        covered = {*main["files"], *main["data"]}
        for process in (0, 1):
            record = json.loads((step_dir / process_record_name(process)).read_text())
            assert record["process"] == process
            assert set(record["files"]) == {f"arrays/index.process_{process}.json"}
            assert set(record["data"]) == {f"arrays/data.process_{process}.0"}
            covered |= {*record["files"], *record["data"]}
        on_disk = {
            p.relative_to(step_dir).as_posix()
            for p in step_dir.rglob("*")
            if p.is_file() and not p.name.startswith("roxxel_checksums")
        }
        assert covered | {"_CHECKPOINT_METADATA", "commit_success.txt"} == on_disk
    assert all(result.verified for result in verify(str(ckpt)))

    damages = {
        "record": lambda d: (d / process_record_name(1)).unlink(),
        "index": lambda d: (d / "arrays" / "index.process_1.json").write_text("{}"),
        "data": lambda d: os.truncate(d / "arrays" / "data.process_1.0", 100),
    }
    names = {
        "record": process_record_name(1),
        "index": "arrays/index.process_1.json",
        "data": "arrays/data.process_1.0",
    }
    for kind, damage in damages.items():
        copy = tmp_path / kind
        shutil.copytree(ckpt, copy)
        damage(copy / "4")
        (result,) = verify(str(copy), step=4)
        assert not result.ok and any(p.startswith(names[kind]) for p in result.problems), result
    # restore() in a new job checks every process's record: step 4 lacks one, so it falls
    # back to step 3, whose state it restores
    job = run_job("restore", tmp_path / "record", out, processes=1, local_devices=2)
    check_ok(job)
    assert job.result(0, "restored") == 3
    assert process_record_name(1) in job.outputs[0]


def test_overwrite_keeps_the_old_step_until_every_process_wrote_the_new_one(
    tmp_path: Path,
) -> None:
    """`save(2, overwrite=True)` in a 2-process job: process 0 sets step 2 aside while every
    process waits at a barrier; the aside goes once the new step has committed. When a process
    dies mid-overwrite, the next job restores one of the two versions bit for bit (the old one
    put back, or the new one if it committed) and leaves no aside."""
    ckpt, out = tmp_path / "ck", tmp_path / "out"
    out.mkdir()
    job = run_job("overwrite", ckpt, out, processes=2, local_devices=4)
    check_ok(job)
    for pid in (0, 1):
        assert job.result(pid, "aside_while_saving") is True
        assert job.result(pid, "aside_after") is False
        assert job.result(pid, "steps") == [1, 2]
    check_ok(run_job("restore", ckpt, out, processes=2, local_devices=4))
    with np.load(out / "expected-overwrite.npz") as data:
        overwritten = {key: data[key] for key in data.files}
    with np.load(out / "restored-2x4.npz") as data:
        assert_same({key: data[key] for key in data.files}, overwritten)

    died = run_job("overwrite-die", ckpt, out, processes=2, local_devices=4, limit=120)
    assert died.returncodes[1] == 3, died.outputs[1][-3000:]
    assert died.returncodes[0] not in (0, 124, 137), died.outputs[0][-6000:]
    for pid in (0, 1):
        assert died.result(pid, "restored") == 2
        assert died.result(pid, "aside") is True
    # The next job (writing, so it settles the overwrite) finds step 2 put back, whole.
    reopened = run_job("restore-writer", ckpt, out, processes=2, local_devices=4)
    check_ok(reopened)
    for pid in (0, 1):
        assert reopened.result(pid, "restored") == 2
        assert reopened.result(pid, "steps") == [1, 2]
    assert sorted(p.name for p in ckpt.iterdir() if not p.name.startswith(".")) == ["1", "2"]
    with np.load(out / "expected-newer.npz") as data:
        newer = {key: data[key] for key in data.files}
    with np.load(out / "restored-writer-2x4.npz") as data:
        restored = {key: data[key] for key in data.files}
    # Process 1 may have written its part before it died (its save ran on its own thread),
    # and then process 0 committed the new step: either version, whole, never a mix.
    matches = [
        name
        for name, version in (("old", overwritten), ("new", newer))
        if all(np.array_equal(restored[key], version[key]) for key in version)
    ]
    assert len(matches) == 1, matches
    print(f"a process died mid-overwrite; the next job restored the {matches[0]} step 2")
