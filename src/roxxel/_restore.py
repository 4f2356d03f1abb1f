"""How a saved tree maps onto the current model: a pure plan and the report of a restore.

The plan compares leaf paths, shapes and dtypes of what is on disk with the live model and
optimizer. Leaves present in both with the same shape are restored (cast when only the dtype
differs); leaves only in the model keep their current values (`missing`); leaves only on disk
are left alone (`unused`); leaves whose shape differs, PRNG keys of another implementation and
strings against numbers are `mismatched`. No array is read here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from ._errors import InvalidArgumentError
from ._state import LeafSpec

OnMismatch = Literal["error", "skip"]


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """What a restore did (or, for a dry run, would do), leaf by leaf.

    Paths are the current model's paths (`model/...`, `optimizer/...`), except `unused`, which
    lists paths as they are on disk.

    Attributes:
        step: the checkpoint step.
        restored: leaves set from the checkpoint.
        missing: leaves of the current model that the checkpoint lacks; they keep their values.
        unused: leaves on disk that the current model does not have.
        mismatched: leaves whose saved shape differs, as `path: (saved shape, current shape)`.
        cast: leaves restored with a dtype cast, as `path: (saved dtype, current dtype)`.
        renamed: leaves found under another name on disk, as `path: saved path`.
        mismatch_notes: for mismatched leaves of unchanged shape, what differs (a PRNG key of
            another implementation, a string against a number).
        suggested_rename: a `rename=` argument that would restore missing leaves from unused
            ones that differ only in one name and have the same shape (empty if none).
        applied: False for a dry run or a restore that stopped on an error.
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
    applied: bool = False

    @property
    def exact(self) -> bool:
        """True when every leaf on disk and in the model matched with no cast or rename."""
        return not (self.missing or self.unused or self.mismatched or self.cast or self.renamed)

    def summary(self) -> str:
        """One line: the counts of each kind of leaf (and a rename hint if one fits)."""
        parts = [f"restored {len(self.restored)}"]
        for name in ("missing", "unused", "mismatched", "cast", "renamed"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name} {len(items)}")
        verb = "step" if self.applied else "step (not applied)"
        line = f"{verb} {self.step}: " + ", ".join(parts)
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
            "suggested_rename": dict(self.suggested_rename),
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
        return "\n".join(lines)


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


def saved_name(path: str, rename: Mapping[str, str]) -> str:
    """The name under which the current leaf `path` is looked up on disk.

    A rename key matches a run of whole path components anywhere in the path (so
    `{"encoder": "enc"}` also renames the optimizer's `mu/encoder/...`); the longest key wins.
    A key that starts with `model/` also renames the optimizer's state for that part of the
    model, which mirrors the model's paths (`optimizer/opt_state/0/mu/<path in the model>`).
    """
    parts = path.split("/")
    for key in sorted(rename, key=lambda k: -len(k.split("/"))):
        old, new = key.split("/"), rename[key].split("/")
        if parts[0] == "optimizer" and old[0] == "model" and new[0] == "model":
            old, new = old[1:], new[1:]
        i = _find(parts, old)
        if i >= 0 and old:
            return "/".join(parts[:i] + new + parts[i + len(old) :])
    return path


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


def plan(
    step: int,
    saved: Mapping[str, LeafSpec],
    current: Mapping[str, LeafSpec],
    *,
    rename: Mapping[str, str] | None = None,
) -> RestorePlan:
    """Match saved leaves to current ones; see the module docstring for the rules.

    A renamed leaf whose saved name is not on disk but whose current name is (a checkpoint
    written after the rename) is read under its current name, so a `rename=` left in a
    training script keeps working for newer checkpoints.

    Raises:
        InvalidArgumentError: a rename key names nothing in the current model.
    """
    rename = rename or {}
    _check_rename_fits(rename, saved, current)
    reads: dict[str, str] = {}
    missing: list[str] = []
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    cast: dict[str, tuple[str, str]] = {}
    renamed: dict[str, str] = {}
    notes: dict[str, str] = {}
    used: set[str] = set()
    for path, spec in current.items():
        source = saved_name(path, rename)
        if source not in saved and path in saved:
            source = path
        if source not in saved:
            missing.append(path)
            continue
        used.add(source)
        stored = saved[source]
        if not stored.fits(spec):
            mismatched[path] = (stored.shape, spec.shape)
            if stored.shape == spec.shape:
                notes[path] = f"saved {stored.describe()}, current {spec.describe()}"
            continue
        if stored.casts_to(spec):
            cast[path] = (stored.dtype, spec.dtype)
        if source != path:
            renamed[path] = source
        reads[path] = source
    unused = tuple(sorted(p for p in saved if p not in used))
    report = RestoreReport(
        step=step,
        restored=tuple(sorted(reads)),
        missing=tuple(sorted(missing)),
        unused=unused,
        mismatched=mismatched,
        cast=cast,
        renamed=renamed,
        mismatch_notes=notes,
        suggested_rename=_suggest_rename(missing, unused, saved, current),
    )
    return RestorePlan(reads=reads, report=report)


def mismatch_message(report: RestoreReport, directory: str) -> str:
    """The error text for leaves whose saved shape does not fit the current model."""
    lines = [
        f"cannot restore step {report.step} from {directory}: {len(report.mismatched)} saved "
        "leaves do not fit the current model (the model and optimizer were not changed):"
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
    fixes.append("call plan_restore() with the same arguments for the full report")
    lines.append("To fix: " + "; or ".join(f"{i}) {fix}" for i, fix in enumerate(fixes, 1)) + ".")
    return "\n".join(lines)
