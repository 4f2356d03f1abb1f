"""Extra state in the checkpoint (`Checkpointer(extras=...)`): real Grain iterators, real files.

Each kind is saved with the model, then restored by a fresh Checkpointer into fresh objects,
and must continue exactly where the saved one was: the same next batches, the same draws, the
same arrays. Also: absent and unused extras, extras committed with their step or not at all
(SIGKILLed writers), checksums over the extras file, capture at call time, the construction
errors, `roxxel show`, and the TensorStore path (`compression=True`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, make, state_arrays, train_steps
from roxxel import _cli
from roxxel._inspect import CheckpointDir
from roxxel.checkpoint import (
    Checkpointer,
    CorruptCheckpointError,
    InvalidArgumentError,
    RestoreMismatchError,
)


def _loader(seed: int = 7) -> grain.DataLoader:
    """A shuffled Grain DataLoader over 50 records, in batches of 4, for 3 epochs."""
    return grain.DataLoader(
        data_source=grain.sources.RangeDataSource(0, 50, 1),
        sampler=grain.samplers.IndexSampler(
            num_records=50,
            shuffle=True,
            seed=seed,
            num_epochs=3,
            shard_options=grain.sharding.NoSharding(),
        ),
        operations=[grain.transforms.Batch(4)],
        worker_count=0,
    )


def _next(iterator: Any, n: int) -> list[list[int]]:
    return [np.asarray(next(iterator)).tolist() for _ in range(n)]


def _save_and_reopen(
    directory: Path, before: dict[str, Any], after: dict[str, Any], **kwargs: Any
) -> Checkpointer:
    """Save `before` as step 1 with a model, then restore into `after`; the new Checkpointer."""
    model, optimizer = make(0)
    with Checkpointer(str(directory), model, optimizer, extras=before, **kwargs) as ck:
        ck.save(1, {"loss": 1.0})
    model2, optimizer2 = make(1)
    ck = Checkpointer(str(directory), model2, optimizer2, extras=after, **kwargs)
    assert ck.restore() == 1
    assert _same(state_arrays(model2, optimizer2), state_arrays(model, optimizer))
    return ck


# ----------------------------------------------------------------------------- each kind
def test_grain_dataloader_iterator_continues_where_it_was(tmp_path: Path) -> None:
    iterator = iter(_loader())
    _next(iterator, 5)
    model, optimizer = make(0)
    with Checkpointer(str(tmp_path), model, optimizer, extras={"data": iterator}) as ck:
        ck.save(5, {"loss": 1.0})
    expected = _next(iterator, 20)  # crosses into the second epoch

    fresh = iter(_loader())
    model2, optimizer2 = make(1)
    with Checkpointer(str(tmp_path), model2, optimizer2, extras={"data": fresh}) as ck:
        assert ck.restore() == 5
        assert ck.last_restore_report is not None
        assert ck.last_restore_report.extras == {"data": "restored"}
    assert _next(fresh, 20) == expected
    assert _next(iter(_loader()), 20) != expected  # a fresh loader would have started over


@pytest.mark.parametrize("kind", ["map", "iter"])
def test_grain_dataset_iterators_continue_where_they_were(tmp_path: Path, kind: str) -> None:
    def dataset() -> Any:
        ds = grain.MapDataset.range(40).shuffle(seed=3).repeat(2)
        if kind == "iter":
            return ds.to_iter_dataset().map(lambda x: x * 10).batch(3)
        return ds.map(lambda x: x * 10).batch(3)

    iterator = iter(dataset())
    _next(iterator, 4)
    model, optimizer = make(0)
    with Checkpointer(str(tmp_path), model, optimizer, extras={"data": iterator}) as ck:
        ck.save(4, {"loss": 1.0})
    expected = _next(iterator, 15)
    fresh = iter(dataset())
    model2, optimizer2 = make(1)
    with Checkpointer(str(tmp_path), model2, optimizer2, extras={"data": fresh}) as ck:
        ck.restore()
    assert _next(fresh, 15) == expected


class Counter:
    """A user's object with `get_state()`/`set_state()`: a state of bytes, tuples and NumPy."""

    def __init__(self) -> None:
        self.count = 0
        self.tag = b"\x00\xffraw"
        self.history: tuple[int, ...] = ()
        self.table = np.zeros(3, np.int64)
        self.by_step: dict[int, str] = {}

    def tick(self) -> None:
        self.count += 1
        self.history += (self.count,)
        self.table[self.count % 3] += self.count
        self.by_step[self.count] = f"s{self.count}"

    def get_state(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "tag": self.tag,
            "history": self.history,
            "table": self.table.copy(),
            "scale": np.float32(0.5),
            "by_step": dict(self.by_step),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.count = state["count"]
        self.tag = state["tag"]
        self.history = state["history"]
        self.table = state["table"]
        self.by_step = state["by_step"]
        assert isinstance(state["scale"], np.float32)


def test_get_state_object_round_trips_exactly(tmp_path: Path) -> None:
    counter = Counter()
    for _ in range(5):
        counter.tick()
    fresh = Counter()
    ck = _save_and_reopen(tmp_path, {"counter": counter}, {"counter": fresh})
    ck.close()
    assert fresh.count == 5 and fresh.history == (1, 2, 3, 4, 5)
    assert fresh.tag == b"\x00\xffraw"
    assert fresh.table.dtype == np.int64 and fresh.table.tolist() == counter.table.tolist()
    assert fresh.by_step == {1: "s1", 2: "s2", 3: "s3", 4: "s4", 5: "s5"}


def test_json_config_is_restored_in_place_and_readable_without_running(tmp_path: Path) -> None:
    config = {"lr": 3e-4, "layers": [64, 64], "name": "run-a", "seed": 2**70 + 1, "tags": None}
    current = {"lr": 1.0, "stale": True}
    ck = _save_and_reopen(tmp_path, {"config": config}, {"config": current})
    ck.close()
    assert current == config  # the same dict object, updated in place
    assert current["seed"] == 2**70 + 1  # beyond 2**53: kept exact
    # The step's extras file is plain JSON, and the directory can be read without a model.
    raw = json.loads((tmp_path / "1" / "extras" / "metadata").read_text())
    assert raw["config"] == config
    with CheckpointDir(str(tmp_path)) as checkpoints:
        assert checkpoints.extras(1) == {"config": ("json", config)}


class EMA(nnx.Module):
    def __init__(self, name: str, dtype: Any, rngs: nnx.Rngs) -> None:
        setattr(self, name, nnx.Linear(4, 3, param_dtype=dtype, rngs=rngs))


def test_ema_module_restores_with_a_rename_and_a_cast(tmp_path: Path) -> None:
    model, optimizer = make(0)
    ema = EMA("encoder_avg", jnp.float32, nnx.Rngs(5))
    with Checkpointer(str(tmp_path), model, optimizer, extras={"ema": ema}) as ck:
        ck.save(1, {"loss": 1.0})
    saved_kernel = np.asarray(ema.encoder_avg.kernel.get_value())

    model2, optimizer2 = make(1)
    ema2 = EMA("enc_avg", jnp.bfloat16, nnx.Rngs(9))  # renamed, and now bfloat16
    with Checkpointer(str(tmp_path), model2, optimizer2, extras={"ema": ema2}) as ck:
        plan = ck.plan_restore()  # without the rename: its leaves are missing and unused
        assert plan is not None
        assert "extras/ema/enc_avg/kernel" in plan.missing
        assert "extras/ema/encoder_avg/kernel" in plan.unused
        assert plan.suggested_rename == {"enc_avg": "encoder_avg"}
        ck.restore(rename={"enc_avg": "encoder_avg"})
        report = ck.last_restore_report
    assert report is not None and report.extras == {"ema": "restored"}
    assert report.renamed["extras/ema/enc_avg/kernel"] == "extras/ema/encoder_avg/kernel"
    assert report.cast["extras/ema/enc_avg/kernel"] == ("float32", "bfloat16")
    restored = ema2.enc_avg.kernel.get_value()
    assert restored.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(restored), saved_kernel.astype(jnp.bfloat16)
    )  # rounded as NumPy rounds to bfloat16
    assert _same(state_arrays(model2, optimizer2), state_arrays(model, optimizer))


