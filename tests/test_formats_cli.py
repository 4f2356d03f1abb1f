"""The `roxxel` command on both on-disk formats: the golden steps of Roxxel 0.1.0 (format 1,
TensorStore through Orbax) and of 0.2.0 (format 2, Roxxel's own files) are listed, shown,
verified and exported with the same results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from golden_models import GOLDEN, STEP, expected
from roxxel import _cli

VERSIONS = ["roxxel-0.1.0", "roxxel-0.2.0", "roxxel-0.3.0"]


def _copy(version: str, tmp_path: Path) -> tuple[Path, Path]:
    folder = GOLDEN / version / "mlp_adam"
    directory = tmp_path / "checkpoints"
    shutil.copytree(folder / "checkpoints", directory)
    return folder, directory


@pytest.mark.parametrize("version", VERSIONS)
def test_ls_show_verify_and_export_read_both_formats(
    version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.numpy import load_file

    folder, directory = _copy(version, tmp_path)
    saved = expected(folder)

    assert _cli.main(["ls", str(directory), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    (entry,) = listing["checkpoints"]
    assert entry["step"] == STEP and entry["state"] == "committed"
    assert entry["integrity"]["state"] == "ok"

    assert _cli.main(["show", str(directory)]) == 0
    shown = capsys.readouterr().out
    assert all(path in shown for path in saved)

    assert _cli.main(["verify", str(directory)]) == 0
    assert f"step {STEP}: ok (" in capsys.readouterr().out

    out_file = tmp_path / "all.safetensors"
    assert _cli.main(["export", str(directory), str(out_file), "--optimizer"]) == 0
    capsys.readouterr()
    loaded = load_file(str(out_file))
    assert sorted(loaded) == sorted(saved)
    for path, value in saved.items():
        np.testing.assert_array_equal(loaded[path], value, err_msg=path)


def test_verify_names_a_damaged_shard_of_the_new_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, directory = _copy("roxxel-0.2.0", tmp_path)
    arrays = directory / str(STEP) / "arrays"
    index = json.loads((arrays / "index.process_0.json").read_text())
    shard = index["leaves"]["model/encoder/kernel"]["shards"][0]
    path = arrays / shard["file"]
    data = bytearray(path.read_bytes())
    data[shard["offset"] + shard["length"] // 2] ^= 0x10
    path.write_bytes(bytes(data))
    assert _cli.main(["verify", str(directory)]) == 1
    out = capsys.readouterr().out
    assert f"arrays/{shard['file']}" in out and "damaged" in out
