"""The page's example, verbatim, run twice as a script: every save committed, then resumed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import SPEC_PAGE, run_python

EXAMPLE = Path(__file__).parent / "data" / "page_example.py"


def _steps(directory: Path) -> list[str]:
    """Step folders (other entries, such as the writer lock, are not checkpoints)."""
    return sorted(p.name for p in directory.iterdir() if p.name.isdigit())


def test_committed_example_is_the_page_verbatim() -> None:
    if not SPEC_PAGE.exists():
        pytest.skip(f"the spec page is not beside this checkout ({SPEC_PAGE})")
    page = SPEC_PAGE.read_text()
    start = page.index("import jax\nimport jax.numpy")
    end = page.index("Core Features")
    assert page[start:end].rstrip() + "\n" == EXAMPLE.read_text()


def test_page_example_runs_twice_and_resumes(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(EXAMPLE.read_text())

    first = run_python(script, tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "Resumed from step: 0" in first.stdout
    assert "Traceback" not in first.stderr
    checkpoints = tmp_path / "checkpoints"
    # Steps 0 (the best: losses tie, the first keeps its place), 700, 800, 900 (the newest 3).
    assert _steps(checkpoints) == ["0", "700", "800", "900"]
    assert not [p for p in checkpoints.rglob("*") if "tmp" in p.name]

    second = run_python(script, tmp_path, timeout=120)
    assert second.returncode == 0, second.stderr
    assert re.search(r"^Resumed from step: 900$", second.stdout, re.M)
    assert "Traceback" not in second.stderr
    assert _steps(checkpoints) == ["0", "700", "800", "900"]
    assert not [p for p in checkpoints.rglob("*") if "tmp" in p.name]


def test_single_save_then_exit_without_close_is_committed(tmp_path: Path) -> None:
    code = """
import optax
from flax import nnx
from roxxel.checkpoint import Checkpointer
model = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
ck = Checkpointer("ck", model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
ck.save(5, {"loss": 1.0})
print("saved")
"""
    result = run_python(code, tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert _steps(tmp_path / "ck") == ["5"]
    assert (tmp_path / "ck" / "5" / "arrays").is_dir()


def test_checkpointer_made_in_a_function_that_returns_is_still_drained(tmp_path: Path) -> None:
    code = """
import optax
from flax import nnx
from roxxel.checkpoint import Checkpointer

def main():
    model = nnx.Linear(1024, 1024, rngs=nnx.Rngs(0))
    ck = Checkpointer("ck", model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
    ck.save(5, {"loss": 1.0})

main()
"""
    result = run_python(code, tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert _steps(tmp_path / "ck") == ["5"]
    assert not [p for p in (tmp_path / "ck").iterdir() if "tmp" in p.name]
