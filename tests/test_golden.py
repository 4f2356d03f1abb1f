"""Format compatibility: checkpoints written by earlier versions still restore, bit for bit.

The folders under `tests/data/golden/` were written by `tests/golden_models.py` with the version
in their name and are committed; they are never rewritten. A change to the on-disk format, to
the leaf paths or to how leaves are stored that breaks them fails here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import state_arrays
from golden_models import CASES, GOLDEN, LOSS, STEP, expected, mlp_adam
from roxxel.checkpoint import Checkpointer

FOLDERS = sorted(p for p in GOLDEN.glob("*/*") if (p / "checkpoints").is_dir())


def test_golden_checkpoints_are_present() -> None:
    # Guards against a test that passes because it ran on nothing.
    assert {p.name for p in FOLDERS} >= set(CASES)
    assert (GOLDEN / "roxxel-0.1.0").is_dir()  # format 1: TensorStore, through Orbax
    assert (GOLDEN / "roxxel-0.2.0").is_dir()  # format 2: Roxxel's own files
    assert (GOLDEN / "roxxel-0.3.0").is_dir()  # format 2, checksum record format 3


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden_checkpoint_restores_exactly(folder: Path, tmp_path: Path) -> None:
    # A copy, so that nothing a restore might write can touch the committed files.
    directory = tmp_path / "checkpoints"
    shutil.copytree(folder / "checkpoints", directory)
    saved = expected(folder)
    model, optimizer = CASES[folder.name]()
    with Checkpointer(str(directory), model, optimizer, read_only=True) as ck:
        assert ck.all_steps() == [STEP]
        assert ck.metrics(STEP) == {"loss": LOSS}
        assert ck.restore() == STEP
        report = ck.last_restore_report
    assert report is not None and report.exact, str(report)
    restored = state_arrays(model, optimizer)
    assert sorted(restored) == sorted(saved)
    for path, value in restored.items():
        # A Python int in the model stays a Python int (NumPy shows it as int64).
        same_kind = value.dtype.kind == saved[path].dtype.kind == "i"
        assert value.dtype == saved[path].dtype or same_kind, path
        np.testing.assert_array_equal(value, saved[path], err_msg=path)


def test_golden_checkpoint_restores_into_a_model_with_an_added_layer(tmp_path: Path) -> None:
    folder = GOLDEN / "roxxel-0.1.0" / "mlp_adam"
    directory = tmp_path / "checkpoints"
    shutil.copytree(folder / "checkpoints", directory)
    saved = expected(folder)
    model, optimizer = mlp_adam(extra=True)
    with Checkpointer(str(directory), model, optimizer, read_only=True) as ck:
        ck.restore()
        report = ck.last_restore_report
    assert report is not None
    assert set(report.restored) == set(saved)
    assert len(report.missing) == 6 and all("/extra/" in p for p in report.missing)
    restored = state_arrays(model, optimizer)
    for path in saved:
        np.testing.assert_array_equal(restored[path], saved[path], err_msg=path)
