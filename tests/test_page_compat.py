"""Code written against the page's source of the Checkpointer: `checkpoint_path`, `graphdef`
and `mngr` (Orbax's CheckpointManager there) work, and agree with the Checkpointer's answers.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import SPEC_PAGE, make, run_python
from roxxel._compat import SUPPORTED, UNAVAILABLE, PageManager, UnavailableManagerAPIError
from roxxel.checkpoint import Checkpointer, CheckpointerClosedError, RoxxelError

# Written as a reader of the page writes it: its model, its constructor call, and
# `checkpointer.mngr` where the page's source has an Orbax CheckpointManager.
PAGE_STYLE_SCRIPT = """
import json
import os

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from roxxel.checkpoint import Checkpointer

class SimpleModel(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(10, 5, rngs=rngs)
    def __call__(self, x):
        return self.linear(x)

def build():
    model = SimpleModel(nnx.Rngs(42))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    checkpointer = Checkpointer(
        checkpoint_path="./checkpoints",
        model=model,
        optimizer=optimizer,
        max_to_keep=3
    )
    return model, optimizer, checkpointer

def answers(checkpointer):
    mngr = checkpointer.mngr
    latest, steps, best = mngr.latest_step(), mngr.all_steps(), mngr.best_step()
    assert latest is None or type(latest) is int, latest
    assert all(type(step) is int for step in steps), steps
    assert best is None or type(best) is int, best
    own = (checkpointer.latest_step(), checkpointer.all_steps(), checkpointer.best_step())
    assert (latest, list(steps), best) == own, ((latest, steps, best), own)
    on_disk = sorted(int(p) for p in os.listdir(checkpointer.checkpoint_path) if p.isdigit())
    assert list(steps) == on_disk, (steps, on_disk)
    return {"latest": latest, "all": list(steps), "best": best}

model, optimizer, checkpointer = build()
result = {"path": checkpointer.checkpoint_path, "empty": answers(checkpointer), "saves": {}}
assert checkpointer.checkpoint_path == os.path.abspath("./checkpoints")

# The page's restore template, built from the public graphdef.
assert checkpointer.graphdef == nnx.split((checkpointer.model, checkpointer.optimizer))[0]
abstract = nnx.eval_shape(
    lambda: nnx.merge(checkpointer.graphdef, nnx.state((model, optimizer)))
)
_, abstract_state = nnx.split(abstract)
assert jax.tree.structure(abstract_state) == jax.tree.structure(nnx.state((model, optimizer)))

start_step = checkpointer.restore()
losses = {0: 0.9, 100: 0.3, 200: 0.7, 300: float("nan"), 400: 0.8, 500: 0.6}
for step in range(start_step, 600):
    if step % 100 == 0:
        checkpointer.save(step=step, metrics_dict={"loss": losses[step]})
        checkpointer.mngr.wait_until_finished()
        result["saves"][step] = answers(checkpointer)

# The last save is not waited for: closing the manager commits it.
checkpointer.save(step=600, metrics_dict={"loss": 0.5})
checkpointer.mngr.close()
checkpointer.mngr.close()

model, optimizer, checkpointer = build()
result["resumed"] = checkpointer.restore()
result["reopened"] = answers(checkpointer)
checkpointer.mngr.wait_until_finished()
checkpointer.mngr.close()
print("RESULT " + json.dumps(result))
"""


def test_page_style_code_gets_the_checkpointers_answers(tmp_path: Path) -> None:
    done = run_python(PAGE_STYLE_SCRIPT, tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))

    assert result["path"] == str(tmp_path / "checkpoints")
    assert result["empty"] == {"latest": None, "all": [], "best": None}
    # max_to_keep=3 newest plus the best finite loss (step 100, 0.3). The NaN at step 300 is
    # never best, not even while it is the newest; steps 0 and 200 are removed by retention.
    assert result["saves"] == {
        "0": {"latest": 0, "all": [0], "best": 0},
        "100": {"latest": 100, "all": [0, 100], "best": 100},
        "200": {"latest": 200, "all": [0, 100, 200], "best": 100},
        "300": {"latest": 300, "all": [100, 200, 300], "best": 100},
        "400": {"latest": 400, "all": [100, 200, 300, 400], "best": 100},
        "500": {"latest": 500, "all": [100, 300, 400, 500], "best": 100},
    }
    assert result["resumed"] == 600
    assert result["reopened"] == {"latest": 600, "all": [100, 400, 500, 600], "best": 100}


def test_every_name_the_page_uses_is_offered_or_refused_helpfully(ckdir: Path) -> None:
    if not SPEC_PAGE.exists():
        pytest.skip(f"the spec page is not beside this checkout ({SPEC_PAGE})")
    page = SPEC_PAGE.read_text()
    source = page[page.index("class Checkpointer:") :]  # the class's source, as users read it
    attributes = set(re.findall(r"self\.(\w+)(?:, _)? = ", source))
    assert attributes >= {"checkpoint_path", "model", "optimizer", "graphdef", "mngr"}
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        for name in attributes:
            assert hasattr(ck, name), name
    calls = set(re.findall(r"mngr\.(\w+)\(", source))
    assert calls == {"save", "restore", "latest_step"}
    assert calls <= set(SUPPORTED) | set(UNAVAILABLE)


def test_graphdef_is_that_of_the_live_model(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        before = ck.graphdef
        assert before == nnx.split((model, optimizer))[0]
        model.extra = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
        assert ck.graphdef == nnx.split((model, optimizer))[0]
        assert ck.graphdef != before
    with Checkpointer(str(ckdir), model, None) as alone:
        assert alone.graphdef == nnx.split(model)[0]
        assert alone.checkpoint_path == alone.directory == str(ckdir)


def test_nan_and_infinite_losses_are_never_best(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, max_to_keep=2) as ck:
        ck.save(1, {"loss": math.nan})
        ck.save(2, {"loss": math.inf})
        ck.mngr.wait_until_finished()
        assert ck.mngr.best_step() is None
        assert list(ck.mngr.all_steps()) == [1, 2]
        ck.save(3, {"loss": 7.0})
        ck.save(4, {"loss": -math.inf})
        ck.save(5, {"loss": math.nan})
        ck.mngr.wait_until_finished()
        assert ck.mngr.best_step() == ck.best_step() == 3
        assert list(ck.mngr.all_steps(read=True)) == ck.all_steps() == [3, 4, 5]
        assert ck.mngr.latest_step() == 5


def test_without_a_best_metric_there_is_no_best_step(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer, best_metric=None) as ck:
        ck.save(1)
        ck.mngr.wait_until_finished()
        assert ck.mngr.best_step() is ck.best_step() is None
        assert ck.mngr.latest_step() == 1


def test_mngr_after_close_answers_as_the_checkpointer_does(ckdir: Path) -> None:
    model, optimizer = make()
    ck = Checkpointer(str(ckdir), model, optimizer)
    ck.save(3, {"loss": 1.0})
    ck.mngr.close()
    for call in (
        ck.mngr.latest_step,
        ck.mngr.all_steps,
        ck.mngr.best_step,
        ck.mngr.wait_until_finished,
    ):
        with pytest.raises(CheckpointerClosedError, match="closed"):
            call()
    with pytest.raises(CheckpointerClosedError):
        ck.latest_step()
    ck.mngr.close()
    with Checkpointer(str(ckdir), model, optimizer, read_only=True) as reader:
        assert reader.mngr.all_steps() == [3]


def test_unavailable_manager_calls_name_the_roxxel_call(ckdir: Path) -> None:
    model, optimizer = make()
    with Checkpointer(str(ckdir), model, optimizer) as ck:
        ck.save(1, {"loss": 1.0})
        mngr = ck.mngr
        assert isinstance(mngr, PageManager)
        assert not isinstance(mngr, ocp.CheckpointManager)
        assert not hasattr(mngr, "save")

        # The page's own calls of what Roxxel does not offer.
        _, state = nnx.split((model, optimizer))
        with pytest.raises(UnavailableManagerAPIError) as saving:
            mngr.save(2, args=ocp.args.StandardSave(state), metrics={"loss": 0.5})
        assert str(saving.value) == (
            "Checkpointer.mngr.save() is not available: Roxxel writes its own array format, "
            "checksums and retention; call checkpointer.save(step, metrics_dict) instead."
        )
        with pytest.raises(AttributeError, match=r"checkpointer\.restore\(\)"):
            mngr.restore(1, args=ocp.args.StandardRestore(state))
        with pytest.raises(RoxxelError, match=r"read checkpointer\.checkpoint_path"):
            _ = mngr.directory

        for name in UNAVAILABLE:
            with pytest.raises(UnavailableManagerAPIError) as error:
                getattr(mngr, name)
            message = str(error.value)
            assert message.startswith(f"Checkpointer.mngr.{name}"), message
            assert " instead" in message, message
            # names a call or attribute of the Checkpointer itself, or the roxxel command
            assert re.search(r"checkpointer\.(?!mngr)\w+|Checkpointer\(|`roxxel ", message)
            assert error.value.name == name
            assert isinstance(error.value, AttributeError)

        with pytest.raises(UnavailableManagerAPIError, match="offers only wait_until_finished"):
            _ = mngr.no_such_method
        with pytest.raises(AttributeError):
            _ = mngr.__wrapped__
        with pytest.raises(AttributeError):
            mngr.options = None  # type: ignore[attr-defined]
        mngr.wait_until_finished()
        assert ck.all_steps() == [1]  # nothing above wrote or deleted anything


def test_every_orbax_manager_name_is_answered_or_refused() -> None:
    public = {name for name in dir(ocp.CheckpointManager) if not name.startswith("_")}
    assert set(SUPPORTED) | set(UNAVAILABLE) == public
    assert not set(SUPPORTED) & set(UNAVAILABLE)
    for name in SUPPORTED:
        assert name in vars(PageManager), name
    # Orbax's signature of all_steps(read=False) is accepted.
    assert inspect.signature(PageManager.all_steps).parameters.keys() == {"self", "read"}
