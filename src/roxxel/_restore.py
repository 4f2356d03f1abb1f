"""How a saved tree maps onto the current model: a pure plan and the report of a restore.

The plan compares leaf paths, shapes and dtypes of what is on disk with the live model and
optimizer. Leaves present in both with the same shape are restored (cast when only the dtype
differs); leaves only in the model keep their current values (`missing`); leaves only on disk
are left alone (`unused`); leaves whose shape differs, PRNG keys of another implementation and
strings against numbers are `mismatched`. No array is read here.

Which current leaves are the model's parameters (`nnx.Param`) is passed in as plain paths, so
the plan can say what fraction of them a restore sets. The optimizer's counters (its `step` and
the `count` of its transforms) are withheld when none of the state they count (no parameter,
no moment) is restored: a step count without its weights and moments would resume a fresh
model with a learning-rate schedule and a bias correction meant for the saved step.

Renames are suggested, never applied on their own: one name that differs (`{"enc":
"encoder"}`), or leading path components added or removed (the model wrapped into a parent
module, `{"model/inner": "model"}`, or unwrapped, `{"model": "model/inner"}`), the latter
checked by planning with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, Literal

from ._errors import InvalidArgumentError
from ._state import LeafSpec

OnMismatch = Literal["error", "skip"]


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """What a restore did (or, for a dry run, would do), leaf by leaf.

    Paths are the current model's paths (`model/...`, `optimizer/...`), except `unused`, which
    lists paths as they are on disk (for a weights file, its keys as `load_weights` reads them).

    Attributes:
        step: the checkpoint step (for `load_weights`, the step a `roxxel export` file was
            written from, 0 for other files).
        restored: leaves set from the checkpoint.
        missing: leaves of the current model that the checkpoint lacks; they keep their values.
        unused: leaves on disk that the current model does not have.
        mismatched: leaves whose saved shape differs, as `path: (saved shape, current shape)`.
        cast: leaves restored with a dtype cast, as `path: (saved dtype, current dtype)`.
        renamed: leaves found under another name on disk, as `path: saved path`.
        mismatch_notes: for mismatched leaves of unchanged shape, what differs (a PRNG key of
            another implementation, a string against a number).
        suggested_rename: a `rename=` argument that would restore missing leaves from unused
            ones of the same shape whose paths differ in one name, or in leading components
            added or removed (a model moved under a parent module: `{"model/inner": "model"}`;
            out of one: `{"model": "model/inner"}`). Empty if none; never applied by itself.
        withheld: leaves on disk that fit but were not restored, as `path: why`: the
            optimizer's counters (`optimizer/step`, the `count` of its transforms) when no
            parameter and no optimizer moment was restored.
        params_restored: how many of the model's parameters (`nnx.Param`) were restored.
        params_total: how many parameters the model has (0 when not known, as in a plan made
            without them).
        applied: False for a dry run or a restore that stopped on an error.
        source: the weights file `load_weights` read; None for a checkpoint step.
        layout: who wrote the step: "roxxel", or the Orbax layout it was migrated from (for
            example "orbax: nnx.state((model, optimizer)) in 900/default").
        extras: what happened to each extra (`Checkpointer(extras=...)`), by name: "restored";
            "absent" (passed now, not in the checkpoint: it keeps its current state); "unused"
            (in the checkpoint, not passed now). The leaves of array extras
            (`extras/<name>/...`) are also listed leaf by leaf above.
    """

    step: int
    restored: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
        default_factory=dict
    )
    cast: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    mismatch_notes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    suggested_rename: Mapping[str, str] = dataclasses.field(default_factory=dict)
    withheld: Mapping[str, str] = dataclasses.field(default_factory=dict)
    params_restored: int = 0
    params_total: int = 0
    applied: bool = False
    source: str | None = None
    layout: str = "roxxel"
    extras: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """True when every leaf on disk and in the model matched with no cast or rename."""
        return not (
            self.missing
            or self.unused
            or self.mismatched
            or self.cast
            or self.renamed
            or self.withheld
            or any(outcome != "restored" for outcome in self.extras.values())
        )

    @property
    def all_params_restored(self) -> bool:
        """True when every parameter of the model was restored (or it has none)."""
        return self.params_restored == self.params_total

    def params_text(self) -> str:
        """`3 of 4 model parameters restored` (`none of ...`, `all ...`); '' when unknown."""
        total = self.params_total
        if not total:
            return ""
        if self.params_restored == total:
            return f"all {total} model parameters restored"
        if not self.params_restored:
            return f"none of the {total} model parameters restored"
        percent = 100 * self.params_restored / total
        return f"{self.params_restored} of {total} model parameters restored ({percent:.0f}%)"

    def summary(self) -> str:
        """One line: the counts of each kind of leaf, the fraction of the model's parameters
        restored (unless the restore was exact), and a rename hint if one fits."""
        parts = [f"restored {len(self.restored)}"]
        for name in ("missing", "unused", "mismatched", "cast", "renamed", "withheld"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name} {len(items)}")
        if self.source is not None:
            what = self.source if self.applied else f"{self.source} (not applied)"
        else:
            what = f"step {self.step}" if self.applied else f"step (not applied) {self.step}"
        line = f"{what}: " + ", ".join(parts)
        if not self.exact and self.params_text():
            line += "; " + self.params_text()
        if self.extras:
            line += "; extras: " + ", ".join(f"{k} {v}" for k, v in self.extras.items())
        if self.suggested_rename:
            line += (
                "; some missing leaves are on disk under another name: restore with "
                f"rename={dict(self.suggested_rename)!r}"
            )
        return line

    def mismatch_text(self, path: str) -> str:
        """What differs for the mismatched leaf `path`."""
        if path in self.mismatch_notes:
            return self.mismatch_notes[path]
        saved, current = self.mismatched[path]
        return f"saved shape {saved}, current shape {current}"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain lists and dicts (for JSON, logs or a CLI)."""
        return {
            "step": self.step,
            "source": self.source,
            "applied": self.applied,
            "restored": list(self.restored),
            "missing": list(self.missing),
            "unused": list(self.unused),
            "mismatched": {
                path: {"saved": list(saved), "current": list(current)}
                for path, (saved, current) in self.mismatched.items()
            },
            "cast": {
                path: {"saved": saved, "current": current}
                for path, (saved, current) in self.cast.items()
            },
            "renamed": dict(self.renamed),
            "withheld": dict(self.withheld),
            "params_restored": self.params_restored,
            "params_total": self.params_total,
            "suggested_rename": dict(self.suggested_rename),
            "extras": dict(self.extras),
        }

    def __str__(self) -> str:
        lines = [self.summary()]
        for path in self.missing:
            lines.append(f"  missing     {path}  (not in the checkpoint; keeps its current value)")
        for path in self.unused:
            lines.append(f"  unused      {path}  (in the checkpoint; not in the model)")
        for path in self.mismatched:
            lines.append(f"  mismatched  {path}  {self.mismatch_text(path)}")
        for path, (saved_dtype, current_dtype) in self.cast.items():
            lines.append(f"  cast        {path}  {saved_dtype} -> {current_dtype}")
        for path, saved_path in self.renamed.items():
            lines.append(f"  renamed     {path}  <- {saved_path}")
        for path, why in self.withheld.items():
            lines.append(f"  withheld    {path}  (in the checkpoint; not restored: {why})")
        for name, outcome in self.extras.items():
            lines.append(f"  extra       {name}  {_EXTRA_TEXT.get(outcome, outcome)}")
        return "\n".join(lines)


