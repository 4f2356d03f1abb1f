"""The `roxxel` command, driven in-process against real checkpoint directories.

Each test calls `roxxel._cli.main(argv)` and checks the exit code and what was printed; the
one test that must see a fresh interpreter (`--help` without JAX) runs in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make, state_arrays, train_steps
from roxxel import _cli
from roxxel.checkpoint import Checkpointer

Run = tuple[int, str, str]


@pytest.fixture(scope="module")
def ckdir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Steps 10 and 20 of the test MLP (10 is best by loss), then step 30 of a changed
    model (hidden 16 instead of 8, one layer more), and an unfinished save of step 40."""
    directory = tmp_path_factory.mktemp("cli") / "ck"
    model, optimizer = make()
    with Checkpointer(str(directory), model, optimizer, max_to_keep=None) as ck:
        train_steps(model, optimizer, 2)
        ck.save(10, {"loss": 0.5, "accuracy": 0.75})
        train_steps(model, optimizer, 2)
        ck.save(20, {"loss": 0.7, "accuracy": 0.5})
        expected = state_arrays(model, optimizer)
    changed, changed_optimizer = make(hidden=16, extra=True)
    with Checkpointer(str(directory), changed, changed_optimizer, max_to_keep=None) as ck:
        ck.save(30, {"loss": 0.9, "accuracy": 0.25})
    shutil.copytree(directory / "20", directory / "40.orbax-checkpoint-tmp-1795000000")
    return {"dir": directory, "step20": expected}


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> Run:
    code = _cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------ help
