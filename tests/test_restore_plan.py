"""The restore plan on its own: which saved leaf goes where, with no arrays and no disk."""

from __future__ import annotations

import pytest

from roxxel._restore import check_rename, plan, saved_name
from roxxel._state import STRING, LeafSpec
from roxxel.checkpoint import InvalidArgumentError

F32 = LeafSpec((4, 8), "float32")


def layer(root: str, name: str, spec: LeafSpec = F32) -> dict[str, LeafSpec]:
    bias = LeafSpec(spec.shape[-1:], spec.dtype)
    return {f"{root}/{name}/kernel": spec, f"{root}/{name}/bias": bias}


def model_and_moments(name: str) -> dict[str, LeafSpec]:
    return {
        **layer("model", name),
        **layer("optimizer/opt_state/0/mu", name),
        "optimizer/step": LeafSpec((), "uint32"),
    }


def test_saved_name_renames_whole_components_and_the_longest_key_wins() -> None:
    rename = {"enc": "encoder", "model/enc/kernel": "model/old/w"}
    assert saved_name("model/enc/bias", rename) == "model/encoder/bias"
    assert saved_name("model/enc/kernel", rename) == "model/old/w"
    assert saved_name("model/encore/bias", rename) == "model/encore/bias"  # not a component
    # A model path also renames the optimizer's mirror of it.
    assert saved_name("optimizer/opt_state/0/nu/enc/bias", {"model/enc": "model/e"}) == (
        "optimizer/opt_state/0/nu/e/bias"
    )


def test_plan_sorts_every_leaf_into_exactly_one_group() -> None:
    saved = {**model_and_moments("a"), **layer("model", "gone"), "model/w": F32}
    current = {
        **model_and_moments("a"),
        **layer("model", "new"),
        "model/w": LeafSpec((4, 16), "float32"),
    }
    current["model/a/bias"] = LeafSpec((8,), "bfloat16")
    report = plan(7, saved, current).report
    assert report.step == 7 and not report.applied
    assert report.missing == ("model/new/bias", "model/new/kernel")
    assert report.unused == ("model/gone/bias", "model/gone/kernel")
    assert report.mismatched == {"model/w": ((4, 8), (4, 16))}
    assert report.cast == {"model/a/bias": ("float32", "bfloat16")}
    groups = [*report.restored, *report.missing, *report.mismatched]
    assert sorted(groups) == sorted(current)
    assert report.suggested_rename == {"new": "gone"}
    assert report.summary() == (
        "step (not applied) 7: restored 5, missing 2, unused 2, mismatched 1, cast 1; some "
        "missing leaves are on disk under another name: restore with rename={'new': 'gone'}"
    )


def test_suggestions_need_the_same_shape_and_pick_the_most_common_pairing() -> None:
    saved = {**model_and_moments("enc"), **layer("model", "other", LeafSpec((3,), "float32"))}
    current = {**model_and_moments("encoder"), **layer("model", "fresh", LeafSpec((5,), "float32"))}
    report = plan(1, saved, current).report
    assert report.suggested_rename == {"encoder": "enc"}
    # Taking the suggestion leaves only the truly new layer missing.
    again = plan(1, saved, current, rename=dict(report.suggested_rename)).report
    assert set(again.missing) == {"model/fresh/bias", "model/fresh/kernel"}


def test_a_rename_falls_back_to_the_current_name_when_the_saved_name_is_absent() -> None:
    report = plan(1, model_and_moments("b"), model_and_moments("b"), rename={"b": "a"}).report
    assert report.exact and not report.renamed


def test_python_scalars_are_not_reported_as_cast_for_a_wider_type_of_the_same_kind() -> None:
    saved = {"model/epoch": LeafSpec((), "int32"), "model/rate": LeafSpec((), "float32")}
    current = {
        "model/epoch": LeafSpec((), "int64", python=True),
        "model/rate": LeafSpec((), "int64", python=True),
    }
    report = plan(1, saved, current).report
    assert report.cast == {"model/rate": ("float32", "int64")}


def test_keys_and_strings_never_cast() -> None:
    saved = {"model/k": LeafSpec((2,), "uint32", "threefry2x32"), "model/s": LeafSpec((), STRING)}
    current = {"model/k": LeafSpec((2,), "uint32"), "model/s": LeafSpec((), "int32")}
    report = plan(1, saved, current).report
    assert set(report.mismatched) == {"model/k", "model/s"}
    assert report.mismatch_text("model/k") == (
        "saved key<threefry2x32> data of shape (2,), current shape (2,) uint32"
    )


@pytest.mark.parametrize("rename", [{"a": ""}, {"": "a"}, {"a": 1}, ["a", "b"], "a"])
def test_a_malformed_rename_is_refused(rename: object) -> None:
    with pytest.raises(InvalidArgumentError, match="rename must map current names"):
        check_rename(rename)


def test_a_rename_key_unknown_everywhere_lists_the_current_names() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        plan(1, model_and_moments("a"), model_and_moments("a"), rename={"zz": "yy"})
    assert "rename key 'zz' matches no leaf of the current model" in str(info.value)
    assert "top-level names are ['a']" in str(info.value)