_EXTRA_TEXT = {
    "restored": "restored",
    "absent": "absent (not in the checkpoint; keeps its current state)",
    "unused": "unused (in the checkpoint; not passed to this Checkpointer)",
}


@dataclasses.dataclass(frozen=True)
class RestorePlan:
    """The leaves to read: current path -> saved path, plus the report to give."""

    reads: Mapping[str, str]
    report: RestoreReport


def check_rename(rename: object) -> dict[str, str]:
    """Validate a rename map of `{current name: saved name}`."""
    if rename is None:
        return {}
    if not isinstance(rename, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k.strip("/") and v.strip("/")
        for k, v in rename.items()
    ):
        raise InvalidArgumentError(
            f"rename must map current names to saved names as non-empty strings, got {rename!r}. "
            'Example: rename={"encoder": "enc"} restores the saved "enc" into the model\'s '
            '"encoder"; a path such as {"model/head": "model/out"} works too.',
            name="rename",
            value=rename,
        )
    return {k.strip("/"): v.strip("/") for k, v in rename.items()}


def _find(parts: list[str], run: list[str]) -> int:
    """Index of the first occurrence of `run` as consecutive components of `parts`, or -1."""
    for i in range(len(parts) - len(run) + 1):
        if parts[i : i + len(run)] == run:
            return i
    return -1