def test_pytree_of_arrays_is_restored_into_its_dicts_and_lists(tmp_path: Path) -> None:
    tree = {
        "mean": jnp.arange(6.0).reshape(2, 3),
        "history": [np.arange(4, dtype=np.int32), jnp.ones(2, jnp.bfloat16)],
        "count": 7,
        "key": jax.random.key(3),
        "unset": None,  # an empty subtree, as in JAX: skipped
    }
    into = {
        "mean": jnp.zeros((2, 3)),
        "history": [np.zeros(4, np.int32), jnp.zeros(2, jnp.bfloat16)],
        "count": 0,
        "key": jax.random.key(0),
    }
    history = into["history"]
    ck = _save_and_reopen(tmp_path, {"stats": tree}, {"stats": into})
    ck.close()
    assert into["history"] is history  # the same containers, entries replaced
    np.testing.assert_array_equal(np.asarray(into["mean"]), np.asarray(tree["mean"]))
    assert isinstance(history[0], np.ndarray) and history[0].tolist() == [0, 1, 2, 3]
    assert history[1].dtype == jnp.bfloat16 and np.asarray(history[1]).tolist() == [1.0, 1.0]
    assert into["count"] == 7 and isinstance(into["count"], int)
    saved_key, restored_key = jax.random.key_data(tree["key"]), jax.random.key_data(into["key"])
    np.testing.assert_array_equal(restored_key, saved_key)


