"""`load_weights`: safetensors files (exported by `roxxel export`, or written elsewhere) loaded
into live NNX models through restore's plan and apply.

Checkpoints are real Roxxel steps written by a Checkpointer; exports run the real `roxxel
export` command in-process; foreign files are written by the reference `safetensors` library
or, for damaged and hand-made files, byte by byte.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import textwrap
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

import roxxel
from conftest import make, run_python, state_arrays
from roxxel import _cli
from roxxel._restore import saved_name
from roxxel._weights import leaf_path
from roxxel.checkpoint import (
    Checkpointer,
    InvalidArgumentError,
    RestoreMismatchError,
    WeightsFileError,
    load_weights,
)


class Count(nnx.Variable[Any]):
    """An integer state leaf of the model's own kind."""


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.dense = nnx.Linear(6, 6, rngs=rngs)
        self.norm = nnx.BatchNorm(6, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.norm(self.dense(x)))


class Rich(nnx.Module):
    """float32, bfloat16 and int leaves, an nnx.List of nested modules, batch statistics,
    a dropout PRNG stream, and a Python scalar."""

    def __init__(self, rngs: nnx.Rngs, layers: int = 3) -> None:
        self.embed = nnx.Embed(10, 6, rngs=rngs)
        self.blocks = nnx.List([Block(rngs) for _ in range(layers)])
        self.head = nnx.Linear(6, 4, param_dtype=jnp.bfloat16, dtype=jnp.float32, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.seen = Count(jnp.zeros((3,), jnp.int32))
        self.calls = Count(0)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        self.seen.set_value(self.seen.get_value() + jnp.array([1, 2, 3], jnp.int32))
        return self.head(self.drop(x))


def rich(seed: int) -> Rich:
    return Rich(nnx.Rngs(seed, dropout=seed + 100))


def train(model: Rich, steps: int) -> nnx.Optimizer:
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    tokens = jnp.arange(16).reshape(4, 4) % 10

    @nnx.jit
    def step(model: Rich, optimizer: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(tokens) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(steps):
        step(model, optimizer)
    model.calls.set_value(steps)
    return optimizer


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained Rich model saved as step 7, exported with and without its optimizer."""
    root = tmp_path_factory.mktemp("weights")
    model = rich(0)
    optimizer = train(model, 3)
    with Checkpointer(str(root / "ck"), model, optimizer) as ck:
        ck.save(7, {"loss": 1.0})
    model_only, with_optimizer = root / "model.safetensors", root / "all.safetensors"
    assert _cli.main(["export", str(root / "ck"), str(model_only)]) == 0
    assert _cli.main(["export", str(root / "ck"), str(with_optimizer), "--optimizer"]) == 0
    return {
        "root": root,
        "file": model_only,
        "all": with_optimizer,
        "model": state_arrays(model),
        "optimizer": {
            k: v for k, v in state_arrays(model, optimizer).items() if k.startswith("optimizer/")
        },
    }


def _bits(arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {k: (str(v.dtype), v.shape, v.tobytes()) for k, v in arrays.items()}


# ----------------------------------------------------------------------- round trip
def test_export_then_load_gives_a_bit_identical_model(exported: dict[str, Any]) -> None:
    fresh = rich(5)
    fresh_optimizer = nnx.Optimizer(fresh, optax.adam(1e-2), wrt=nnx.Param)
    optimizer_before = _bits(state_arrays(fresh_optimizer))
    before = state_arrays(fresh)
    expected = exported["model"]
    assert sorted(before) == sorted(expected)
    assert sum(before[k].tobytes() != expected[k].tobytes() for k in expected) >= 20
    dtypes = {str(v.dtype) for v in expected.values()}
    assert {"float32", "bfloat16", "int32", "uint32", "int64"} <= dtypes, dtypes

    # The reference reader agrees about the file (64-bit leaves included).
    from safetensors.numpy import load_file

    assert _bits(load_file(str(exported["file"]))) == _bits(expected)

    report = roxxel.load_weights(fresh, exported["file"])

    assert _bits(state_arrays(fresh)) == _bits(expected)
    assert report.exact and report.applied and report.all_params_restored
    assert report.params_total == 1 + 3 * 4 + 2  # embed, 3 x (dense 2 + norm 2), head 2
    assert report.step == 7 and report.source == str(exported["file"])
    assert report.summary() == f"{exported['file']}: restored {len(expected)}"
    # Keys come back as keys of their implementation, Python scalars as Python values.
    assert jnp.issubdtype(fresh.drop.rngs.key.get_value().dtype, jax.dtypes.prng_key)
    assert type(fresh.calls.get_value()) is int and fresh.calls.get_value() == 3
    assert fresh.head.kernel.get_value().dtype == jnp.bfloat16
    # The optimizer is not part of it.
    assert _bits(state_arrays(fresh_optimizer)) == optimizer_before


def test_the_loaded_model_computes_what_the_saved_one_did(exported: dict[str, Any]) -> None:
    fresh = rich(9)
    load_weights(fresh, exported["file"])
    fresh.drop.deterministic = True
    for block in fresh.blocks:
        block.norm.use_running_average = True
    tokens = jnp.arange(8).reshape(2, 4)
    out = fresh(tokens)
    # The same computation from the exported arrays alone, with NumPy.
    w = exported["model"]
    x = w["model/embed/embedding"][np.asarray(tokens)]
    for i in range(3):
        x = x @ w[f"model/blocks/{i}/dense/kernel"] + w[f"model/blocks/{i}/dense/bias"]
        mean, var = w[f"model/blocks/{i}/norm/mean"], w[f"model/blocks/{i}/norm/var"]
        x = (x - mean) / np.sqrt(var + 1e-5) * w[f"model/blocks/{i}/norm/scale"]
        x = np.maximum(x + w[f"model/blocks/{i}/norm/bias"], 0)
    head = x @ w["model/head/kernel"].astype(np.float32) + w["model/head/bias"].astype(np.float32)
    np.testing.assert_allclose(np.asarray(out), head, rtol=2e-2, atol=2e-2)


def test_a_file_with_the_optimizer_loads_the_model_and_reports_the_rest_unused(
    exported: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    fresh = rich(5)
    with caplog.at_level(logging.INFO, logger="roxxel"):
        report = load_weights(fresh, exported["all"])
    assert _bits(state_arrays(fresh)) == _bits(exported["model"])
    assert sorted(report.unused) == sorted(exported["optimizer"])
    assert not report.missing and report.all_params_restored and not report.exact
    (record,) = [r for r in caplog.records if r.getMessage().startswith("roxxel: loaded")]
    assert record.levelno == logging.WARNING and "unused" in record.getMessage()


def test_only_the_planned_tensors_are_read(tmp_path: Path) -> None:
    """A 64 MiB tensor the model does not have is never read (the process's read bytes)."""
    from safetensors.numpy import save_file

    if not os.path.exists("/proc/self/io"):
        pytest.skip("needs /proc/self/io")
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    kernel = np.arange(12, dtype=np.float32).reshape(4, 3)
    big = np.ones((16, 1 << 20), np.float32)
    path = tmp_path / "big.safetensors"
    save_file({"big": big, "kernel": kernel, "bias": np.ones(3, np.float32)}, str(path))
    del big

    def read_bytes() -> int:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))

    start = read_bytes()
    report = load_weights(model, path)
    used = read_bytes() - start
    assert report.unused == ("model/big",) and report.all_params_restored
    np.testing.assert_array_equal(np.asarray(model.kernel.get_value()), kernel)
    assert used < 4 << 20, used  # the file is 64 MiB


def test_arrays_keep_the_current_sharding_of_each_variable(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    """In a 4-device process: kernels sharded two ways over 2 devices keep their shardings."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}]
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from test_weights import rich
        from roxxel.checkpoint import load_weights
        from conftest import state_arrays

        assert jax.device_count() == 4
        mesh = Mesh(np.array(jax.devices()[:2]), ("x",))
        model = rich(3)
        shardings = {{}}
        for i, spec in enumerate((P(None, "x"), P("x", None), P())):
            kernel = model.blocks[i].dense.kernel
            shardings[i] = NamedSharding(mesh, spec)
            kernel.set_value(jax.device_put(kernel.get_value(), shardings[i]))
        report = load_weights(model, {str(exported["file"])!r})
        assert report.exact, report
        for i in range(3):
            value = model.blocks[i].dense.kernel.get_value()
            assert value.sharding == shardings[i], (i, value.sharding)
        expected = np.load({str(tmp_path / "expected.npz")!r})
        got = state_arrays(model)
        for name in expected.files:
            assert got[name.replace("|", "/")].tobytes() == expected[name].tobytes(), name
        print("ok")
        """
    )
    np.savez(
        tmp_path / "expected.npz",
        **{k.replace("/", "|"): v for k, v in exported["model"].items() if v.dtype != "bfloat16"},
    )
    env = {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "PYTHONPATH": os.pathsep.join([str(Path(roxxel.__file__).parents[1]), *sys.path]),
    }
    done = run_python(script, tmp_path, env=env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_importing_roxxel_stays_light_until_load_weights_is_used(tmp_path: Path) -> None:
    code = (
        "import sys, roxxel\n"
        "assert 'jax' not in sys.modules and 'roxxel.checkpoint' not in sys.modules\n"
        "assert 'load_weights' in dir(roxxel)\n"
        "from roxxel.checkpoint import load_weights\n"
        "assert roxxel.load_weights is load_weights\n"
        "print('ok')\n"
    )
    done = run_python(code, tmp_path, env={"PYTHONPATH": str(Path(roxxel.__file__).parents[1])})
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


# ---------------------------------------------------------------------- foreign files
def _torch_style(model: nnx.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """The model's parameters under dotted names, `weight` for `kernel`."""
    out = {}
    for path, array in state_arrays(model).items():
        parts = path.split("/")[1:]
        parts[-1] = {"kernel": "weight"}.get(parts[-1], parts[-1])
        out[prefix + ".".join(parts)] = array
    return out


def test_leaf_paths_of_file_keys() -> None:
    assert leaf_path("model/encoder/kernel") == "model/encoder/kernel"
    assert leaf_path("optimizer/step") == "optimizer/step"
    assert leaf_path("encoder.layers.0.weight") == "model/encoder/layers/0/weight"
    assert leaf_path("encoder/layers/0/kernel") == "model/encoder/layers/0/kernel"
    assert leaf_path("lm_head.weight") == "model/lm_head/weight"


def test_a_prefix_and_a_leaf_name_rename_together() -> None:
    rename = {"model": "model/bert", "kernel": "weight"}
    assert saved_name("model/encoder/kernel", rename) == "model/bert/encoder/weight"
    assert saved_name("model/encoder/bias", rename) == "model/bert/encoder/bias"
    # The optimizer's mirror of a model path gets the prefix where the model path starts.
    mirrored = "optimizer/opt_state/0/mu/encoder/kernel"
    assert saved_name(mirrored, rename, mirror=4) == "optimizer/opt_state/0/mu/bert/encoder/weight"
    # Overlapping keys: the longer one wins and the other does not apply on top of it.
    rename = {"enc": "encoder", "model/enc/kernel": "model/old/w"}
    assert saved_name("model/enc/kernel", rename) == "model/old/w"


def test_a_foreign_file_with_other_names_loads_with_rename(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    source, _ = make(seed=1)
    path = tmp_path / "foreign.safetensors"
    save_file(_torch_style(source), str(path))
    model, _ = make(seed=2)
    before = _bits(state_arrays(model))

    # Without the rename the biases fit and the kernels do not: loaded in part, and said so.
    report = load_weights(model, path)
    assert report.params_restored == 2 and report.params_total == 4
    assert report.missing == ("model/encoder/kernel", "model/head/kernel")
    assert report.unused == ("model/encoder/weight", "model/head/weight")
    assert report.suggested_rename == {"kernel": "weight"}
    assert "restore with rename={'kernel': 'weight'}" in report.summary()
    after = _bits(state_arrays(model))
    assert after["model/encoder/kernel"] == before["model/encoder/kernel"]
    assert after["model/encoder/bias"] == _bits(state_arrays(source))["model/encoder/bias"]

    report = load_weights(model, path, rename={"kernel": "weight"})
    assert _bits(state_arrays(model)) == _bits(state_arrays(source))
    assert report.renamed["model/encoder/kernel"] == "model/encoder/weight"
    assert report.all_params_restored and not report.unused and report.step == 0


def test_slash_keys_without_the_model_prefix_load_as_they_are(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    source, _ = make(seed=1)
    path = tmp_path / "slashes.safetensors"
    save_file({k[len("model/") :]: v for k, v in state_arrays(source).items()}, str(path))
    model, _ = make(seed=2)
    assert load_weights(model, path).exact
    assert _bits(state_arrays(model)) == _bits(state_arrays(source))


def test_a_prefix_change_is_detected_and_the_rename_suggested(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    from safetensors.numpy import save_file

    class Wrapped(nnx.Module):
        def __init__(self, seed: int) -> None:
            self.inner = rich(seed)

    wrapped = Wrapped(5)
    before = _bits(state_arrays(wrapped))
    with pytest.raises(RestoreMismatchError) as info:
        load_weights(wrapped, exported["file"])
    assert info.value.report.suggested_rename == {"model/inner": "model"}
    assert "paths under model/ gained a leading inner/" in str(info.value)
    assert _bits(state_arrays(wrapped)) == before
    report = load_weights(wrapped, exported["file"], rename={"model/inner": "model"})
    assert report.all_params_restored
    got = state_arrays(wrapped)
    assert all(
        got["model/inner/" + k[len("model/") :]].tobytes() == v.tobytes()
        for k, v in exported["model"].items()
    )

    # A Hugging Face style file whose keys carry the model's name in front.
    source, _ = make(seed=1)
    path = tmp_path / "prefixed.safetensors"
    save_file(
        {
            "bert." + k[len("model/") :].replace("/", "."): v
            for k, v in state_arrays(source).items()
        },
        str(path),
    )
    model, _ = make(seed=2)
    with pytest.raises(RestoreMismatchError) as info:
        load_weights(model, path)
    assert info.value.report.suggested_rename == {"model": "model/bert"}
    load_weights(model, path, rename={"model": "model/bert"})
    assert _bits(state_arrays(model)) == _bits(state_arrays(source))


def test_a_file_matching_no_parameter_is_refused_unless_allow_partial(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"vision.patch.weight": np.ones((3, 3), np.float32)}, str(path))
    model, _ = make()
    before = _bits(state_arrays(model))
    with pytest.raises(RestoreMismatchError) as info:
        load_weights(model, path)
    message = str(info.value)
    assert "none of the model's 4 parameters (nnx.Param) is in the file" in message
    assert "unused (in the file, not in the model): model/vision/patch/weight" in message
    assert "allow_partial=True" in message and info.value.report.params_restored == 0
    report = load_weights(model, path, allow_partial=True)
    assert (
        report.applied and not report.restored and report.unused == ("model/vision/patch/weight",)
    )
    assert _bits(state_arrays(model)) == before


def test_a_float32_file_into_a_bfloat16_model_is_cast_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 8)).astype(np.float32)
    bias = rng.normal(size=(8,)).astype(np.float32)
    path = tmp_path / "f32.safetensors"
    save_file({"kernel": kernel, "bias": bias}, str(path))
    model = nnx.Linear(4, 8, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    with caplog.at_level(logging.INFO, logger="roxxel"):
        report = load_weights(model, path)
    assert report.cast == {
        "model/bias": ("float32", "bfloat16"),
        "model/kernel": ("float32", "bfloat16"),
    }
    assert "cast 2" in report.summary()
    value = model.kernel.get_value()
    assert value.dtype == jnp.bfloat16
    assert np.asarray(value).tobytes() == kernel.astype(ml_dtypes.bfloat16).tobytes()
    assert any(r.levelno == logging.WARNING and "cast 2" in r.getMessage() for r in caplog.records)


def test_shapes_that_do_not_fit_are_refused_or_skipped(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    source, _ = make(seed=1)
    arrays = state_arrays(source)
    arrays["model/encoder/kernel"] = arrays["model/encoder/kernel"].T.copy()  # PyTorch layout
    path = tmp_path / "transposed.safetensors"
    save_file(arrays, str(path))
    model, _ = make(seed=2)
    before = _bits(state_arrays(model))
    with pytest.raises(RestoreMismatchError) as info:
        load_weights(model, path)
    assert info.value.mismatched == {"model/encoder/kernel": ((8, 4), (4, 8))}
    assert "model/encoder/kernel is stored transposed" in str(info.value)
    assert "(the model was not changed)" in str(info.value)
    assert _bits(state_arrays(model)) == before
    report = load_weights(model, path, on_mismatch="skip")
    assert list(report.mismatched) == ["model/encoder/kernel"] and len(report.restored) == 3
    got = state_arrays(model)
    assert got["model/head/kernel"].tobytes() == arrays["model/head/kernel"].tobytes()
    assert got["model/encoder/kernel"].tobytes() == before["model/encoder/kernel"][2]


# ----------------------------------------------------------------------- bad files
def _header_file(path: Path, header: dict[str, Any], data: bytes) -> Path:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def _refused(model: nnx.Module, path: Path) -> WeightsFileError:
    before = _bits(state_arrays(model))
    with pytest.raises(WeightsFileError) as info:
        load_weights(model, path)
    assert _bits(state_arrays(model)) == before
    assert str(path) in str(info.value) and "To fix:" in str(info.value)
    assert info.value.path == str(path)
    return info.value


def test_damaged_and_foreign_files_are_refused_naming_the_file(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    model = rich(5)
    data = exported["file"].read_bytes()

    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights, just some text that is long enough\n")
    assert "is not a safetensors file" in str(_refused(model, text))

    npz = tmp_path / "w.npz"
    assert _cli.main(["export", str(exported["root"] / "ck"), str(npz)]) == 0
    assert "is not a safetensors file" in str(_refused(model, npz))

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert "shorter than a header" in str(_refused(model, empty))

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-5])
    error = _refused(model, cut)
    assert "the file was cut short" in str(error) and "download or export it again" in str(error)

    cut_header = tmp_path / "cut-header.safetensors"
    cut_header.write_bytes(data[:40])
    assert "its header needs" in str(_refused(model, cut_header))

    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(data[:8] + b"#" + data[9:])
    assert "its header is not JSON" in str(_refused(model, garbled))

    unknown = _header_file(
        tmp_path / "fp4.safetensors",
        {"kernel": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}},
        b"\0\0",
    )
    error = _refused(model, unknown)
    assert "tensor 'kernel' has dtype 'F4', which Roxxel does not read" in str(error)
    assert "BF16" in str(error)

    twice = _header_file(
        tmp_path / "twice.safetensors",
        {
            "a.b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "a/b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        b"\0" * 8,
    )
    assert "both name the leaf model/a/b" in str(_refused(model, twice))

    wrong_size = _header_file(
        tmp_path / "size.safetensors",
        {"k": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}},
        b"\0" * 8,
    )
    assert "not 16 bytes" in str(_refused(model, wrong_size))


def test_a_file_cut_after_its_header_was_checked_changes_nothing(
    exported: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The steps of load_weights, with the file truncated between planning and reading: the
    read fails on the last tensor and no leaf of the model is set (all or nothing)."""
    from roxxel import _inplace
    from roxxel._state import variables
    from roxxel._weights import WeightsFile

    path = tmp_path / "shrinking.safetensors"
    path.write_bytes(exported["file"].read_bytes())
    model = rich(5)
    before = _bits(state_arrays(model))
    weights = WeightsFile(str(path))
    request.addfinalizer(weights.close)
    live = variables(model, None)
    planned = _inplace.plan(
        live, 7, weights.specs, rename={}, on_mismatch="error", allow_partial=False,
        where=str(path), source=str(path),
    )  # fmt: skip
    assert len(planned.reads) == len(exported["model"])
    last = max(weights.tensors.values(), key=lambda t: t.end)
    os.truncate(path, last.end - 2)
    with pytest.raises(WeightsFileError) as info:
        _inplace.apply(live, planned, weights.specs, weights.read)
    assert f"tensor {last.key!r} ends at byte {last.end}" in str(info.value)
    assert "it changed after its header was read" in str(info.value)
    assert _bits(state_arrays(model)) == before


# ----------------------------------------------------------------------- bad arguments
def test_bad_arguments_fail_at_the_call(exported: dict[str, Any], tmp_path: Path) -> None:
    model = rich(5)
    file = exported["file"]
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"model": {"kernel": 1}}, "model", "nnx.Module"),
        ({"path": 3}, "path", "path of a .safetensors file"),
        ({"path": tmp_path / "nope.safetensors"}, "path", "does not exist"),
        ({"path": tmp_path}, "path", "is a folder"),
        ({"path": "gs://bucket/w.safetensors"}, "path", "Copy the file to a local disk"),
        ({"rename": {"kernel": 3}}, "rename", "non-empty strings"),
        ({"rename": {"encoder": "enc"}}, "rename", "matches no leaf of the current model"),
        ({"on_mismatch": "ignore"}, "on_mismatch", "'error'"),
        ({"allow_partial": "yes"}, "allow_partial", "True or False"),
    ]
    before = _bits(state_arrays(model))
    for changes, name, words in cases:
        kwargs: dict[str, Any] = {"model": model, "path": file, **changes}
        target, path = kwargs.pop("model"), kwargs.pop("path")
        with pytest.raises(InvalidArgumentError) as info:
            load_weights(target, path, **kwargs)
        assert info.value.name == name, (changes, info.value.name)
        assert words in str(info.value), (changes, str(info.value))
    assert _bits(state_arrays(model)) == before