def test_help_starts_without_importing_jax(tmp_path: Path) -> None:
    code = """
import sys
from roxxel._cli import main
for argv in (["--help"], ["ls", "--help"], ["export", "--help"], ["diff", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, exc.code
heavy = sorted(m for m in ("jax", "jaxlib", "flax", "orbax", "numpy") if m in sys.modules)
print("HEAVY", heavy)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "exit codes:" in result.stdout


def test_python_dash_m_roxxel_runs_the_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roxxel", "ls", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == _cli.EXIT_NO_DIRECTORY
    assert "nowhere" in result.stderr and "does not exist" in result.stderr


# -------------------------------------------------------------------------------- ls
def test_ls_lists_steps_metrics_marks_and_the_unfinished_save(
    ckdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "ls", ckdir["dir"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(ckdir["dir"])
    header = lines[1].split()
    assert header == ["STEP", "STATE", "MARKS", "LOSS", "ACCURACY", "SIZE", "AGE", "INTEGRITY"]
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert rows["10"][1:5] == ["committed", "best", "0.5", "0.75"]
    assert rows["20"][1:3] == ["committed", "-"]
    assert rows["30"][1:3] == ["committed", "latest"]
    assert rows["40"][1] == "incomplete"
    assert all(rows[s][-1] == "ok" for s in ("10", "20", "30"))
    assert "3 committed, 1 incomplete" in lines[6]


def test_ls_json_for_scripts(ckdir: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ls", ckdir["dir"], "--json", "--best-metric", "accuracy",
                       "--best-mode", "max")  # fmt: skip
    assert code == 0
    data = json.loads(out)
    by_step = {c["step"]: c for c in data["checkpoints"]}
    assert sorted(by_step) == [10, 20, 30, 40]
    assert by_step[10]["best"] and by_step[10]["metrics"] == {"loss": 0.5, "accuracy": 0.75}
    assert by_step[30]["latest"] and not by_step[30]["best"]
    assert by_step[40]["state"] == "incomplete" and by_step[40]["integrity"] is None
    assert by_step[20]["integrity"]["state"] == "ok"
    assert by_step[20]["size_bytes"] > 1000
    assert isinstance(by_step[20]["committed_at"], float)


def test_ls_shows_damage_in_the_integrity_column(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "ck"
    shutil.copytree(ckdir["dir"], copy)
    _flip_a_byte(copy / "20")
    code, out, _ = run(capsys, "ls", copy, "--no-verify")
    assert code == 0 and "BAD" not in out
    code, out, _ = run(capsys, "ls", copy)
    rows = {line.split()[0]: line for line in out.splitlines()[2:6]}
    assert "BAD (1 problems)" in rows["20"] and rows["10"].endswith("ok")


# ------------------------------------------------------------------------------ show
def test_show_lists_every_saved_array_with_totals(
    ckdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "show", ckdir["dir"], "--step", 20)
    assert code == 0
    assert out.splitlines()[0].startswith(f"step 20 of {ckdir['dir']} (loss=0.7")
    kernel = next(line.split() for line in out.splitlines() if line.startswith("model/head/kernel"))
    assert kernel == ["model/head/kernel", "(8,", "2)", "float32", "64"]
    assert "optimizer/opt_state/0/mu/encoder/kernel" in out
    assert "model: 4 arrays, 58 values, 232 B" in out
    assert out.splitlines()[-1].startswith(f"total: {len(ckdir['step20'])} arrays")


def test_show_best_and_json(ckdir: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", ckdir["dir"], "--best", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["step"] == 10
    leaves = {leaf["path"]: leaf for leaf in data["leaves"]}
    assert leaves["model/encoder/kernel"] == {
        "path": "model/encoder/kernel", "shape": [4, 8], "dtype": "float32", "bytes": 128,
        "key_impl": None,
    }  # fmt: skip
    code, out, _ = run(capsys, "show", ckdir["dir"])  # the newest: the changed model
    assert code == 0 and "model/extra/kernel" in out and "(16, 2)" in out


# ------------------------------------------------------------------------------ diff
def test_diff_of_two_steps_names_added_removed_and_reshaped_leaves(
    ckdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "diff", ckdir["dir"], "--step", 20, "--step", 30)
    assert code == _cli.EXIT_DIFFERENT
    lines = out.splitlines()
    assert lines[0] == f"step 20 -> step 30 in {ckdir['dir']}"
    assert "  added       model/extra/kernel  (2, 2) float32" in lines
    assert "  shape       model/encoder/kernel  (4, 8) -> (4, 16)" in lines
    assert "  shape       optimizer/opt_state/0/nu/head/kernel  (8, 2) -> (16, 2)" in lines
    assert lines[-1].startswith("6 added, 0 removed, 9 changed shape, 0 changed dtype")

    code, out, _ = run(capsys, "diff", ckdir["dir"], "--step", 30, "--step", 10)
    assert code == _cli.EXIT_DIFFERENT and "  removed     model/extra/bias  (2,) float32" in out

    code, out, _ = run(capsys, "diff", ckdir["dir"], "--step", 10, "--step", 20)
    assert code == 0
    assert out.splitlines()[-1] == "0 added, 0 removed, 0 changed shape, 0 changed dtype, " + (
        f"{len(ckdir['step20'])} unchanged"
    )


def test_diff_against_a_model_gives_the_restore_report(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mymodels.py").write_text(
        "from conftest import make\n\ndef build():\n    return make(extra=True)\n"
    )
    code, out, err = run(capsys, "diff", ckdir["dir"], "--step", 20,
                         "--model", f"{tmp_path / 'mymodels.py'}:build")  # fmt: skip
    assert code == _cli.EXIT_DIFFERENT, err
    model, optimizer = make(extra=True)
    with Checkpointer(str(ckdir["dir"]), model, optimizer, read_only=True) as ck:
        report = ck.plan_restore(20)
    assert report is not None and report.missing
    assert str(report) in out
    assert "missing     model/extra/kernel" in out

    code, out, _ = run(capsys, "diff", ckdir["dir"], "--best", "--json",
                       "--model", f"{tmp_path / 'mymodels.py'}:build")  # fmt: skip
    data = json.loads(out)
    assert data["step"] == 10 and "model/extra/kernel" in data["missing"]


def test_diff_usage_errors(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "diff", ckdir["dir"], "--step", 10)
    assert code == _cli.EXIT_USAGE and "two steps" in err
    code, _, err = run(capsys, "diff", ckdir["dir"], "--model", "nomodule_xyz:build")
    assert code == _cli.EXIT_USAGE and "cannot import 'nomodule_xyz'" in err
    code, _, err = run(capsys, "diff", ckdir["dir"], "--model", "json")
    assert code == _cli.EXIT_USAGE and "module:factory" in err
    code, _, err = run(capsys, "diff", ckdir["dir"], "--model", "json:nothing_here")
    assert code == _cli.EXIT_USAGE and "has no function 'nothing_here'" in err


# ---------------------------------------------------------------------------- verify
def _flip_a_byte(step_dir: Path) -> Path:
    record = json.loads((step_dir / "roxxel_checksums.json").read_text())
    sizes = {rel: entry[0] for rel, entry in record["files"].items()}
    sizes.update(record.get("data", {}))  # data files: their shards' checksums cover them
    name = max(sizes, key=lambda rel: sizes[rel])  # the largest file
    target = step_dir / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def test_verify_passes_then_names_a_damaged_file(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "verify", ckdir["dir"])
    assert code == 0
    assert "step 10: ok (" in out and f"all 3 checkpoints ok in {ckdir['dir']}" in out

    copy = tmp_path / "ck"
    shutil.copytree(ckdir["dir"], copy)
    damaged = _flip_a_byte(copy / "30")
    code, out, _ = run(capsys, "verify", copy, "--progress", "never")
    assert code == _cli.EXIT_DIFFERENT
    assert "step 30: FAILED (1 problems)" in out
    assert str(damaged.relative_to(copy / "30")) in out
    assert "1 of 3 checkpoints failed verification" in out
    code, out, _ = run(capsys, "verify", copy, "--step", 10)
    assert code == 0 and "step 30" not in out


# ---------------------------------------------------------------------------- export
def _flip_a_shard_byte(step_dir: Path, leaf: str = "model/encoder/kernel") -> str:
    """Flip one byte in the middle of `leaf`'s first saved shard; return the file's
    path relative to the step folder."""
    index = json.loads((step_dir / "arrays" / "index.process_0.json").read_text())
    shard = index["leaves"][leaf]["shards"][0]
    target = step_dir / "arrays" / shard["file"]
    data = bytearray(target.read_bytes())
    data[shard["offset"] + shard["length"] // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return f"arrays/{shard['file']}"


def test_export_refuses_a_damaged_step_and_writes_nothing(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "ck"
    shutil.copytree(ckdir["dir"], copy)
    damaged = _flip_a_shard_byte(copy / "20")
    target = tmp_path / "w.safetensors"
    code, out, err = run(capsys, "export", copy, target, "--step", 20)
    assert code == _cli.EXIT_DIFFERENT == 1
    assert out == ""
    assert f"step 20 in {copy} is damaged" in err and f"  {damaged}: " in err
    assert "Nothing was written" in err and "--no-verify" in err
    assert not target.exists() and not list(tmp_path.glob("*partial*"))
    # --no-verify skips the check of the whole step, but each shard is still checked as it
    # is read: a damaged shard never reaches the file.
    code, _, err = run(capsys, "export", copy, target, "--step", 20, "--no-verify")
    assert code == _cli.EXIT_DIFFERENT and damaged in err and "as they are read" in err
    assert not target.exists() and not list(tmp_path.glob("*partial*"))
    # The other steps are intact and export as before.
    code, _, err = run(capsys, "export", copy, target, "--step", 10)
    assert code == 0, err


def test_export_checks_every_file_of_the_step_unless_no_verify(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "ck"
    shutil.copytree(ckdir["dir"], copy)
    metrics = copy / "20" / "metrics" / "metrics"  # not read by export, but recorded
    text = metrics.read_text()
    assert "0.7" in text
    metrics.write_text(text.replace("0.7", "0.9"))  # same size, still valid JSON
    target = tmp_path / "w.npz"
    code, _, err = run(capsys, "export", copy, target, "--step", 20)
    assert code == _cli.EXIT_DIFFERENT
    assert "  metrics/metrics: content differs" in err and not target.exists()
    code, out, err = run(capsys, "export", copy, target, "--step", 20, "--no-verify")
    assert code == 0, err
    assert "wrote 4 arrays" in out
    with np.load(target) as loaded:
        for name in ("model/encoder/kernel", "model/head/bias"):
            np.testing.assert_array_equal(loaded[name], ckdir["step20"][name])


def test_export_safetensors_loads_identical_arrays(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.numpy import load_file

    out_file = tmp_path / "weights.safetensors"
    code, _, err = run(capsys, "export", ckdir["dir"], out_file, "--step", 20)
    assert code == 0, err
    assert err == ""  # small job, not a terminal: no progress bar
    loaded = load_file(str(out_file))
    expected = {k: v for k, v in ckdir["step20"].items() if k.startswith("model/")}
    assert sorted(loaded) == sorted(expected) == [
        "model/encoder/bias", "model/encoder/kernel", "model/head/bias", "model/head/kernel"
    ]  # fmt: skip
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)

    with_optimizer = tmp_path / "all.safetensors"
    code, _, err = run(capsys, "export", ckdir["dir"], with_optimizer, "--step", 20,
                       "--optimizer", "--progress", "always")  # fmt: skip
    assert code == 0 and "exporting step 20 [" in err and "100%" in err
    loaded = load_file(str(with_optimizer))
    assert sorted(loaded) == sorted(ckdir["step20"])
    for name, array in ckdir["step20"].items():
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


def test_export_npz_and_best(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "weights.bin"
    code, _, err = run(capsys, "export", ckdir["dir"], target)
    assert code == _cli.EXIT_USAGE and "--format" in err and not target.exists()
    code, out, _ = run(capsys, "export", ckdir["dir"], target, "--format", "npz", "--step", 20)
    assert code == 0 and "wrote 4 arrays" in out
    with np.load(target) as loaded:
        for name in ("model/encoder/kernel", "model/head/bias"):
            np.testing.assert_array_equal(loaded[name], ckdir["step20"][name])
    code, _, err = run(capsys, "export", ckdir["dir"], target, "--format", "npz")
    assert code == _cli.EXIT_USAGE and "already exists" in err and "--force" in err
    code, out, _ = run(capsys, "export", ckdir["dir"], target, "--format", "npz", "--best",
                       "--force")  # fmt: skip
    assert code == 0 and "of step 10" in out
    assert not list(tmp_path.glob("*partial*"))


def test_a_step_whose_overwrite_was_cut_short_is_listed_verified_and_exported(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer killed mid-overwrite of step 20 leaves its old version aside and an unfinished
    new one; until a writer puts the old one back, the command reads step 20 from the aside."""
    from roxxel import _overwrite

    copy = tmp_path / "ck"
    shutil.copytree(ckdir["dir"], copy)
    _overwrite.set_aside(str(copy), 20)  # what save(20, overwrite=True) does first
    shutil.copytree(copy / "10", copy / "20.orbax-checkpoint-tmp-1795000001")
    before = sorted(p.name for p in copy.iterdir())
    assert "20" not in before and "20.roxxel-replaced" in before

    code, out, err = run(capsys, "ls", copy, "--json")
    assert code == 0, err
    by_step = {c["step"]: c for c in json.loads(out)["checkpoints"] if c["state"] == "committed"}
    assert sorted(by_step) == [10, 20, 30]
    assert by_step[20]["integrity"]["state"] == "ok"
    assert by_step[20]["metrics"] == {"loss": 0.7, "accuracy": 0.5}
    code, out, err = run(capsys, "verify", copy)
    assert code == 0 and "20" in out, (out, err)
    target = tmp_path / "w.npz"
    code, out, err = run(capsys, "export", copy, target, "--format", "npz", "--step", 20,
                         "--optimizer")  # fmt: skip
    assert code == 0, err
    with np.load(target) as loaded:
        for name, array in ckdir["step20"].items():
            np.testing.assert_array_equal(loaded[name], array, err_msg=name)
    assert sorted(p.name for p in copy.iterdir()) == before  # readers change nothing

    model, optimizer = make()
    with Checkpointer(str(copy), model, optimizer) as ck:  # a writer puts step 20 back
        assert ck.restore(step=20) == 20
        assert ck.all_steps() == [10, 20, 30]
    names = sorted(p.name for p in copy.iterdir())
    assert "20" in names and not [n for n in names if "replaced" in n or "tmp" in n], names