RESHARD = r"""
import jax, jax.numpy as jnp, numpy as np, optax, sys
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from roxxel.checkpoint import Checkpointer

def linear():
    model = nnx.Linear(8, 8, rngs=nnx.Rngs(0))
    return model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

four = NamedSharding(Mesh(np.array(jax.devices()[:4]), ("d",)), P("d"))
two = NamedSharding(Mesh(np.array(jax.devices()[:2]), ("d",)), P(None, "d"))
saved = {"w": jax.device_put(jnp.arange(64.0).reshape(8, 8), four)}
model, optimizer = linear()
with Checkpointer(sys.argv[1], model, optimizer, extras={"avg": saved}) as ck:
    ck.save(1, {"loss": 1.0})
into = {"w": jax.device_put(jnp.zeros((8, 8)), two)}
model, optimizer = linear()
with Checkpointer(sys.argv[1], model, optimizer, extras={"avg": into}) as ck:
    ck.restore()
assert into["w"].sharding == two, into["w"].sharding
assert np.array_equal(np.asarray(into["w"]), np.arange(64.0).reshape(8, 8))
print("resharded")
"""


def test_pytree_extra_takes_the_current_sharding(tmp_path: Path) -> None:
    """Saved split by rows over 4 devices, restored split by columns over 2."""
    script = tmp_path / "reshard.py"
    script.write_text(RESHARD)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert result.returncode == 0 and "resharded" in result.stdout, result.stderr[-3000:]


