"""Bad input fails at the call with what, which value, and what to do; disk stays untouched."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import make
from roxxel.checkpoint import (
    Checkpointer,
    CheckpointerClosedError,
    CheckpointPathError,
    InvalidArgumentError,
    InvalidStepError,
    ReadOnlyError,
    StepExistsError,
    StepNotFoundError,
    StepOrderError,
)


@pytest.fixture
def saved(ckdir: Path) -> Checkpointer:
    """A Checkpointer with steps 10 and 20 committed."""
    model, optimizer = make()
    ck = Checkpointer(str(ckdir), model, optimizer)
    ck.save(10, {"loss": 2.0})
    ck.save(20, {"loss": 1.0})
    ck.wait_until_finished()
    yield ck
    ck.close()


def _listing(ck: Checkpointer) -> list[str]:
    return sorted(os.listdir(ck.directory))


@pytest.mark.parametrize(
    ("step", "fragment"),
    [
        (-1, "got -1"),
        (2.5, "got 2.5 (type float)"),
        (30.0, "Use step=30"),
        (True, "Booleans are not steps"),
        ("30", "step=int('30')"),
        (jnp.float32(30), "dtype float32"),
        (np.array([30, 31]), "non-negative integer"),
    ],
)
def test_bad_steps(saved: Checkpointer, step: object, fragment: str) -> None:
    before = _listing(saved)
    with pytest.raises(InvalidStepError, match="step must be a non-negative integer") as info:
        saved.save(step, {"loss": 1.0})  # type: ignore[arg-type]
    assert fragment in str(info.value)
    assert _listing(saved) == before


@pytest.mark.parametrize("step", [np.int64(30), jnp.int32(30), np.uint8(30)])
def test_numpy_and_jax_integer_steps(saved: Checkpointer, step: object) -> None:
    assert saved.save(step, {"loss": 1.0}) is True  # type: ignore[arg-type]
    saved.wait_until_finished()
    assert saved.latest_step() == 30


def test_lower_step_not_on_disk_is_an_error_unless_overwrite(saved: Checkpointer) -> None:
    with pytest.raises(StepOrderError, match="step 15 is lower than the latest saved step 20"):
        saved.save(15, {"loss": 1.0})
    assert saved.all_steps() == [10, 20]
    assert saved.save(15, {"loss": 1.0}, overwrite=True)
    saved.wait_until_finished()
    assert saved.all_steps() == [10, 15, 20]
    assert saved.latest_step() == 20


def test_existing_step_is_refused_then_replaced_with_overwrite(saved: Checkpointer) -> None:
    with pytest.raises(StepExistsError, match=r"step 20 is already saved.*overwrite=True"):
        saved.save(20, {"loss": 5.0})
    assert saved.metrics(20) == {"loss": 1.0}
    assert saved.save(20, {"loss": 5.0}, overwrite=True)
    saved.wait_until_finished()
    assert saved.metrics(20) == {"loss": 5.0}


def test_saving_the_step_just_restored_is_skipped(saved: Checkpointer) -> None:
    assert saved.restore() == 20
    assert saved.save(20, {"loss": 9.0}) is False
    assert saved.metrics(20) == {"loss": 1.0}


@pytest.mark.parametrize(
    ("metrics", "error", "fragment"),
    [
        (None, "metrics_dict is required", "best_metric=None"),
        ({"acc": 0.5}, "metrics_dict has no 'loss'", "it has ['acc']"),
        ({"loss": "low"}, r"metrics_dict\['loss'\] must be a real number", "'low'"),
        ({"loss": [1.0, 2.0]}, r"metrics_dict\['loss'\] must be a real number", ".mean()"),
        ({"loss": True}, r"metrics_dict\['loss'\] must be a real number", "True"),
        ([("loss", 1.0)], "metrics_dict must be a mapping", "list"),
    ],
)
def test_bad_metrics(saved: Checkpointer, metrics: object, error: str, fragment: str) -> None:
    before = _listing(saved)
    with pytest.raises(InvalidArgumentError, match=error) as info:
        saved.save(30, metrics)  # type: ignore[arg-type]
    assert fragment in str(info.value)
    assert _listing(saved) == before


def test_scalar_array_metrics_are_accepted(saved: Checkpointer) -> None:
    saved.save(30, {"loss": jnp.float32(0.25), "acc": np.float64(0.5), "n": 3})
    saved.wait_until_finished()
    assert saved.metrics(30) == {"loss": 0.25, "acc": 0.5, "n": 3.0}


def test_half_precision_jax_losses_are_accepted(saved: Checkpointer) -> None:
    # bf16 training hands over a bf16 scalar loss; float16 likewise.
    saved.save(30, {"loss": jnp.asarray(0.25, jnp.bfloat16), "f16": jnp.float16(1.5),
                    "bf16_1": jnp.asarray([0.5], jnp.bfloat16)})  # fmt: skip
    saved.wait_until_finished()
    assert saved.metrics(30) == {"loss": 0.25, "f16": 1.5, "bf16_1": 0.5}
    model, optimizer = make(seed=3)
    with Checkpointer(saved.directory, model, optimizer, read_only=True) as reader:
        assert reader.best_step() == 30  # the bf16 value ranks like any other


@pytest.mark.parametrize("value", [10**400, 2**53 + 1, -(2**60), np.int64(2**62), np.uint64(2**63)])
def test_integers_a_float_cannot_hold_exactly_are_refused(
    saved: Checkpointer, value: object
) -> None:
    before = _listing(saved)
    with pytest.raises(InvalidArgumentError, match=r"metrics_dict\['n'\] is the integer") as info:
        saved.save(30, {"loss": 1.0, "n": value})  # type: ignore[dict-item]
    assert "too large to store exactly" in str(info.value) and "Pass a float" in str(info.value)
    assert info.value.name == "metrics_dict['n']"
    assert _listing(saved) == before
    saved.save(30, {"loss": 1.0, "n": 2**53})  # the largest that is always exact
    saved.wait_until_finished()
    assert saved.metrics(30) == {"loss": 1.0, "n": float(2**53)}


def test_checkpoint_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.write_text("not a folder")
    model, optimizer = make()
    with pytest.raises(CheckpointPathError, match="exists and is not a directory"):
        Checkpointer(str(target), model, optimizer)
    assert target.read_text() == "not a folder"


def test_checkpoint_path_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    model, optimizer = make()
    with pytest.raises(CheckpointPathError, match="cannot create checkpoint directory"):
        Checkpointer(str(tmp_path / "file" / "ck"), model, optimizer)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"model": "model"}, "model must be a flax.nnx"),
        ({"optimizer": object()}, "optimizer must be a flax.nnx"),
        ({"max_to_keep": 0}, "max_to_keep must be an integer >= 1 or None, got 0"),
        ({"timeout": -5}, "timeout must be a positive number of seconds"),
        ({"best_mode": "minimum"}, "best_mode must be one of 'min', 'max'"),
        ({"keep_best": -1}, "keep_best must be an integer >= 0"),
        ({"keep_every": 0}, "keep_every must be an integer >= 1"),
        ({"best_metric": ""}, "best_metric must be a metric name"),
    ],
)
def test_bad_constructor_arguments(ckdir: Path, kwargs: dict[str, object], fragment: str) -> None:
    model, optimizer = make()
    args: dict[str, object] = {"model": model, "optimizer": optimizer, **kwargs}
    with pytest.raises(InvalidArgumentError, match=fragment):
        Checkpointer(str(ckdir), **args)  # type: ignore[arg-type]


def test_model_alone_is_allowed(ckdir: Path) -> None:
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with Checkpointer(str(ckdir), model, None) as ck:
        ck.save(0, {"loss": 1.0})
    with Checkpointer(str(ckdir), nnx.Linear(2, 2, rngs=nnx.Rngs(1)), None) as ck:
        assert ck.restore() == 0


def test_unknown_step_lists_what_exists(saved: Checkpointer) -> None:
    with pytest.raises(StepNotFoundError, match=r"step 15 is not a committed.*\[10, 20\]"):
        saved.restore(step=15)


def test_calls_after_close_raise_and_close_twice_is_fine(saved: Checkpointer) -> None:
    saved.close()
    saved.close()
    for call in (lambda: saved.save(30, {"loss": 1.0}), saved.restore, saved.all_steps):
        with pytest.raises(CheckpointerClosedError, match="Create a new Checkpointer"):
            call()


def test_read_only_refuses_saves(saved: Checkpointer) -> None:
    model, optimizer = make(seed=3)
    with Checkpointer(saved.directory, model, optimizer, read_only=True) as reader:
        assert reader.restore() == 20
        with pytest.raises(ReadOnlyError, match="read_only=True"):
            reader.save(30, {"loss": 1.0})


def test_cloud_urls_are_not_made_local() -> None:
    from roxxel._paths import resolve

    assert resolve("gs://bucket/run/", create=True) == "gs://bucket/run"
    assert resolve("s3://bucket/a/b", create=True) == "s3://bucket/a/b"
    assert not Path("gs:").exists() and not Path("s3:").exists()
