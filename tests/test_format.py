"""Roxxel's array format (`_format`): exact round trips, the on-disk layout, O_DIRECT and its
fallback, checksums while reading, and hostile indexes refused before any large allocation."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import assert_same_state, make, state_arrays, train_steps
from roxxel import _format
from roxxel.checkpoint import Checkpointer, CorruptCheckpointError


class Kinds(nnx.Module):
    """Leaves of every size class and dtype the format must carry."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.big = nnx.Param(jax.random.normal(rngs.params(), (300, 300)))  # > SMALL
        self.big_bf16 = nnx.Param(jax.random.normal(rngs.params(), (400, 200), jnp.bfloat16))
        self.small_i8 = nnx.Variable(jnp.arange(-5, 5, dtype=jnp.int8))
        self.flags = nnx.Variable(jnp.array([True, False, True]))
        self.scalar = nnx.Variable(jnp.float32(3.5))
        self.empty = nnx.Variable(jnp.zeros((0, 7), jnp.float32))
        self.host = nnx.Variable(np.arange(12, dtype=np.int64).reshape(3, 4))
        self.np_scalar = nnx.Variable(np.int32(jax.random.randint(rngs.params(), (), 0, 99)))
        self.label = nnx.Variable("run-7")
        self.rngs = nnx.Rngs(5)


def _kinds(seed: int) -> tuple[Kinds, nnx.Optimizer[Any]]:
    model = Kinds(nnx.Rngs(seed))
    return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)


@pytest.mark.parametrize("staging", ["view", "copy"])
def test_every_kind_of_leaf_round_trips_bit_for_bit(tmp_path: Path, staging: str) -> None:
    model, optimizer = _kinds(0)
    saved = state_arrays(model, optimizer)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer, staging=staging) as ck:
        ck.save(1, {"loss": 1.0})
    other, other_opt = _kinds(1)
    other.label.set_value("changed")
    with Checkpointer(str(tmp_path / "ck"), other, other_opt, read_only=True) as ck:
        assert ck.restore() == 1
        assert ck.last_restore_report is not None and ck.last_restore_report.exact
    assert_same_state(state_arrays(other, other_opt), saved)
    assert other.label.get_value() == "run-7"
    assert other.big_bf16.get_value().dtype == jnp.bfloat16
    assert isinstance(other.host.get_value(), np.ndarray)
    assert isinstance(other.np_scalar.get_value(), np.int32)


def test_the_state_is_captured_at_save_time_in_both_staging_modes(tmp_path: Path) -> None:
    for staging in ("view", "copy"):
        model, optimizer = make()
        train_steps(model, optimizer, 2)
        before = state_arrays(model, optimizer)
        with Checkpointer(str(tmp_path / staging), model, optimizer, staging=staging) as ck:
            ck.save(2, {"loss": 1.0})
            train_steps(model, optimizer, 3)  # donates and replaces the buffers
        fresh, fresh_opt = make(seed=9)
        with Checkpointer(str(tmp_path / staging), fresh, fresh_opt, read_only=True) as ck:
            ck.restore()
        assert_same_state(state_arrays(fresh, fresh_opt), before)


def _index(step_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((step_dir / "arrays" / "index.process_0.json").read_text())
    return data


def test_layout_is_flat_files_aligned_for_o_direct(tmp_path: Path) -> None:
    model, optimizer = _kinds(0)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer) as ck:
        ck.save(1, {"loss": 1.0})
        ck.wait_until_finished()
        assert ck._store.last_write_direct() is True  # ext4 or tmpfs both take O_DIRECT
    step = tmp_path / "ck" / "1"
    names = sorted(os.listdir(step / "arrays"))
    assert names == [
        "commit_success.txt",
        "data.process_0.0",
        "data.process_0.1",
        "index.process_0.json",
    ]
    index = _index(step)
    assert index["format"] == _format.FORMAT
    big = index["leaves"]["model/big"]
    assert big["dtype"] == "float32" and big["shape"] == [300, 300]
    (shard,) = big["shards"]
    assert shard["index"] == [[0, 300], [0, 300]] and shard["length"] == 300 * 300 * 4
    # A large shard sits where its memory address does, modulo the block size.
    assert shard["offset"] % 64 == 0
    sizes = index["files"]
    for name, size in sizes.items():
        assert (step / "arrays" / name).stat().st_size == size
    assert index["leaves"]["model/label"] == {"dtype": "str", "shape": [], "value": "run-7"}
    record = json.loads((step / "roxxel_checksums.json").read_text())
    assert set(record["data"]) == {f"arrays/{name}" for name in sizes}
    assert "arrays/index.process_0.json" in record["files"]


def _ramfs(where: Path) -> bool:
    where.mkdir()
    return subprocess.run(["mount", "-t", "ramfs", "ramfs", str(where)]).returncode == 0