def saved_name(path: str, rename: Mapping[str, str], *, mirror: int | None = None) -> str:
    """The name under which the current leaf `path` is looked up on disk.

    A rename key matches a run of whole path components anywhere in the path (so
    `{"encoder": "enc"}` also renames the optimizer's `mu/encoder/...`). Keys are tried
    longest first, and each one that matches components no longer key has taken applies too,
    so a prefix and a leaf name can be renamed together (`{"model": "model/bert", "kernel":
    "weight"}`), while the longer of two overlapping keys wins.
    A key that starts with `model/` (or is `model`) also renames the optimizer's state for that
    part of the model, which mirrors the model's paths
    (`optimizer/opt_state/0/mu/<path in the model>`). `mirror` is the index of the component
    where that mirrored model path starts in `path` (see `mirrors`); when it is known the key
    must match there, and only with it can `{"model": "model/inner"}` reach the optimizer.
    """
    parts = path.split("/")
    spans: list[tuple[int, int, list[str]]] = []  # components [start, end) -> new ones

    def free(start: int, end: int) -> bool:
        return all(
            (end <= a or start >= b) and not (start == end and a < start < b) for a, b, _ in spans
        )

    for key in sorted(rename, key=lambda k: -len(k.split("/"))):
        old, new = key.split("/"), rename[key].split("/")
        if parts[0] == "optimizer" and old[0] == "model" and new[0] == "model":
            old, new = old[1:], new[1:]
            if mirror is not None:
                if parts[mirror : mirror + len(old)] == old and free(mirror, mirror + len(old)):
                    spans.append((mirror, mirror + len(old), new))
                continue
        i = _find(parts, old)
        if i >= 0 and old and free(i, i + len(old)):
            spans.append((i, i + len(old), new))
    result: list[str] = []
    done = 0
    for start, end, new in sorted(spans, key=lambda span: (span[0], span[1])):
        result += parts[done:start] + new
        done = end
    return "/".join(result + parts[done:])


def mirrors(paths: Iterable[str]) -> dict[str, int]:
    """For each optimizer leaf that mirrors a model leaf, where the model's path starts in it.

    `optimizer/opt_state/0/mu/encoder/kernel` mirrors `model/encoder/kernel` from index 4; the
    longest mirrored model path wins. Leaves such as `optimizer/step` mirror nothing.
    """
    paths = list(paths)
    in_model = {p[len("model/") :] for p in paths if p.startswith("model/")}
    result: dict[str, int] = {}
    for path in paths:
        if not path.startswith("optimizer/"):
            continue
        parts = path.split("/")
        for i in range(2, len(parts)):
            if "/".join(parts[i:]) in in_model:
                result[path] = i
                break
    return result


def counters(paths: Iterable[str], mirrored: Collection[str]) -> list[str]:
    """The optimizer's counters: `optimizer/step` and each transform's `count`.

    A leaf that mirrors a model leaf (a moment of a parameter named `count`) is not one.
    """
    return [
        p
        for p in paths
        if p not in mirrored
        and (p == "optimizer/step" or (p.startswith("optimizer/") and p.endswith("/count")))
    ]


def _occurs(name: str, paths: Iterable[str]) -> bool:
    run = name.split("/")
    return any(_find(path.split("/"), run) >= 0 for path in paths)


def _check_rename_fits(
    rename: Mapping[str, str], saved: Mapping[str, LeafSpec], current: Mapping[str, LeafSpec]
) -> None:
    """Refuse a rename key that names nothing in the current model (a silent no-op otherwise)."""
    for key, value in rename.items():
        if _occurs(key, current):
            continue
        if _occurs(key, saved) and _occurs(value, current):
            hint = (
                f"rename maps current names to saved names, and {key!r} is a saved name, not one "
                f"of the current model. Did you mean rename={{{value!r}: {key!r}}}?"
            )
        else:
            tops = sorted({p.split("/")[1] for p in current if p.startswith("model/")})
            hint = (
                "rename maps names of the current model to names on disk; the current model's "
                f"top-level names are {tops}. Check the spelling, or call plan_restore() to see "
                "which leaves are missing and which are unused."
            )
        raise InvalidArgumentError(
            f"rename key {key!r} matches no leaf of the current model. {hint}",
            name="rename",
            value=dict(rename),
        )


