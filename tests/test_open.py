"""`roxxel.open`: reading a checkpoint directory without the model's code."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

import roxxel
from conftest import make, run_python, state_arrays, train_steps
from roxxel.checkpoint import Checkpointer, NoCheckpointError, StepNotFoundError


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    directory = tmp_path_factory.mktemp("open") / "run"
    model, optimizer = make(0)
    saved = {}
    with Checkpointer(str(directory), model, optimizer, max_to_keep=None) as ck:
        for step, loss in ((100, 0.9), (200, 0.3), (300, 0.5)):
            train_steps(model, optimizer, 1)
            ck.save(step, {"loss": loss, "accuracy": step / 1000})
            ck.wait_until_finished()
            saved[step] = state_arrays(model, optimizer)
    return directory, saved


def test_steps_latest_best_and_metrics(run: tuple[Path, dict[int, dict]]) -> None:
    directory, _ = run
    ckpt = roxxel.open(directory)
    assert ckpt.steps == [100, 200, 300]
    assert ckpt.latest == 300
    assert ckpt.best == 200
    assert roxxel.open(directory, best_metric="accuracy", best_mode="max").best == 300
    assert ckpt.metrics(200) == {"loss": 0.3, "accuracy": 0.2}
    assert ckpt.metrics() == {"loss": 0.5, "accuracy": 0.3}


def test_specs_read_and_to_dict_match_what_was_saved(run: tuple[Path, dict[int, dict]]) -> None:
    directory, saved = run
    ckpt = roxxel.open(str(directory))
    specs = ckpt.specs(200)
    assert set(specs) == set(saved[200])
    for name, array in saved[200].items():
        assert specs[name] == (array.shape, str(array.dtype)), name
        read = ckpt.read(name, step=200)
        assert isinstance(read, np.ndarray)
        np.testing.assert_array_equal(read, array, err_msg=name)
    tree = ckpt.to_dict()
    np.testing.assert_array_equal(
        tree["model"]["encoder"]["kernel"], saved[300]["model/encoder/kernel"]
    )
    np.testing.assert_array_equal(
        tree["optimizer"]["opt_state"]["0"]["mu"]["head"]["bias"],
        saved[300]["optimizer/opt_state/0/mu/head/bias"],
    )


def test_read_touches_only_the_bytes_of_its_leaf(tmp_path: Path) -> None:
    """Damage every byte but one leaf's: that leaf still reads, checked by its checksum."""
    model, optimizer = make(0)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer, max_to_keep=None) as ck:
        ck.save(1, {"loss": 1.0})
    kernel = state_arrays(model)["model/encoder/kernel"]
    ckpt = roxxel.open(tmp_path / "ck")
    index = json.loads((tmp_path / "ck/1/arrays/index.process_0.json").read_text())
    leaves = index["leaves"]
    keep = [s for s in leaves["model/encoder/kernel"]["shards"]]
    spans = [(s["file"], s["offset"], s["offset"] + s["length"]) for s in keep]
    for name in os.listdir(tmp_path / "ck/1/arrays"):
        if not name.startswith("data."):
            continue
        path = tmp_path / "ck/1/arrays" / name
        body = bytearray(path.read_bytes())
        for i in range(len(body)):
            if not any(f == name and lo <= i < hi for f, lo, hi in spans):
                body[i] ^= 0xFF
        path.write_bytes(bytes(body))
    np.testing.assert_array_equal(ckpt.read("model/encoder/kernel"), kernel)
    with pytest.raises(roxxel.checkpoint.CorruptCheckpointError):
        ckpt.read("model/head/kernel")


def test_errors_name_what_is_there(run: tuple[Path, dict[int, dict]], tmp_path: Path) -> None:
    directory, _ = run
    ckpt = roxxel.open(directory)
    with pytest.raises(KeyError, match=r"Did you mean \['model/encoder/kernel'"):
        ckpt.read("model/encoder/kernal")
    with pytest.raises(StepNotFoundError, match=r"the steps there are \[100, 200, 300\]"):
        ckpt.read("model/encoder/kernel", step=150)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoCheckpointError, match="it is empty"):
        roxxel.open(tmp_path / "empty").to_dict()
    with pytest.raises(roxxel.checkpoint.CheckpointPathError, match="does not exist"):
        roxxel.open(tmp_path / "missing")


def test_a_checkpoint_sharded_over_4_devices_reads_in_a_process_with_1(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, numpy as np
        from flax import nnx
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from roxxel.checkpoint import Checkpointer
        assert jax.device_count() == 4

        class Wide(nnx.Module):
            def __init__(self):
                mesh = Mesh(np.array(jax.devices()), ("d",))
                value = jax.device_put(
                    np.arange(64 * 8, dtype=np.float32).reshape(64, 8),
                    NamedSharding(mesh, P("d", None)),
                )
                self.kernel = nnx.Param(value)

        with Checkpointer({str(tmp_path / "ck")!r}, Wide(), None) as ck:
            ck.save(3, {{"loss": 0.0}})
        """
    )
    result = run_python(script, tmp_path)
    assert result.returncode == 0, result.stderr
    code = textwrap.dedent(
        f"""
        import jax, numpy as np, roxxel
        assert jax.device_count() == 1, jax.device_count()
        ckpt = roxxel.open({str(tmp_path / "ck")!r})
        kernel = ckpt.read("model/kernel")
        assert np.array_equal(kernel, np.arange(64 * 8, dtype=np.float32).reshape(64, 8))
        print("OK", ckpt.specs())
        """
    )
    result = run_python(code, tmp_path, env={"XLA_FLAGS": ""})
    assert result.returncode == 0, result.stderr
    assert "OK {'model/kernel': ((64, 8), 'float32')}" in result.stdout


def test_a_folder_of_the_page_sketch_opens_with_roxxel_names(tmp_path: Path) -> None:
    from test_migration import write_page_sketch

    saved = write_page_sketch(tmp_path / "ck", {100: 0.9, 200: 0.4})
    ckpt = roxxel.open(tmp_path / "ck")
    assert ckpt.steps == [100, 200] and ckpt.best == 200
    np.testing.assert_array_equal(ckpt.read("optimizer/step"), saved[200]["optimizer/step"])
    assert set(ckpt.specs(100)) == set(saved[100])