def test_numpy_generator_draws_continue_identically(tmp_path: Path) -> None:
    rng = np.random.default_rng(12345)
    rng.normal(size=7)
    fresh = np.random.default_rng(0)
    model, optimizer = make(0)
    with Checkpointer(str(tmp_path), model, optimizer, extras={"rng": rng}) as ck:
        ck.save(1, {"loss": 1.0})
    expected = rng.integers(0, 2**62, size=10).tolist(), rng.random(5).tolist()
    model2, optimizer2 = make(1)
    with Checkpointer(str(tmp_path), model2, optimizer2, extras={"rng": fresh}) as ck:
        ck.restore()
    assert (fresh.integers(0, 2**62, size=10).tolist(), fresh.random(5).tolist()) == expected

    philox = np.random.Generator(np.random.Philox(1))
    with Checkpointer(str(tmp_path), model2, optimizer2, extras={"rng": philox}) as ck:
        with pytest.raises(RestoreMismatchError, match=r"extras\['rng'\].*PCG64.*Philox"):
            ck.restore()
    assert philox.random() == np.random.Generator(np.random.Philox(1)).random()  # untouched


def test_a_legacy_random_state_round_trips_through_its_get_state(tmp_path: Path) -> None:
    legacy = np.random.RandomState(5)
    legacy.normal(size=3)  # leaves a cached Gaussian in its state
    fresh = np.random.RandomState(0)
    _save_and_reopen(tmp_path, {"legacy": legacy}, {"legacy": fresh}).close()
    assert fresh.normal(size=5).tolist() == legacy.normal(size=5).tolist()


def test_a_philox_generator_state_with_arrays_round_trips(tmp_path: Path) -> None:
    rng = np.random.Generator(np.random.Philox(42))
    rng.random(3)
    fresh = np.random.Generator(np.random.Philox(0))
    _save_and_reopen(tmp_path, {"rng": rng}, {"rng": fresh}).close()
    assert fresh.random(6).tolist() == rng.random(6).tolist()


def test_format_1_steps_carry_extras_too(tmp_path: Path) -> None:
    """`compression=True` writes through Orbax's TensorStore path; extras go with it."""
    iterator = iter(_loader())
    _next(iterator, 3)
    ema = nnx.clone(make(2)[0])
    config = {"a": 1}
    fresh_iterator, fresh_ema, fresh_config = iter(_loader()), nnx.clone(make(3)[0]), {}
    ck = _save_and_reopen(
        tmp_path,
        {"data": iterator, "ema": ema, "config": config},
        {"data": fresh_iterator, "ema": fresh_ema, "config": fresh_config},
        compression=True,
    )
    ck.close()
    assert _next(fresh_iterator, 8) == _next(iterator, 8)
    assert fresh_config == config
    np.testing.assert_array_equal(
        np.asarray(fresh_ema.encoder.kernel.get_value()),
        np.asarray(ema.encoder.kernel.get_value()),
    )


# ----------------------------------------------------------------------- absent, unused
def test_absent_and_unused_extras_are_reported(tmp_path: Path) -> None:
    model, optimizer = make(0)
    ema = nnx.clone(model)
    with Checkpointer(str(tmp_path), model, optimizer, extras={"ema": ema, "cfg": {"a": 1}}) as ck:
        ck.save(1, {"loss": 1.0})

    model2, optimizer2 = make(1)
    rng = np.random.default_rng(4)  # added mid-run
    state = rng.bit_generator.state
    with Checkpointer(str(tmp_path), model2, optimizer2, extras={"rng": rng}) as ck:
        assert ck.restore() == 1
        report = ck.last_restore_report
    assert report is not None
    assert report.extras == {"rng": "absent", "ema": "unused", "cfg": "unused"}
    assert rng.bit_generator.state == state  # kept its current state
    assert "extras/ema/encoder/kernel" in report.unused
    assert not report.exact
    assert "extras: rng absent, ema unused, cfg unused" in report.summary()
    text = str(report)
    assert "rng  absent (not in the checkpoint; keeps its current state)" in text
    assert report.to_dict()["extras"] == report.extras
    assert _same(state_arrays(model2, optimizer2), state_arrays(model, optimizer))

    # An EMA added mid-run: its leaves are missing and keep their values; the rest restores.
    model3, optimizer3 = make(1)
    ema3 = nnx.clone(model3)
    before = np.asarray(ema3.head.kernel.get_value()).copy()
    with Checkpointer(str(tmp_path), model3, optimizer3, extras={"ema3": ema3}) as ck:
        ck.restore()
        report = ck.last_restore_report
    assert report is not None and report.extras["ema3"] == "absent"
    assert "extras/ema3/head/kernel" in report.missing
    np.testing.assert_array_equal(np.asarray(ema3.head.kernel.get_value()), before)
    np.testing.assert_array_equal(
        np.asarray(model3.head.kernel.get_value()), np.asarray(model.head.kernel.get_value())
    )


