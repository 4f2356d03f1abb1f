"""How a saved tree maps onto the current model: a pure plan and the report of a restore.

The plan compares leaf paths, shapes and dtypes of what is on disk with the live model and
optimizer. Leaves present in both with the same shape are restored (cast when only the dtype
differs); leaves only in the model keep their current values (`missing`); leaves only on disk
are left alone (`unused`); leaves whose shape differs are `mismatched`. No array is read here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

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
    applied: bool = False

    @property
    def exact(self) -> bool:
        """True when every leaf on disk and in the model matched with no cast or rename."""
        return not (self.missing or self.unused or self.mismatched or self.cast or self.renamed)

    def summary(self) -> str:
        """One line: the counts of each kind of leaf."""
        parts = [f"restored {len(self.restored)}"]
        for name in ("missing", "unused", "mismatched", "cast", "renamed"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name} {len(items)}")
        verb = "step" if self.applied else "step (not applied)"
        return f"{verb} {self.step}: " + ", ".join(parts)

    def __str__(self) -> str:
        lines = [self.summary()]
        for path in self.missing:
            lines.append(f"  missing     {path}  (not in the checkpoint; keeps its current value)")
        for path in self.unused:
            lines.append(f"  unused      {path}  (in the checkpoint; not in the model)")
        for path, (saved, current) in self.mismatched.items():
            lines.append(f"  mismatched  {path}  saved shape {saved}, current shape {current}")
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


def saved_name(path: str, rename: Mapping[str, str]) -> str:
    """The name under which the current leaf `path` is looked up on disk.

    A rename key matches a run of whole path components anywhere in the path (so
    `{"encoder": "enc"}` also renames the optimizer's `mu/encoder/...`); the longest key wins.
    """
    parts = path.split("/")
    for key in sorted(rename, key=lambda k: -len(k.split("/"))):
        old = key.split("/")
        new = rename[key].split("/")
        for i in range(len(parts) - len(old) + 1):
            if parts[i : i + len(old)] == old:
                return "/".join(parts[:i] + new + parts[i + len(old) :])
    return path


def plan(
    step: int,
    saved: Mapping[str, LeafSpec],
    current: Mapping[str, LeafSpec],
    *,
    rename: Mapping[str, str] | None = None,
) -> RestorePlan:
    """Match saved leaves to current ones; see the module docstring for the rules."""
    rename = rename or {}
    reads: dict[str, str] = {}
    missing: list[str] = []
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    cast: dict[str, tuple[str, str]] = {}
    renamed: dict[str, str] = {}
    used: set[str] = set()
    for path, spec in current.items():
        source = saved_name(path, rename)
        if source not in saved:
            missing.append(path)
            continue
        used.add(source)
        stored = saved[source]
        is_key = stored.key_impl is not None or spec.key_impl is not None
        if stored.shape != spec.shape or (is_key and stored != spec):
            # PRNG keys are never cast: a key of another implementation is a mismatch.
            mismatched[path] = (stored.shape, spec.shape)
            continue
        if stored.dtype != spec.dtype:
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
    )
    return RestorePlan(reads=reads, report=report)


def mismatch_message(report: RestoreReport, directory: str) -> str:
    """The error text for leaves whose saved shape does not fit the current model."""
    lines = [
        f"cannot restore step {report.step} from {directory}: {len(report.mismatched)} saved "
        "leaves have a different shape in the current model (the model and optimizer were not "
        "changed):"
    ]
    for path, (saved, current) in list(report.mismatched.items())[:10]:
        lines.append(f"  {path}: saved shape {saved}, current shape {current}")
    if len(report.mismatched) > 10:
        lines.append(f"  ... and {len(report.mismatched) - 10} more")
    lines.append(
        "To fix: 1) restore into a model built with the saved shapes; or 2) pass "
        'on_mismatch="skip" to restore everything else and keep these leaves at their current '
        "values; or 3) pass rename={...} if a layer was renamed."
    )
    return "\n".join(lines)