def _suggest_rename(
    missing: Iterable[str],
    unused: Iterable[str],
    saved: Mapping[str, LeafSpec],
    current: Mapping[str, LeafSpec],
) -> dict[str, str]:
    """Names to rename so that missing leaves find unused ones of the same shape.

    A missing and an unused leaf pair up when their paths differ in exactly one component and
    their shapes are equal; the pairings found most often win, each name used once.
    """

    def patterns(path: str) -> Iterator[tuple[int, tuple[str, ...]]]:
        parts = path.split("/")
        for i in range(1, len(parts)):
            yield i, (*parts[:i], "*", *parts[i + 1 :])

    by_pattern: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    for path in unused:
        for pattern in patterns(path):
            by_pattern.setdefault(pattern, []).append(path)
    votes: dict[str, dict[str, int]] = {}
    for path in missing:
        parts = path.split("/")
        for pattern in patterns(path):
            i = pattern[0]
            for candidate in by_pattern.get(pattern, []):
                if saved[candidate].shape == current[path].shape:
                    old = candidate.split("/")[i]
                    tally = votes.setdefault(parts[i], {})
                    tally[old] = tally.get(old, 0) + 1
    # Strongest pairings first; each name on either side is used once.
    ranked = sorted(
        ((count, name, old) for name, tally in votes.items() for old, count in tally.items()),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    suggestion: dict[str, str] = {}
    for _, name, old in ranked:
        if name not in suggestion and old not in suggestion.values():
            suggestion[name] = old
    return dict(sorted(suggestion.items()))


@dataclasses.dataclass
class _Match:
    """Current leaves sorted against saved ones for one rename map."""

    reads: dict[str, str]
    missing: list[str]
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
    cast: dict[str, tuple[str, str]]
    renamed: dict[str, str]
    notes: dict[str, str]
    used: set[str]


def _match(
    saved: Mapping[str, LeafSpec],
    current: Mapping[str, LeafSpec],
    rename: Mapping[str, str],
    mirrored: Mapping[str, int],
) -> _Match:
    found = _Match({}, [], {}, {}, {}, {}, set())
    for path, spec in current.items():
        source = saved_name(path, rename, mirror=mirrored.get(path))
        if source not in saved and path in saved:
            source = path
        if source not in saved:
            found.missing.append(path)
            continue
        found.used.add(source)
        stored = saved[source]
        if not stored.fits(spec):
            found.mismatched[path] = (stored.shape, spec.shape)
            if stored.shape == spec.shape:
                found.notes[path] = f"saved {stored.describe()}, current {spec.describe()}"
            continue
        if stored.casts_to(spec):
            found.cast[path] = (stored.dtype, spec.dtype)
        if source != path:
            found.renamed[path] = source
        found.reads[path] = source
    return found


def _counted(reads: Collection[str], params: Collection[str], mirrored: Collection[str]) -> bool:
    """True when a parameter, or an optimizer leaf mirroring the model (a moment), is read."""
    return any(p in reads for p in params) or any(p in reads for p in mirrored)


WITHHELD_COUNTER = (
    "an optimizer counter, and no parameter or optimizer moment it counts was restored"
)
"""Why a counter is withheld: it would resume fresh weights with the saved step's
learning-rate schedule and bias correction."""


def prefix_candidates(
    missing: Iterable[str],
    unused: Iterable[str],
    saved: Mapping[str, LeafSpec],
    current: Mapping[str, LeafSpec],
) -> list[dict[str, str]]:
    """Renames for model paths that gained or lost a run of components, most votes first.

    A missing `model/inner/encoder/kernel` and an unused `model/encoder/kernel` of the same
    shape vote for `{"model/inner": "model"}` (the model was wrapped); the reverse pairing votes
    for `{"model": "model/inner"}` (it was unwrapped). The run may sit deeper
    (`model/body/inner/...` against `model/body/...`); the leaf name itself never moves. Only
    model paths vote: a model-path rename also renames the optimizer's mirror of them.
    """
    lost = {p for p in missing if p.startswith("model/")}
    spare = {p for p in unused if p.startswith("model/")}
    votes: dict[tuple[str, str], int] = {}

    def runs(path: str) -> Iterator[tuple[list[str], list[str], str]]:
        parts = path.split("/")
        for start in range(1, len(parts) - 1):
            for end in range(start + 1, len(parts)):
                yield parts[:start], parts[start:end], "/".join(parts[:start] + parts[end:])

    for path in lost:  # the current path has the extra run: it was wrapped
        for head, run, shorter in runs(path):
            if shorter in spare and saved[shorter].shape == current[path].shape:
                key = ("/".join(head + run), "/".join(head))
                votes[key] = votes.get(key, 0) + 1
    for path in spare:  # the saved path has the extra run: it was unwrapped
        for head, run, shorter in runs(path):
            if shorter in lost and current[shorter].shape == saved[path].shape:
                key = ("/".join(head), "/".join(head + run))
                votes[key] = votes.get(key, 0) + 1
    ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))
    return [{key: value} for (key, value), _ in ranked]