def test_a_filesystem_without_o_direct_gets_buffered_writes_and_reads(tmp_path: Path) -> None:
    mount = tmp_path / "ramfs"
    if os.geteuid() != 0 or not _ramfs(mount):
        pytest.skip("mounting a ramfs (which refuses O_DIRECT) needs root")
    try:
        with pytest.raises(OSError):
            os.close(os.open(mount / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        model, optimizer = _kinds(0)
        saved = state_arrays(model, optimizer)
        with Checkpointer(str(mount / "ck"), model, optimizer) as ck:
            ck.save(1, {"loss": 1.0})
            ck.wait_until_finished()
            assert ck._store.last_write_direct() is False
        other, other_opt = _kinds(1)
        with Checkpointer(str(mount / "ck"), other, other_opt, read_only=True) as ck:
            assert ck.restore() == 1
        assert_same_state(state_arrays(other, other_opt), saved)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_staging_copy_with_a_limit_copies_only_up_to_the_limit() -> None:
    big = [jnp.full((512, 512), i, jnp.float32) for i in range(4)]  # 1 MiB each
    tree = {f"w{i}": x for i, x in enumerate(big)}
    pool = _format.StagingPool()
    limited = _format.snapshot(
        tree, process=0, staging="copy", staging_limit=(2 << 20) + 1, pool=pool
    )
    assert limited.held_views == 2
    copied = _format.snapshot(tree, process=0, staging="copy", staging_limit=None, pool=pool)
    assert copied.held_views == 0
    viewed = _format.snapshot(tree, process=0, staging="view", staging_limit=None, pool=pool)
    assert viewed.held_views == 4
    # The default on CPU copies: a view would keep XLA from donating the buffer.
    auto = _format.snapshot(tree, process=0, staging="auto", staging_limit=None, pool=pool)
    assert auto.held_views == 0
    # Copies are taken now: what the pool holds is the state of the call.
    for i in range(4):
        data = copied.leaves[f"w{i}"].shards[0].data
        assert np.all(data.view(np.float32) == i)


def _saved_step(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    model, optimizer = _kinds(0)
    saved = state_arrays(model, optimizer)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer) as ck:
        ck.save(1, {"loss": 1.0})
    return tmp_path / "ck", saved


def test_a_damaged_shard_is_found_while_reading_and_named(tmp_path: Path) -> None:
    directory, _ = _saved_step(tmp_path)
    shard = _index(directory / "1")["leaves"]["model/big"]["shards"][0]
    path = directory / "1" / "arrays" / shard["file"]
    data = bytearray(path.read_bytes())
    data[shard["offset"] + 1000] ^= 0x01
    path.write_bytes(bytes(data))
    model, optimizer = _kinds(1)
    before = state_arrays(model, optimizer)
    with Checkpointer(str(directory), model, optimizer, read_only=True) as ck:
        with pytest.raises(CorruptCheckpointError, match=rf"step 1 .*{shard['file']}") as caught:
            ck.restore(step=1)
    assert caught.value.step == 1
    assert_same_state(state_arrays(model, optimizer), before)  # untouched


def test_restore_falls_back_when_the_newest_step_fails_while_reading(tmp_path: Path) -> None:
    model, optimizer = _kinds(0)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer) as ck:
        ck.save(1, {"loss": 1.0})
        ck.wait_until_finished()
        first = state_arrays(model, optimizer)
        model.big.set_value(model.big.get_value() + 1)
        ck.save(2, {"loss": 0.5})
    shard = _index(tmp_path / "ck" / "2")["leaves"]["model/big"]["shards"][0]
    path = tmp_path / "ck" / "2" / "arrays" / shard["file"]
    with open(path, "r+b") as handle:
        handle.seek(shard["offset"] + 7)
        byte = handle.read(1)
        handle.seek(shard["offset"] + 7)
        handle.write(bytes([byte[0] ^ 0x80]))
    other, other_opt = _kinds(1)
    with Checkpointer(str(tmp_path / "ck"), other, other_opt, read_only=True) as ck:
        assert ck.restore() == 1
    assert_same_state(state_arrays(other, other_opt), first)


HOSTILE = {
    "huge length": lambda s: s.update(length=1 << 60),
    "offset past the end": lambda s: s.update(offset=1 << 40),
    "negative offset": lambda s: s.update(offset=-4096),
    "index outside the shape": lambda s: s.update(index=[[0, 301], [0, 300]]),
    "another file": lambda s: s.update(file="../../etc/passwd"),
    "missing field": lambda s: s.pop("crc32c"),
    "string crc": lambda s: s.update(crc32c="0"),
}


@pytest.mark.parametrize("change", sorted(HOSTILE))
def test_a_hostile_index_is_refused_before_any_allocation(tmp_path: Path, change: str) -> None:
    directory, _ = _saved_step(tmp_path)
    index_path = directory / "1" / "arrays" / "index.process_0.json"
    index = json.loads(index_path.read_text())
    HOSTILE[change](index["leaves"]["model/big"]["shards"][0])
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match=r"model/big|index"):
        _format.load_index(str(directory / "1" / "arrays"))
    model, optimizer = _kinds(1)
    with Checkpointer(str(directory), model, optimizer, read_only=True, on_corrupt="error") as ck:
        with pytest.raises(CorruptCheckpointError):
            ck.restore()


