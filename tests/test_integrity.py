"""Content checksums: recorded with every step, verified by restore() and by `verify`.

The corruption trials damage every recorded file of the newest step in turn (one flipped
byte, then a truncation) in a fresh copy of a real checkpoint, and check each time that:
`verify` reports the file; `restore(step=newest)` raises `CorruptCheckpointError` naming the
step and the file and leaves the model untouched; `restore()` falls back to the previous,
intact step with a warning, and the state is exactly that step's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from reliability import stamp, stamped_step, tiny
from roxxel._cli import main as roxxel_main
from roxxel._integrity import NO_RECORD, RECORD_NAME
from roxxel.checkpoint import (
    Checkpointer,
    CheckpointPathError,
    CorruptCheckpointError,
    StepIntegrity,
    StepNotFoundError,
    verify,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory with steps 1, 2, 3, each stamped with its step."""
    directory = tmp_path_factory.mktemp("pristine") / "ck"
    model, optimizer = tiny()
    with Checkpointer(str(directory), model, optimizer, max_to_keep=None) as ck:
        for step in (1, 2, 3):
            stamp(model, optimizer, step)
            ck.save(step, {"loss": 1.0 / step})
    return directory


def _copy(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ck"
    shutil.copytree(pristine, target)
    return target


def _recorded_files(step_dir: Path) -> list[str]:
    """Every file the step's record covers: checksummed files, data files (through their
    shards' checksums in the index), `_CHECKPOINT_METADATA` (without its commit time) and
    Orbax's commit marker."""
    record = json.loads((step_dir / RECORD_NAME).read_text())
    marker = ["commit_success.txt"] if "commit_marker" in record else []
    return sorted([*record["files"], *record["data"], *record["late"], *marker])


def _damage_offset(step_dir: Path, name: str, size: int) -> int:
    """Where to flip a byte of `name`: its middle, or for a data file the middle of its
    largest shard (a flip in alignment padding changes no value: `verify` reports it, restore
    rightly does not care; tests/test_format.py covers that case)."""
    if not name.startswith("arrays/data."):
        return size // 2
    index = json.loads((step_dir / "arrays" / "index.process_0.json").read_text())
    shards = [
        s
        for leaf in index["leaves"].values()
        for s in leaf.get("shards", [])
        if s["file"] == name.split("/")[1]
    ]
    largest = max(shards, key=lambda s: s["length"])
    return int(largest["offset"] + largest["length"] // 2)


def test_each_step_records_a_checksum_of_every_file_off_the_training_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, optimizer = tiny()
    caplog.set_level(logging.DEBUG, logger="roxxel")
    with Checkpointer(str(tmp_path / "ck"), model, optimizer) as ck:
        ck.save(7, {"loss": 1.0})
    step_dir = tmp_path / "ck" / "7"
    on_disk = sorted(
        str(p.relative_to(step_dir))
        for p in step_dir.rglob("*")
        if p.is_file() and p.name != RECORD_NAME
    )
    assert _recorded_files(step_dir) == on_disk
    assert "_CHECKPOINT_METADATA" in on_disk and "commit_success.txt" in on_disk
    assert any(name.startswith("arrays/data.process_0.") for name in on_disk)
    records = [r for r in caplog.records if "checksummed" in r.getMessage()]
    assert records, "the checksum pass was not logged"
    assert all(r.threadName != "MainThread" for r in records)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaging_any_file_is_detected_and_restore_falls_back(
    pristine: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    files = _recorded_files(pristine / "3")
    assert len(files) >= 8  # three items (files and markers), data, step metadata
    model, optimizer = tiny()
    for trial, name in enumerate(files):
        directory = _copy(pristine, tmp_path / f"{damage}{trial}")
        target = directory / "3" / name
        data = bytearray(target.read_bytes())
        if damage == "flip":
            data[_damage_offset(directory / "3", name, len(data))] ^= 0x01
        else:
            data = data[: len(data) // 2]
        target.write_bytes(bytes(data))

        (result,) = verify(str(directory), step=3)
        assert not result.ok and any(p.startswith(name) for p in result.problems), result

        stamp(model, optimizer, 99)
        ck = Checkpointer(str(directory), model, optimizer, read_only=True)
        with pytest.raises(CorruptCheckpointError) as info:
            ck.restore(step=3)
        assert info.value.step == 3 and "step 3" in str(info.value) and name in str(info.value)
        assert stamped_step(model, optimizer) == 99  # nothing was read into the model

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="roxxel"):
            assert ck.restore() == 2
        assert stamped_step(model, optimizer) == 2
        assert any("step 3" in r.getMessage() and name in r.getMessage() for r in caplog.records)
        ck.close()
    print(f"corruption trials ({damage}): {len(files)} files, all detected, all fell back")


def test_on_corrupt_error_refuses_to_fall_back(pristine: Path, tmp_path: Path) -> None:
    directory = _copy(pristine, tmp_path)
    os.remove(directory / "3" / "arrays" / "index.process_0.json")
    model, optimizer = tiny()
    ck = Checkpointer(str(directory), model, optimizer, read_only=True, on_corrupt="error")
    with pytest.raises(CorruptCheckpointError, match=r"arrays/index.process_0.json: missing"):
        ck.restore()
    assert ck.restore(step=2) == 2


def test_every_step_damaged_raises_instead_of_starting_over(pristine: Path, tmp_path: Path) -> None:
    directory = _copy(pristine, tmp_path)
    for step in (1, 2, 3):
        (directory / str(step) / "roxxel" / "metadata").write_text('{"format": 1}   ')
    model, optimizer = tiny()
    ck = Checkpointer(str(directory), model, optimizer, read_only=True)
    with pytest.raises(CorruptCheckpointError, match=r"every checkpoint .* is damaged"):
        ck.restore()


def test_a_step_without_a_record_is_unverified_not_corrupt(pristine: Path, tmp_path: Path) -> None:
    directory = _copy(pristine, tmp_path)
    os.remove(directory / "3" / RECORD_NAME)
    results = verify(str(directory))
    assert [r.step for r in results] == [1, 2, 3]
    assert results[2] == StepIntegrity(step=3, ok=True, files_checked=0, problems=(NO_RECORD,))
    assert results[0].verified and not results[2].verified
    model, optimizer = tiny()
    assert Checkpointer(str(directory), model, optimizer, read_only=True).restore() == 3
    assert stamped_step(model, optimizer) == 3


def test_a_garbled_record_makes_the_step_damaged(pristine: Path, tmp_path: Path) -> None:
    directory = _copy(pristine, tmp_path)
    (directory / "3" / RECORD_NAME).write_text("{not json")
    (result,) = verify(str(directory), step=3)
    assert not result.ok and RECORD_NAME in result.problems[0]
    (directory / "2" / RECORD_NAME).write_text(
        json.dumps({"algorithm": "crc32", "files": {"../../etc/passwd": [1, 2]}})
    )
    (result,) = verify(str(directory), step=2)
    assert not result.ok and "outside the step folder" in result.problems[0]


def test_verify_reports_progress_over_every_byte(pristine: Path) -> None:
    calls: list[tuple[int, int]] = []
    results = verify(str(pristine), progress=lambda done, total: calls.append((done, total)))
    assert [r.step for r in results] == [1, 2, 3] and all(r.verified for r in results)
    for result in results:
        assert result.files_checked == len(_recorded_files(pristine / str(result.step)))
    totals = {total for _, total in calls}
    assert len(totals) == 1 and calls[0][0] == 0 and calls[-1][0] == totals.pop() > 0
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_verify_errors_name_the_path_and_the_steps(pristine: Path, tmp_path: Path) -> None:
    with pytest.raises(StepNotFoundError, match=r"\[1, 2, 3\]"):
        verify(str(pristine), step=5)
    with pytest.raises(CheckpointPathError, match="does not exist"):
        verify(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("_CHECKPOINT_METADATA", "truncate"),
        ("commit_success.txt", "truncate"),
        ("commit_success.txt", "flip"),
        ("commit_success.txt", "delete"),
    ],
)
def test_orbax_step_files_are_covered_and_damage_shows_in_ls_and_verify(
    pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, damage: str
) -> None:
    """Orbax's own step files, written after the record: `_CHECKPOINT_METADATA` (recorded
    without its commit time) and the commit marker (its text names the step's path)."""
    directory = _copy(pristine, tmp_path)
    target = directory / "3" / name
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    code = roxxel_main(["ls", str(directory), "--progress", "never"])
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line for line in out.splitlines() if "committed  " in line}
    assert "BAD" in rows["3"] and rows["2"].rstrip().endswith("ok"), out
    assert "ERROR" not in err, err
    code = roxxel_main(["verify", str(directory), "--progress", "never"])
    out, _ = capsys.readouterr()
    assert code != 0 and f"  {name}:" in out, out
    model, optimizer = tiny()
    with Checkpointer(str(directory), model, optimizer, read_only=True) as ck:
        with pytest.raises(CorruptCheckpointError, match=name):
            ck.restore(step=3)
        assert ck.restore() == 2
    assert stamped_step(model, optimizer) == 2
