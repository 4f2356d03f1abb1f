"""The pure rules of a checkpoint directory's layout: step names, who wrote a step folder, and
the names of leaves in PyTrees Orbax wrote without Roxxel. No disk."""

from __future__ import annotations

import json

import pytest

from roxxel import _layout, _migrate
from roxxel._layout import Ignored, StepFolder

ROXXEL_META = json.dumps(
    {"item_handlers": {"arrays": "roxxel._orbax._ArrayHandler", "roxxel": "x.JsonHandler"}}
).encode()
PAGE_META = json.dumps(
    {
        "item_handlers": {
            "default": "orbax.checkpoint._src.handlers.standard_checkpoint_handler."
            "StandardCheckpointHandler",
            "metrics": "orbax.checkpoint.JsonCheckpointHandler",
        }
    }
).encode()
SINGLE_META = json.dumps(
    {"item_handlers": "orbax.checkpoint._src.handlers.StandardCheckpointHandler"}
).encode()


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("0", 0),
        ("7", 7),
        ("1200", 1200),
        ("007", None),
        ("+7", None),
        ("\u0667", None),  # an Arabic-Indic seven
        ("7a", None),
    ],
)
def test_step_names_are_plain_decimal_numbers(name: str, step: int | None) -> None:
    assert _layout.step_number(name) == step


def test_pending_saves_are_recognised_by_orbax_tmp_marker() -> None:
    assert _layout.pending_step("40.orbax-checkpoint-tmp-1795000000") == 40
    assert _layout.pending_step("x.orbax-checkpoint-tmp-1") is None
    assert _layout.pending_step("40") is False


def test_a_roxxel_step_is_known_by_its_item_even_with_damaged_metadata() -> None:
    entries = {"roxxel", "arrays", "_CHECKPOINT_METADATA"}
    assert _layout.classify_step("5", entries, ROXXEL_META) == StepFolder(5, "5", "roxxel")
    # Truncated metadata: still Roxxel's (so that it is reported damaged, not ignored).
    assert _layout.classify_step("5", entries, b'{"item_ha') == StepFolder(5, "5", "roxxel")


def test_a_step_of_the_page_sketch_is_an_orbax_step_with_its_pytree_item() -> None:
    found = _layout.classify_step("900", {"default", "metrics", "_CHECKPOINT_METADATA"}, PAGE_META)
    assert found == StepFolder(900, "900", "orbax", "default")


@pytest.mark.parametrize(
    ("entries", "metadata", "reason"),
    [
        ({".hydra", "main.log"}, None, "not a checkpoint"),
        ({"loss.png"}, None, "not a checkpoint"),
        (set(), None, "not a checkpoint"),
        (
            {"params", "opt", "_CHECKPOINT_METADATA"},
            json.dumps(
                {
                    "item_handlers": {
                        "params": "orbax.PyTreeCheckpointHandler",
                        "opt": "orbax.PyTreeCheckpointHandler",
                    }
                }
            ).encode(),
            "not one PyTree",
        ),
        ({"default"}, None, "without its _CHECKPOINT_METADATA"),
    ],
)
def test_other_folders_are_ignored_with_a_reason(
    entries: set[str], metadata: bytes | None, reason: str
) -> None:
    found = _layout.classify_step("7", entries, metadata)
    assert isinstance(found, Ignored)
    assert found.name == "7" and reason in found.reason


def test_a_non_canonical_step_name_is_ignored_even_when_it_holds_a_roxxel_step() -> None:
    found = _layout.classify_step("007", {"roxxel", "arrays"}, ROXXEL_META)
    assert isinstance(found, Ignored) and "007" in found.name and "plain numbers" in found.reason


def test_single_checkpoint_folders_of_the_nnx_guide() -> None:
    entries = {"_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "d"}
    assert _layout.is_single_checkpoint(entries, SINGLE_META)
    assert _layout.is_single_checkpoint({"_METADATA", "manifest.ocdbt"}, None)  # older Orbax
    assert not _layout.is_single_checkpoint({"7", "8"}, None)
    assert not _layout.is_single_checkpoint(entries, ROXXEL_META)


def test_names_of_a_saved_model_and_optimizer_tuple() -> None:
    saved = [
        "0/linear/kernel/value",
        "0/bn/mean/value",
        "1/opt_state/0/mu/linear/kernel/value",
        "1/step/value",
    ]
    assert _migrate.roxxel_names(saved) == {
        "model/linear/kernel": "0/linear/kernel/value",
        "model/bn/mean": "0/bn/mean/value",
        "optimizer/opt_state/0/mu/linear/kernel": "1/opt_state/0/mu/linear/kernel/value",
        "optimizer/step": "1/step/value",
    }
    assert _migrate.describe(saved) == "nnx.state((model, optimizer))"


def test_names_of_a_saved_model_alone() -> None:
    saved = ["linear/kernel/value", "layers/0/bias/raw_value", "count"]
    assert _migrate.roxxel_names(saved) == {
        "model/linear/kernel": "linear/kernel/value",
        "model/layers/0/bias": "layers/0/bias/raw_value",
        "model/count": "count",
    }
    assert _migrate.describe(saved) == "nnx.state(model)"


def test_a_model_whose_top_level_is_a_list_is_not_taken_for_a_tuple() -> None:
    # nnx.List at the top: keys 0 and 1, but 1 holds no optimizer state.
    saved = ["0/kernel/value", "1/kernel/value"]
    assert _migrate.roxxel_names(saved) == {
        "model/0/kernel": "0/kernel/value",
        "model/1/kernel": "1/kernel/value",
    }


def test_a_named_state_keeps_its_names() -> None:
    saved = ["model/linear/kernel/value", "optimizer/step/value"]
    assert _migrate.roxxel_names(saved) == {
        "model/linear/kernel": "model/linear/kernel/value",
        "optimizer/step": "optimizer/step/value",
    }
