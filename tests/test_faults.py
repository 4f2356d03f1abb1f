"""Real filesystem faults: a full disk, a read-only mount, missing permissions, immutable folders.

Every fault is injected for real (as root): a size-limited tmpfs, `mount -o remount,ro`,
`chattr +i`, and `setpriv` to drop root's DAC override so that mode bits apply. Mounts are
unmounted and flags cleared in `finally` blocks, even when a test fails.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from reliability import remount, stamp, stamped_step, tiny, tmpfs
from roxxel.checkpoint import BackgroundWriteError, Checkpointer, CheckpointPathError, verify

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount, chattr and setpriv need root")


def _partials(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if "tmp" in name]


@needs_root
# After a failed TensorStore write, Orbax leaves an asyncio object that is garbage-collected
# once its event loop is closed ("Event loop is closed", ignored by Python): Orbax's noise,
# not ours, and harmless; every other warning stays an error.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_full_disk_fails_clearly_keeps_old_steps_and_recovers_when_space_is_freed(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        directory = disk / "ck"
        model, optimizer = tiny(512)  # about 3.1 MB a step, with adam's two moments
        ck = Checkpointer(str(directory), model, optimizer, max_to_keep=None)
        stamp(model, optimizer, 1)
        ck.save(1, {"loss": 1.0})
        ck.wait_until_finished()

        stats = os.statvfs(disk)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - (1 << 20)))
        stamp(model, optimizer, 2)
        with pytest.raises(BackgroundWriteError) as info:
            ck.save(2, {"loss": 0.5})
            ck.wait_until_finished()
        message = str(info.value)
        assert info.value.step == 2 and "step 2" in message
        assert re.search(
            r"disk is full \(the step needs about 3\.\d MB, \d\.\d MB are free\)", message
        )
        assert str(directory) in message
        assert _partials(directory) == []  # the unfinished step is removed at once
        assert ck.all_steps() == [1]
        assert all(result.ok for result in verify(str(directory)))

        filler.unlink()
        stamp(model, optimizer, 3)
        ck.save(3, {"loss": 0.3})  # the same process, the same Checkpointer
        ck.wait_until_finished()
        assert ck.all_steps() == [1, 3]
        assert ck.restore(step=1) == 1 and stamped_step(model, optimizer) == 1
        assert ck.restore() == 3 and stamped_step(model, optimizer) == 3
        ck.close()
    gc.collect()  # finalize Orbax's leftover coroutines now, under this test's filter


@needs_root
def test_read_only_filesystem_is_refused_at_construction_and_restores_read_only(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        directory = disk / "ck"
        model, optimizer = tiny()
        with Checkpointer(str(directory), model, optimizer) as ck:
            stamp(model, optimizer, 1)
            ck.save(1, {"loss": 1.0})
        remount(disk, "ro")
        try:
            with pytest.raises(CheckpointPathError, match="read-only filesystem") as info:
                Checkpointer(str(directory), model, optimizer)
            assert str(directory) in str(info.value) and "read_only=True" in str(info.value)
            stamp(model, optimizer, 0)
            reader = Checkpointer(str(directory), model, optimizer, read_only=True)
            assert reader.restore() == 1 and stamped_step(model, optimizer) == 1
            reader.close()
        finally:
            remount(disk, "rw")


@needs_root
def test_immutable_directory_fails_the_first_save_clearly_not_in_a_thread(
    tmp_path: Path,
) -> None:
    # pytest turns an exception escaping a background thread into a failing warning here.
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    directory = tmp_path / "ck"
    model, optimizer = tiny()
    ck = Checkpointer(str(directory), model, optimizer)
    subprocess.run(["chattr", "+i", str(directory)], check=True, timeout=30)
    try:
        with pytest.raises(BackgroundWriteError) as info:
            ck.save(1, {"loss": 1.0})
            ck.wait_until_finished()
        assert "step 1" in str(info.value) and "permission denied" in str(info.value)
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True, timeout=30)
    ck.save(2, {"loss": 1.0})  # the same Checkpointer works once the flag is gone
    ck.close()
    assert sorted(n for n in os.listdir(directory) if n.isdigit()) == ["2"]


@needs_root
def test_permission_denied_is_refused_at_construction(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    directory = tmp_path / "ck"
    directory.mkdir()
    directory.chmod(0o555)
    code = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from reliability import tiny
from roxxel.checkpoint import Checkpointer, CheckpointPathError
model, optimizer = tiny()
try:
    Checkpointer({str(directory)!r}, model, optimizer)
except CheckpointPathError as exc:
    print("REFUSED", exc)
"""
    drop = "-dac_override,-dac_read_search"
    result = subprocess.run(
        [
            "setpriv",
            f"--inh-caps={drop}",
            f"--bounding-set={drop}",
            "--",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "REFUSED" in result.stdout and str(directory) in result.stdout
    assert "not writable" in result.stdout and "read_only=True" in result.stdout
    assert "Traceback" not in result.stderr