def test_hostile_shapes_and_dtypes_are_refused(tmp_path: Path) -> None:
    directory, _ = _saved_step(tmp_path)
    arrays = directory / "1" / "arrays"
    original = (arrays / "index.process_0.json").read_text()
    for leaf_change in (
        {"shape": [1 << 40, 1 << 40]},
        {"dtype": "object"},
        {"dtype": "no-such-dtype"},
        {"shape": [300]},  # the shards no longer match the shape
    ):
        index = json.loads(original)
        index["leaves"]["model/big"].update(leaf_change)
        (arrays / "index.process_0.json").write_text(json.dumps(index))
        with pytest.raises(CorruptCheckpointError, match="model/big"):
            _format.load_index(str(arrays))


def test_verify_reads_every_byte_of_the_data_files(tmp_path: Path) -> None:
    from roxxel import _integrity

    directory, _ = _saved_step(tmp_path)
    step = directory / "1"
    assert _integrity.check(str(step), 1).verified
    index = _index(step)
    # Damage in the alignment padding between shards changes no value, and is still reported.
    spans = sorted(
        (s["offset"], s["offset"] + s["length"])
        for leaf in index["leaves"].values()
        for s in leaf.get("shards", [])
        if s["file"] == "data.process_0.0"
    )
    gap = next(end for (_, end), (start, _) in itertools.pairwise(spans) if start > end)
    path = step / "arrays" / "data.process_0.0"
    data = bytearray(path.read_bytes())
    data[gap] ^= 0xFF
    path.write_bytes(bytes(data))
    result = _integrity.check(str(step), 1)
    assert not result.ok and any("padding" in p for p in result.problems)
    # restore() reads only shards, so the values are intact and it succeeds.
    assert _integrity.check(str(step), 1, deep=False).ok


def test_bfloat16_cast_on_restore_matches_numpy_rounding(tmp_path: Path) -> None:
    model, optimizer = make()
    train_steps(model, optimizer, 2)
    saved = state_arrays(model)
    with Checkpointer(str(tmp_path / "ck"), model, None) as ck:
        ck.save(1, {"loss": 1.0})
    low, _ = make(seed=3)
    for _path, variable in nnx.to_flat_state(nnx.state(low, nnx.Param)):
        variable.set_value(variable.get_value().astype(jnp.bfloat16))
    with Checkpointer(str(tmp_path / "ck"), low, None, read_only=True) as ck:
        ck.restore()
    got = state_arrays(low)
    for path, value in saved.items():
        expected = value.astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(got[path].view(np.uint16), expected.view(np.uint16))


def test_variables_agree_with_nnx_state(tmp_path: Path) -> None:
    """`_state.variables` walks the graph with iter_graph; it must see what nnx.state sees."""
    from roxxel._state import _path_string, variables

    model, optimizer = _kinds(0)
    model.tied = model.big  # a shared Variable keeps its first path
    found = variables(model, optimizer)
    expected = {}
    for root, obj in (("model", model), ("optimizer", optimizer)):
        for path, variable in nnx.to_flat_state(nnx.state(obj)):
            if variable.get_value() is not None:
                expected[_path_string(root, tuple(path))] = variable
    assert list(found) == list(expected) or sorted(found) == sorted(expected)
    assert all(found[p] is expected[p] for p in expected)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_closed_checkpointers_leave_no_saver_threads(tmp_path: Path) -> None:
    import threading
    import time

    model, optimizer = make()
    for i in range(4):
        with Checkpointer(str(tmp_path / f"ck{i}"), model, optimizer) as ck:
            ck.save(1, {"loss": 1.0})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        t.name == "roxxel-save" for t in threading.enumerate()
    ):
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "roxxel-save"]


def test_compression_writes_zstd_through_tensorstore_and_restores(tmp_path: Path) -> None:
    model, optimizer = make()
    train_steps(model, optimizer, 2)
    saved = state_arrays(model, optimizer)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer, compression=True) as ck:
        ck.save(2, {"loss": 0.5})
    step = tmp_path / "ck" / "2"
    assert (step / "state").is_dir() and not (step / "arrays").exists()
    assert json.loads((step / "roxxel" / "metadata").read_text())["format"] == 1
    fresh, fresh_opt = make(seed=4)
    with Checkpointer(str(tmp_path / "ck"), fresh, fresh_opt, read_only=True) as ck:
        assert ck.restore() == 2
    assert_same_state(state_arrays(fresh, fresh_opt), saved)