def test_a_step_saved_before_extras_existed_reports_them_absent(tmp_path: Path) -> None:
    model, optimizer = make(0)
    with Checkpointer(str(tmp_path), model, optimizer) as ck:
        ck.save(1, {"loss": 1.0})
    model2, optimizer2 = make(1)
    config = {"x": 1}
    with Checkpointer(str(tmp_path), model2, optimizer2, extras={"config": config}) as ck:
        ck.restore()
        assert ck.last_restore_report is not None
        assert ck.last_restore_report.extras == {"config": "absent"}
    assert config == {"x": 1}


def test_a_kind_that_cannot_take_the_saved_state_is_refused_before_any_change(
    tmp_path: Path,
) -> None:
    model, optimizer = make(0)
    with Checkpointer(str(tmp_path), model, optimizer, extras={"x": {"a": 1}}) as ck:
        ck.save(1, {"loss": 1.0})
    model2, optimizer2 = make(1)
    before = state_arrays(model2, optimizer2)
    with Checkpointer(
        str(tmp_path), model2, optimizer2, extras={"x": np.random.default_rng(0)}
    ) as ck:
        with pytest.raises(RestoreMismatchError, match=r"extras\['x'\] was saved as a JSON config"):
            ck.restore()
    assert _same(state_arrays(model2, optimizer2), before)


class Refuses:
    def __init__(self) -> None:
        self.state = {"n": 1}

    def get_state(self) -> dict[str, int]:
        return dict(self.state)

    def set_state(self, state: dict[str, int]) -> None:
        raise ValueError("this dataset changed: cannot take that state")


def test_a_failing_set_state_leaves_everything_as_it_was(tmp_path: Path) -> None:
    model, optimizer = make(0)
    with Checkpointer(
        str(tmp_path), model, optimizer, extras={"config": {"a": 1}, "z": Refuses()}
    ) as ck:
        ck.save(1, {"loss": 1.0})
    model2, optimizer2 = make(1)
    before = state_arrays(model2, optimizer2)
    config = {"a": 2}
    with Checkpointer(
        str(tmp_path), model2, optimizer2, extras={"config": config, "z": Refuses()}
    ) as ck:
        with pytest.raises(ValueError, match="this dataset changed"):
            ck.restore()
    assert config == {"a": 2}  # set first, then put back
    assert _same(state_arrays(model2, optimizer2), before)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


# -------------------------------------------------------------- capture at call time
def test_save_captures_the_extras_when_called(tmp_path: Path) -> None:
    model, optimizer = make(0)
    iterator = iter(_loader())
    _next(iterator, 2)
    config = {"phase": "warmup"}
    rng = np.random.default_rng(1)
    stats = {"seen": np.zeros(3, np.int64)}
    extras = {"data": iterator, "config": config, "rng": rng, "stats": stats}
    with Checkpointer(str(tmp_path), model, optimizer, extras=extras) as ck:
        ck.save(2, {"loss": 1.0})
        # Changed right after save() returned, while the step is still being written.
        expected = _next(iterator, 6)
        config["phase"] = "main"
        config["new"] = [1]
        draws = rng.random(4).tolist()
        stats["seen"][:] = 99  # in place, into the very array that was passed
        train_steps(model, optimizer, 1)

    fresh = {
        "data": iter(_loader()),
        "config": {},
        "rng": np.random.default_rng(7),
        "stats": {"seen": np.ones(3, np.int64)},
    }
    model2, optimizer2 = make(1)
    with Checkpointer(str(tmp_path), model2, optimizer2, extras=fresh) as ck:
        ck.restore()
    assert _next(fresh["data"], 6) == expected
    assert fresh["config"] == {"phase": "warmup"}
    assert fresh["rng"].random(4).tolist() == draws
    assert fresh["stats"]["seen"].tolist() == [0, 0, 0]