# ---------------------------------------------------------------------------- errors
def test_missing_folder_empty_folder_and_unknown_step(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    for command in ("ls", "show", "verify"):
        code, _, err = run(capsys, command, missing)
        assert code == _cli.EXIT_NO_DIRECTORY, command
        assert f"checkpoint directory '{missing}' does not exist" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("ls", "show", "verify"):
        code, _, err = run(capsys, command, empty)
        assert code == _cli.EXIT_NO_CHECKPOINT, command
        assert f"no committed checkpoint in {empty}: it is empty" in err
    code, out, err = run(capsys, "ls", empty, "--json")  # scripts still get JSON to parse
    assert code == _cli.EXIT_NO_CHECKPOINT
    assert json.loads(out) == {"directory": str(empty), "checkpoints": []}
    assert f"no committed checkpoint in {empty}: it is empty" in err

    code, _, err = run(capsys, "ls", ckdir["dir"] / "20")
    assert code == _cli.EXIT_NO_CHECKPOINT and "looks like one step's folder" in err

    for argv in (("show", "--step", 15), ("export", "x.npz", "--step", 15),
                 ("verify", "--step", 15), ("diff", "--step", 10, "--step", 15)):  # fmt: skip
        code, _, err = run(capsys, argv[0], ckdir["dir"], *argv[1:])
        assert code == _cli.EXIT_NO_STEP, argv
        assert "step 15 is not a committed checkpoint" in err
        assert "[10, 20, 30]" in err

    code, _, err = run(capsys, "show", ckdir["dir"], "--step", 40)
    assert code == _cli.EXIT_NO_STEP and "never committed (40.orbax-checkpoint-tmp" in err

    with pytest.raises(SystemExit) as exc:
        _cli.main(["show", str(ckdir["dir"]), "--step", "-3"])
    assert exc.value.code == _cli.EXIT_USAGE
    assert "a step is a non-negative integer, got -3" in capsys.readouterr().err


def test_best_without_the_metric_says_what_to_do(
    ckdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "show", ckdir["dir"], "--best", "--best-metric", "bleu")
    assert code == _cli.EXIT_NO_CHECKPOINT
    assert "no checkpoint in" in err and "'bleu'" in err and "--best-metric" in err
    code, _, err = run(capsys, "show", ckdir["dir"], "--best", "--best-metric", "")
    assert code == _cli.EXIT_NO_CHECKPOINT
    assert "--best needs a metric" in err and "--best-metric NAME" in err
    assert "None" not in err


def test_a_folder_with_only_an_unfinished_save(
    ckdir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only = tmp_path / "only"
    only.mkdir()
    shutil.copytree(ckdir["dir"] / "20", only / "20.orbax-checkpoint-tmp-1795000000")
    code, out, err = run(capsys, "ls", only)
    assert code == _cli.EXIT_NO_CHECKPOINT
    assert "incomplete" in out and "only saves that never finished" in err
    code, out, _ = run(capsys, "ls", only, "--json")
    assert code == _cli.EXIT_NO_CHECKPOINT
    assert [c["state"] for c in json.loads(out)["checkpoints"]] == ["incomplete"]
    code, _, err = run(capsys, "show", only)
    assert code == _cli.EXIT_NO_CHECKPOINT
    assert "['20.orbax-checkpoint-tmp-1795000000']" in err


def test_bfloat16_and_prng_keys_show_and_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from safetensors import safe_open

    class Noisy(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.lin = nnx.Linear(3, 4, param_dtype=jnp.bfloat16, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)

    model = Noisy(nnx.Rngs(0, dropout=1))
    with Checkpointer(
        str(tmp_path / "ck"), model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    ) as ck:
        ck.save(1, {"loss": 1.0})
    code, out, _ = run(capsys, "show", tmp_path / "ck")
    assert code == 0
    assert "model/drop/rngs/key      (2,)  uint32 (key threefry2x32)" in out
    assert "model/lin/kernel       (3, 4)  bfloat16" in out

    target = tmp_path / "w.safetensors"
    code, _, err = run(capsys, "export", tmp_path / "ck", target)
    assert code == 0, err
    expected = state_arrays(model)
    with safe_open(str(target), framework="flax") as f:
        assert sorted(f.keys()) == sorted(expected)
        for name, array in expected.items():
            loaded = np.asarray(f.get_tensor(name))
            assert loaded.dtype == array.dtype, name
            assert loaded.tobytes() == array.tobytes(), name


def test_unreachable_storage_has_its_own_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:  # a port on loopback that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    code, _, err = run(capsys, "ls", "s3://bucket/run")
    assert code == _cli.EXIT_STORAGE == 6
    assert f"127.0.0.1:{port}" in err


def test_stderr_holds_only_roxxel_lines_on_a_damaged_checkpoint(
    ckdir: dict[str, Any], tmp_path: Path
) -> None:
    """Orbax logs an absl ERROR (with the file's content) for a metadata file it cannot
    parse, and absl WARNINGs on every read-only open; the command reports problems itself."""
    copy = tmp_path / "ck"
    shutil.copytree(ckdir["dir"], copy)
    (copy / "20" / "_CHECKPOINT_METADATA").write_text("garbage{")
    (copy / "30" / "roxxel" / "metadata").write_text("garbage{")
    code = f"""
import logging
from roxxel._cli import main
before = logging.getLogger("absl").level
codes = [main(argv) for argv in (["ls", {str(copy)!r}], ["show", {str(copy)!r}, "--step", "20"],
                                 ["show", {str(copy)!r}, "--step", "30"])]
assert logging.getLogger("absl").level == before  # main() leaves absl as it found it
print("CODES", codes)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert "CODES [0, 0, 1]" in result.stdout, result.stderr
    assert "BAD" in result.stdout  # ls reports the damage in its INTEGRITY column
    lines = result.stderr.splitlines()
    assert lines, "show --step 30 must say why it failed"
    assert "absl" not in result.stderr and "garbage" not in result.stderr, result.stderr
    assert all(line.startswith(("roxxel: error: ", "  ")) for line in lines), result.stderr