def plan(
    step: int,
    saved: Mapping[str, LeafSpec],
    current: Mapping[str, LeafSpec],
    *,
    rename: Mapping[str, str] | None = None,
    params: Collection[str] | None = None,
) -> RestorePlan:
    """Match saved leaves to current ones; see the module docstring for the rules.

    A renamed leaf whose saved name is not on disk but whose current name is (a checkpoint
    written after the rename) is read under its current name, so a `rename=` left in a
    training script keeps working for newer checkpoints.

    Args:
        step: the checkpoint step, for the report.
        saved: the leaves on disk.
        current: the leaves of the live model and optimizer.
        rename: `{current name: saved name}`.
        params: the current paths that are the model's parameters (`nnx.Param`); None when
            unknown (the report then counts none, and counters are withheld only when no
            model leaf and no moment is restored).

    Raises:
        InvalidArgumentError: a rename key names nothing in the current model.
    """
    rename = rename or {}
    _check_rename_fits(rename, saved, current)
    mirrored = mirrors(current)
    if params is None:
        counted: Collection[str] = [p for p in current if p.startswith("model/")]
        param_set: set[str] = set()
    else:
        param_set = {p for p in params if p in current}
        counted = param_set
    found = _match(saved, current, rename, mirrored)
    withheld: dict[str, str] = {}
    if not _counted(found.reads, counted, mirrored):
        for path in counters(found.reads, mirrored):
            withheld[path] = WITHHELD_COUNTER
            del found.reads[path]
            found.cast.pop(path, None)
            found.renamed.pop(path, None)
    unused = tuple(sorted(p for p in saved if p not in found.used))
    suggestion = _suggest(found, unused, saved, current, rename, mirrored, counted)
    report = RestoreReport(
        step=step,
        restored=tuple(sorted(found.reads)),
        missing=tuple(sorted(found.missing)),
        unused=unused,
        mismatched=found.mismatched,
        cast=found.cast,
        renamed=found.renamed,
        mismatch_notes=found.notes,
        suggested_rename=suggestion,
        withheld=dict(sorted(withheld.items())),
        params_restored=sum(1 for p in param_set if p in found.reads),
        params_total=len(param_set),
    )
    return RestorePlan(reads=found.reads, report=report)


def _suggest(
    found: _Match,
    unused: tuple[str, ...],
    saved: Mapping[str, LeafSpec],
    current: Mapping[str, LeafSpec],
    rename: Mapping[str, str],
    mirrored: Mapping[str, int],
    counted: Collection[str],
) -> dict[str, str]:
    """The best rename to suggest: one differing name, or a prefix added or removed.

    Each prefix candidate (at most three, by votes) is checked by planning with it on top of
    `rename`; one is suggested only when it restores more of the model (then more leaves)
    than both the plan as it is and the one-name suggestion.
    """
    if not (found.missing and unused):
        return {}
    by_name = _suggest_rename(found.missing, unused, saved, current)

    def score(extra: Mapping[str, str]) -> tuple[int, int]:
        trial = _match(saved, current, {**rename, **extra}, mirrored)
        return sum(1 for p in counted if p in trial.reads), len(trial.reads)

    best: dict[str, str] = {}
    best_score = score(by_name) if by_name else score({})
    for candidate in prefix_candidates(found.missing, unused, saved, current)[:3]:
        candidate_score = score(candidate)
        if candidate_score > best_score:
            best, best_score = candidate, candidate_score
    return best or by_name


def _cannot(report: RestoreReport, directory: str) -> str:
    """`cannot restore step 3 from DIR`, or `cannot load weights from FILE`."""
    if report.source is not None:
        return f"cannot load weights from {report.source}"
    return f"cannot restore step {report.step} from {directory}"