def test_capturing_extras_costs_about_the_copy_of_their_state(tmp_path: Path) -> None:
    """save() with a Grain iterator, a config and a Generator blocks about as long as without.

    The extras' states are a few hundred bytes: capturing them is a get_state() call and a
    JSON-safe copy, far below the save's own cost (measured medians are printed).
    """
    model, optimizer = make(0)

    def median_blocked(extras: dict[str, Any] | None, directory: Path) -> float:
        times = []
        with Checkpointer(str(directory), model, optimizer, extras=extras, max_to_keep=2) as ck:
            for step in range(1, 12):
                ck.save(step, {"loss": 1.0})
                times.append(ck.last_save_seconds or 0.0)
                ck.wait_until_finished()
        return sorted(times)[len(times) // 2]

    iterator = iter(_loader())
    extras = {"data": iterator, "config": {"lr": 0.1}, "rng": np.random.default_rng(0)}
    without = median_blocked(None, tmp_path / "a")
    with_extras = median_blocked(extras, tmp_path / "b")
    print(f"save() blocked: {without * 1e3:.2f} ms without extras, {with_extras * 1e3:.2f} with")
    assert with_extras < without + 0.010  # 10 ms of slack for a busy 2-core host


# ------------------------------------------------------------------ the same atomic step
WRITER = r"""
import sys
sys.path.insert(0, {tests!r})
import numpy as np
import optax
from roxxel.checkpoint import Checkpointer
from reliability import stamp, tiny

model, optimizer = tiny(256)
counter = {{"step": 0}}
rng = np.random.default_rng(0)
ck = Checkpointer(sys.argv[1], model, optimizer, max_to_keep=2,
                  extras={{"counter": counter, "rng": rng}})
step = ck.restore()
print("ready", flush=True)
while True:
    step += 1
    stamp(model, optimizer, step)
    counter["step"] = step
    rng.bit_generator.state = np.random.default_rng(step).bit_generator.state
    ck.save(step, {{"loss": 1.0 / step}})
"""


@pytest.mark.slow
def test_extras_commit_with_their_step_or_not_at_all(tmp_path: Path) -> None:
    """SIGKILL a saving loop at random moments: every committed step's extras are its own."""
    from reliability import stamped_step, tiny

    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(REPO / "tests")))
    directory = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    randomness = random.Random(5)
    for _trial in range(3):
        process = subprocess.Popen(
            [sys.executable, str(script), str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(randomness.uniform(0.3, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()

        model, optimizer = tiny(256)
        counter: dict[str, Any] = {}
        rng = np.random.default_rng(999)
        with Checkpointer(
            str(directory), model, optimizer, extras={"counter": counter, "rng": rng}
        ) as ck:
            assert not [n for n in os.listdir(directory) if "tmp" in n]
            for step in ck.all_steps():
                ck.restore(step=step)
                assert stamped_step(model, optimizer) == step
                assert counter == {"step": step}
                assert rng.random() == np.random.default_rng(step).random()
            step = ck.restore()
            assert step > 0 and counter == {"step": step}


def test_an_unfinished_folder_with_extras_is_never_restored(tmp_path: Path) -> None:
    model, optimizer = make(0)
    config = {"step": 1}
    with Checkpointer(str(tmp_path), model, optimizer, extras={"config": config}) as ck:
        ck.save(1, {"loss": 1.0})
    # What a save killed before its commit leaves: the folder holds everything but its name.
    partial = tmp_path / "2.orbax-checkpoint-tmp-1234"
    shutil.copytree(tmp_path / "1", partial)
    (partial / "extras" / "metadata").write_text(json.dumps({"config": {"step": 2}}))
    into: dict[str, Any] = {}
    model2, optimizer2 = make(1)
    with Checkpointer(str(tmp_path), model2, optimizer2, extras={"config": into}) as ck:
        assert not partial.exists()  # removed on construction
        assert ck.restore() == 1
    assert into == {"step": 1}


def test_a_damaged_extras_file_fails_the_checksum_check(tmp_path: Path) -> None:
    model, optimizer = make(0)
    config = {"step": 1}
    with Checkpointer(str(tmp_path), model, optimizer, extras={"config": config}) as ck:
        ck.save(1, {"loss": 1.0})
        config["step"] = 2
        ck.save(2, {"loss": 1.0})
    path = tmp_path / "2" / "extras" / "metadata"
    path.write_text(path.read_text().replace('"step": 2', '"step": 9'))

    into: dict[str, Any] = {}
    model2, optimizer2 = make(1)
    with Checkpointer(str(tmp_path), model2, optimizer2, extras={"config": into}) as ck:
        with pytest.raises(CorruptCheckpointError, match="extras/metadata"):
            ck.restore(step=2)
        assert into == {}
        assert ck.restore() == 1  # falls back to the newest intact step
    assert into == {"step": 1}


# ------------------------------------------------------------------ construction errors
def test_invalid_extras_are_refused_at_construction(tmp_path: Path) -> None:
    model, optimizer = make(0)

    def refused(extras: Any, pattern: str) -> InvalidArgumentError:
        with pytest.raises(InvalidArgumentError, match=pattern) as info:
            Checkpointer(str(tmp_path), model, optimizer, extras=extras)
        return info.value

    refused([("data", 1)], r"extras must map names to objects.*got a list")
    for bad in ("1st", "has-dash", "with space", "", "class"):
        error = refused({bad: {"a": 1}}, r"is not a simple identifier")
        assert error.value == bad
    error = refused({"thing": object()}, r"extras\['thing'\]: a builtins\.object cannot be")
    assert "Supported:" in str(error) and error.name == "extras['thing']"
    refused({"gen": (i for i in range(3))}, r"extras\['gen'\].*no get_state\(\)/set_state\(\)")
    refused({"w": jnp.ones(3)}, r"extras\['w'\].*put it in a dict")
    refused({"m": model}, r"extras\['m'\]: is the same object as the model")
    refused({"o": optimizer}, r"extras\['o'\]: is the same object as the optimizer")
    config = {"a": 1}
    refused({"a": config, "b": config}, r"extras\['b'\]: is the same object as extras\['a'\]")
    refused(
        {"enc": model.encoder},
        r"extras\['enc'\]: its leaf extras/enc/bias is the same nnx.Variable as "
        r"model/encoder/bias",
    )
    refused({"cfg": {"ok": 1, "bad": {1, 2}}}, r"extras\['cfg'\]\['bad'\] holds a builtins\.set")
    refused({"tree": {"w": jnp.ones(2), "t": (jnp.ones(1),)}}, r"extras\['tree'\].*tuple")
    refused({"tree": {"w": jnp.ones(2), "a/b": jnp.ones(1)}}, r"extras\['tree'\].*'a/b'")


def test_a_get_state_that_json_cannot_keep_fails_the_save_before_any_write(
    tmp_path: Path,
) -> None:
    class Bad:
        def get_state(self) -> Any:
            return {"ok": 1, "handle": object()}

        def set_state(self, state: Any) -> None:
            pass

    model, optimizer = make(0)
    with Checkpointer(str(tmp_path), model, optimizer, extras={"bad": Bad()}) as ck:
        with pytest.raises(
            InvalidArgumentError, match=r"extras\['bad'\]\.get_state\(\)\['handle'\] holds"
        ):
            ck.save(1, {"loss": 1.0})
        assert ck.all_steps() == []
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []


def test_several_processes_refuse_per_process_state() -> None:
    from roxxel import _extras

    model, optimizer = make(0)
    with pytest.raises(InvalidArgumentError, match=r"extras\['data'\].*2 JAX processes"):
        _extras.check({"data": iter(_loader())}, model, optimizer, process_count=2)
    kinds = _extras.check({"config": {"a": 1}}, model, optimizer, process_count=2)
    assert kinds["config"].kind == "json"


# ----------------------------------------------------------------------- roxxel show
def test_roxxel_show_lists_the_extras(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, optimizer = make(0)
    iterator = iter(_loader())
    _next(iterator, 1)
    extras = {
        "data": iterator,
        "config": {"lr": 0.5},
        "ema": nnx.clone(model),
        "rng": np.random.default_rng(2),
    }
    with Checkpointer(str(tmp_path), model, optimizer, extras=extras) as ck:
        ck.save(3, {"loss": 1.0})

    assert _cli.main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "extras/ema/encoder/kernel" in out
    assert "extras by name (4):" in out
    assert '  config  JSON config  {"lr": 0.5}' in out
    assert "  data    Grain iterator  {" in out and "last_seen_indices" in out
    assert "  ema     NNX module or state  (arrays under extras/ema/)" in out
    assert "  rng     numpy.random.Generator  {" in out

    assert _cli.main(["show", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    by_name = {e["name"]: e for e in shown["extras"]}
    assert by_name["config"] == {"name": "config", "kind": "json", "state": {"lr": 0.5}}
    assert by_name["ema"]["state"] is None and by_name["ema"]["kind"] == "nnx"
    assert by_name["rng"]["state"]["bit_generator"] == "PCG64"
    assert by_name["data"]["kind"] == "grain"


def test_a_malformed_saved_state_is_reported_as_corrupt_not_raised_raw(tmp_path: Path) -> None:
    """Content that passes its checksums (rewritten, then re-recorded) but does not decode."""
    from roxxel import _integrity

    model, optimizer = make(0)
    with Checkpointer(str(tmp_path), model, optimizer, extras={"counter": Counter()}) as ck:
        ck.save(1, {"loss": 1.0})
    path = tmp_path / "1" / "extras" / "metadata"
    saved = json.loads(path.read_text())
    saved["counter"]["table"] = {"__roxxel__": "numpy", "dtype": "<i8"}  # no data
    path.write_text(json.dumps(saved))
    _integrity.record(str(tmp_path / "1"))

    fresh = Counter()
    with Checkpointer(str(tmp_path), *make(1), extras={"counter": fresh}) as ck:
        with pytest.raises(CorruptCheckpointError, match=r"the state of 'counter' is malformed"):
            ck.restore(step=1)
    assert fresh.count == 0
    with CheckpointDir(str(tmp_path)) as checkpoints:
        with pytest.raises(CorruptCheckpointError, match="extras/metadata"):
            checkpoints.extras(1)


def test_a_hostile_extras_record_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    from roxxel import _integrity

    model, optimizer = make(0)
    with Checkpointer(str(tmp_path), model, optimizer, extras={"config": {"a": 1}}) as ck:
        ck.save(1, {"loss": 1.0})
    path = tmp_path / "1" / "roxxel" / "metadata"
    meta = json.loads(path.read_text())
    assert meta["extras"] == {"config": "json"}
    meta["extras"] = {"config": ["not", "a", "kind"]}
    path.write_text(json.dumps(meta))
    _integrity.record(str(tmp_path / "1"))
    with Checkpointer(str(tmp_path), *make(1), extras={"config": {}}) as ck:
        with pytest.raises(CorruptCheckpointError, match="not a Roxxel record"):
            ck.restore(step=1)