def _unchanged(report: RestoreReport) -> str:
    if report.source is not None:
        return "the model was not changed"
    return "the model and optimizer were not changed"


def mismatch_message(report: RestoreReport, directory: str) -> str:
    """The error text for leaves whose saved shape does not fit the current model."""
    lines = [
        f"{_cannot(report, directory)}: {len(report.mismatched)} saved leaves do not fit the "
        f"current model ({_unchanged(report)}):"
    ]
    for path in list(report.mismatched)[:10]:
        lines.append(f"  {path}: {report.mismatch_text(path)}")
    if len(report.mismatched) > 10:
        lines.append(f"  ... and {len(report.mismatched) - 10} more")
    fixes = [
        "restore into a model built with the saved shapes",
        'pass on_mismatch="skip" to restore everything else and keep these leaves at their '
        "current values",
    ]
    if report.suggested_rename:
        fixes.append(
            f"if a layer was renamed, pass rename={dict(report.suggested_rename)!r} (the saved "
            "leaves of that name have the current shapes)"
        )
    transposed = [
        path
        for path, (saved, current) in report.mismatched.items()
        if len(saved) == 2 and saved != current and saved == current[::-1]
    ]
    if transposed and report.source is not None:
        fixes.append(
            f"{transposed[0]} is stored transposed (PyTorch keeps a Linear weight as (out, in), "
            "Flax's kernel is (in, out)): write the file with those tensors transposed"
        )
    fixes.append(
        "see error.report for every leaf"
        if report.source is not None
        else "call plan_restore() with the same arguments for the full report"
    )
    lines.append("To fix: " + "; or ".join(f"{i}) {fix}" for i, fix in enumerate(fixes, 1)) + ".")
    return "\n".join(lines)


def moved_prefix(rename: Mapping[str, str]) -> str:
    """How a one-key prefix rename moves the model, in words ('' for any other rename)."""
    if len(rename) != 1:
        return ""
    ((key, value),) = rename.items()
    if key.startswith(value + "/"):
        return (
            f"paths under {value}/ gained a leading {key[len(value) + 1 :]}/ (moved into a module)"
        )
    if value.startswith(key + "/"):
        return f"paths under {key}/ lost a leading {value[len(key) + 1 :]}/ (taken out of a module)"
    return ""


def no_params_message(report: RestoreReport, directory: str) -> str:
    """The error text for a restore that would set none of the model's parameters."""
    others = len(report.restored)
    also = f"only {others} other leaves match" if others else "no other leaf matches either"
    held_in = "the file" if report.source is not None else "the checkpoint"
    stored, verb = ("in the file", "Load") if report.source is not None else ("on disk", "Restore")
    outcome = (
        "the model would keep its current weights"
        if report.source is not None
        else "training would resume from freshly initialized weights"
    )
    lines = [
        f"{_cannot(report, directory)}: none of the model's {report.params_total} parameters "
        f"(nnx.Param) is in {held_in} under its current path ({also}), so {outcome}. Nothing "
        "was changed."
    ]
    if report.suggested_rename:
        moved = moved_prefix(report.suggested_rename)
        cause = moved or "their paths changed"
        lines.append(
            f"The saved parameters are {stored} under other paths with the same shapes: "
            f"{cause}. {verb} with rename={dict(report.suggested_rename)!r}."
        )
    for title, paths in (
        (f"missing (in the model, not {stored})", report.missing),
        (f"unused ({stored}, not in the model)", report.unused),
    ):
        shown = [p for p in paths if p.startswith("model/")][:5]
        if shown:
            more = sum(1 for p in paths if p.startswith("model/")) - len(shown)
            lines.append(f"  {title}: " + ", ".join(shown) + (f", ... {more} more" if more else ""))
    fixes = []
    if report.suggested_rename:
        fixes.append(f"pass rename={dict(report.suggested_rename)!r}")
    else:
        fixes.append(
            f"check that {held_in} belongs to this model, and pass rename={{current name: "
            "saved name} for paths that changed"
        )
    fixes.append(
        "pass allow_partial=True to load only the leaves that match"
        if report.source is not None
        else "pass allow_partial=True to restore only the leaves that match (the optimizer's "
        "step and counts are still not restored without the state they count)"
    )
    lines.append("To fix: " + "; or ".join(f"{i}) {fix}" for i, fix in enumerate(fixes, 1)) + ".")
    return "\n".join(lines)
