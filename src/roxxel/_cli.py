"""The `roxxel` command: look inside checkpoint directories, compare, verify and export them.

```
roxxel ls DIR [--json]                      the checkpoints: step, metrics, marks, size, age
roxxel show DIR [--step N | --best]         the saved arrays of one step: path, shape, dtype
roxxel diff DIR --step A --step B           what changed between two steps
roxxel diff DIR [--step N] --model M:F      what restoring a step into a model would do
roxxel verify DIR [--step N]                check every checkpoint against its checksums
roxxel export DIR OUT [--step N | --best]   weights to safetensors or .npz (checked first)
```

Exit codes (also in `roxxel --help`): 0 success; 1 differences found (`diff`) or an integrity
problem (`verify`; `export`, which checks the step's checksums first); 2 bad usage; 3 the
checkpoint directory does not exist; 4 it holds no committed checkpoint (or none with the
ranking metric, for `--best`); 5 the step asked for is not there; 6 the storage did not
answer; 130 interrupted.

This module is a thin client of the library and imports nothing heavy at the top: `roxxel
--help` must start fast, without JAX. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TextIO

from ._errors import (
    CheckpointPathError,
    CorruptCheckpointError,
    InvalidArgumentError,
    NoCheckpointError,
    RoxxelError,
    StepNotFoundError,
    StorageUnreachableError,
)

if TYPE_CHECKING:
    from ._inspect import CheckpointDir
    from ._restore import RestoreReport
    from ._state import LeafSpec

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_USAGE = 2
EXIT_NO_DIRECTORY = 3
EXIT_NO_CHECKPOINT = 4
EXIT_NO_STEP = 5
EXIT_STORAGE = 6
EXIT_INTERRUPTED = 130

_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    success
  {EXIT_DIFFERENT}    diff: the two sides differ; verify, export: a checkpoint failed its check
  {EXIT_USAGE}    bad usage (unknown option, bad value, output file exists)
  {EXIT_NO_DIRECTORY}    the checkpoint directory does not exist
  {EXIT_NO_CHECKPOINT}    the directory holds no committed checkpoint (--best: none ranked)
  {EXIT_NO_STEP}    the step asked for is not a committed checkpoint
  {EXIT_STORAGE}    the storage (an s3:// or gs:// endpoint) did not answer
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


class UsageError(Exception):
    """A command-line mistake that argparse cannot see (exit code 2)."""


# ------------------------------------------------------------------------- progress bar
class ProgressBar:
    """A one-line progress bar on stderr: redrawn in place on a terminal; otherwise a line
    every 10% for large jobs (at least `large_bytes`), and nothing for small ones.

    `mode` is "auto" (the rule above), "always" or "never".
    """

    def __init__(
        self, label: str, *, stream: TextIO, mode: str = "auto", large_bytes: int = 1 << 30
    ) -> None:
        self.label = label
        self.stream = stream
        self.mode = mode
        self.large_bytes = large_bytes
        self._enabled: bool | None = None
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_tenth = -1
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if self._enabled is None:
            self._enabled = self.mode == "always" or (
                self.mode == "auto" and (self._tty or total >= self.large_bytes)
            )
        if not self._enabled:
            return
        fraction = 1.0 if total <= 0 else min(1.0, done / total)
        text = f"{self.label} {_bar(fraction)} {fraction:4.0%} {_size(done)} / {_size(total)}"
        if self._tty:
            self.stream.write("\r" + text)
            self._drawn = True
        elif int(fraction * 10) > self._last_tenth:
            self._last_tenth = int(fraction * 10)
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _bar(fraction: float, width: int = 24) -> str:
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _size(size: int | None) -> str:
    from ._inspect import human_bytes

    return human_bytes(size)


# --------------------------------------------------------------------------- helpers
def _table(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if right[i] else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _format_metric(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}"


def _open(args: argparse.Namespace) -> CheckpointDir:
    from ._inspect import CheckpointDir

    return CheckpointDir(
        args.directory,
        best_metric=getattr(args, "best_metric", "loss") or None,
        best_mode=getattr(args, "best_mode", "min"),
    )


def _chosen_step(checkpoints: CheckpointDir, args: argparse.Namespace) -> int:
    step = args.step
    if isinstance(step, list):
        step = step[0] if step else None
    return checkpoints.choose_step(step, best=getattr(args, "best", False))


def _integrity(directory: str, progress: Any) -> Any:
    """`roxxel.checkpoint.verify(directory)` (local directories and object stores)."""
    from ._integrity import verify

    return verify(directory, progress=progress)


def _integrity_word(result: Any) -> str:
    """`ok` (checksums match), `unverified` (no checksums recorded) or `BAD (n problems)`."""
    if not result.ok:
        return f"BAD ({len(result.problems)} problems)"
    return "ok" if result.files_checked > 0 else "unverified"


# ------------------------------------------------------------------------------ ls
def cmd_ls(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    remote = getattr(args, "remote", None)
    if remote is None:
        return _ls_one(args, out, err)
    import io

    # Two tiers: each is listed as `ls` lists one directory; a tier that cannot be listed
    # (an empty local tier on a new machine, an unreachable remote) is reported, not fatal.
    codes: dict[str, int] = {}
    texts: dict[str, str] = {}
    tiers = (("local", args.directory), ("remote", remote))
    for tier, directory in tiers:
        sub = argparse.Namespace(**{**vars(args), "directory": directory, "remote": None})
        buffer = io.StringIO()
        try:
            codes[tier] = _ls_one(sub, buffer, err)
        except (RoxxelError, OSError) as exc:
            err.write(f"roxxel: {tier} tier: {exc}\n")
            codes[tier] = EXIT_NO_CHECKPOINT
        texts[tier] = buffer.getvalue()
    if args.json:
        json.dump(
            {tier: json.loads(texts[tier]) if texts[tier].strip() else None for tier, _ in tiers},
            out,
            indent=2,
        )
        out.write("\n")
    else:
        for tier, directory in tiers:
            out.write(f"{tier} tier: {directory}\n")
            out.write(texts[tier] or "  (no checkpoint)\n")
    return EXIT_OK if EXIT_OK in codes.values() else codes["local"]


def _ls_one(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ._inspect import age

    with _open(args) as checkpoints:
        entries = checkpoints.entries()
        if not any(entry.layout != "ignored" for entry in entries) and not args.json:
            for entry in entries:
                err.write(f"ignored {entry.name}/: {entry.note}\n")
        if not any(entry.layout != "ignored" for entry in entries):
            if args.json:  # scripts still get JSON on stdout; the error goes to stderr
                json.dump({"directory": checkpoints.directory, "checkpoints": []}, out, indent=2)
                out.write("\n")
            checkpoints.require_checkpoints()  # raises, saying what the folder holds
        integrity: dict[int, Any] = {}
        if args.verify and any(entry.committed for entry in entries):
            bar = ProgressBar("verifying", stream=err, mode=args.progress)
            try:
                results = _integrity(checkpoints.directory, bar)
            finally:
                bar.close()
            integrity = {r.step: r for r in results or []}
        directory = checkpoints.directory
    now = time.time()

    def integrity_of(entry: Any) -> str:
        if not entry.committed:
            return "-"
        result = integrity.get(entry.step)
        if result is None:
            return "-"
        return _integrity_word(result)

    if args.json:
        records = [
            {
                "step": entry.step,
                "name": entry.name,
                "state": _state_word(entry),
                "layout": entry.layout,
                "note": entry.note or None,
                "metrics": dict(entry.metrics) if entry.metrics is not None else None,
                "best": entry.best,
                "latest": entry.latest,
                "temporary": entry.temporary,
                "size_bytes": entry.size_bytes,
                "committed_at": entry.committed_at,
                "integrity": (
                    None
                    if entry.step not in integrity or not entry.committed
                    else {
                        "state": _integrity_word(integrity[entry.step]).split()[0].lower(),
                        "ok": integrity[entry.step].ok,
                        "files_checked": integrity[entry.step].files_checked,
                        "problems": list(integrity[entry.step].problems),
                    }
                ),
            }
            for entry in entries
        ]
        json.dump({"directory": directory, "checkpoints": records}, out, indent=2)
        out.write("\n")
        return EXIT_OK if any(entry.committed for entry in entries) else EXIT_NO_CHECKPOINT

    width = max(len(_state_word(entry)) for entry in entries)

    metric_names = sorted(
        {name for entry in entries for name in (entry.metrics or {})},
        key=lambda name: (name != args.best_metric, name),
    )
    header = ["STEP", "STATE", "MARKS", *[name.upper() for name in metric_names]]
    header += ["SIZE", "AGE", "INTEGRITY"]
    rows: list[list[str]] = [header]
    for entry in entries:
        marks = ",".join(
            m
            for m, on in (
                ("best", entry.best),
                ("latest", entry.latest),
                ("temporary", entry.temporary),
            )
            if on
        )
        metrics = entry.metrics or {}
        rows.append(
            [
                str(entry.step) if entry.step >= 0 else "?",
                _state_word(entry).ljust(width),
                marks or "-",
                *[_format_metric(metrics.get(name)) for name in metric_names],
                _size(entry.size_bytes),
                age(entry.committed_at, now=now),
                integrity_of(entry),
            ]
        )
    right = [True, False, False, *[True] * len(metric_names), True, True, False]
    out.write(f"{directory}\n")
    for line in _table(rows, right):
        out.write(line + "\n")
    committed = [e for e in entries if e.committed]
    ignored = [e for e in entries if e.layout == "ignored"]
    pending = [e for e in entries if not e.committed and e.layout != "ignored"]
    migrated = [e for e in committed if e.layout != "roxxel"]
    total = sum(e.size_bytes or 0 for e in entries)
    summary = f"{len(committed)} committed"
    if migrated:
        summary += f" ({len(migrated)} written by Orbax without Roxxel, restorable)"
    if pending:
        summary += f", {len(pending)} incomplete (a save that never finished)"
    if ignored:
        summary += f", {len(ignored)} ignored (not Roxxel's: never counted, restored or deleted)"
    if args.best_metric:
        summary += f"; best by {args.best_metric} ({args.best_mode})"
    out.write(f"{summary}; {_size(total)} in all\n")
    for entry in ignored:
        out.write(f"ignored {entry.name}/: {entry.note}\n")
    if not committed:
        return _fail(
            err,
            f"no committed checkpoint in {directory}: only saves that never finished. The "
            "training process stopped before committing them; resume training to save again.",
            EXIT_NO_CHECKPOINT,
        )
    return EXIT_OK


def _state_word(entry: Any) -> str:
    if entry.layout == "ignored":
        return "ignored"
    if not entry.committed:
        return "incomplete"
    return "committed" if entry.layout == "roxxel" else f"committed ({entry.layout})"


# ---------------------------------------------------------------------------- show
def cmd_show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import _extras
    from ._inspect import leaf_bytes

    with _open(args) as checkpoints:
        step = _chosen_step(checkpoints, args)
        specs = checkpoints.leaf_specs(step)
        metrics = checkpoints.metrics(step)
        extras = checkpoints.extras(step)
        directory = checkpoints.directory
    if args.json:
        json.dump(
            {
                "directory": directory,
                "step": step,
                "metrics": metrics,
                "leaves": [
                    {
                        "path": path,
                        "shape": list(spec.shape),
                        "dtype": spec.dtype,
                        "bytes": leaf_bytes(spec),
                        "key_impl": spec.key_impl,
                    }
                    for path, spec in specs.items()
                ],
                "extras": [
                    {"name": name, "kind": kind, "state": _extras.encode(state, name)}
                    for name, (kind, state) in extras.items()
                ],
            },
            out,
            indent=2,
        )
        out.write("\n")
        return EXIT_OK
    shown = ", ".join(f"{k}={_format_metric(v)}" for k, v in (metrics or {}).items())
    out.write(f"step {step} of {directory}" + (f" ({shown})" if shown else "") + "\n")
    rows = [["PATH", "SHAPE", "DTYPE", "BYTES"]]
    totals: dict[str, tuple[int, int, int]] = {}
    for path, spec in specs.items():
        size = leaf_bytes(spec)
        dtype = spec.dtype + (f" (key {spec.key_impl})" if spec.key_impl else "")
        rows.append([path, _shape(spec.shape), dtype, f"{size:,}"])
        root = path.split("/", 1)[0]
        count, elements, total = totals.get(root, (0, 0, 0))
        elements += _elements(spec)
        totals[root] = (count + 1, elements, total + size)
    for line in _table(rows, [False, True, False, True]):
        out.write(line + "\n")
    for root, (count, elements, size) in totals.items():
        out.write(f"{root}: {count} arrays, {elements:,} values, {_size(size)}\n")
    all_count = sum(t[0] for t in totals.values())
    all_size = sum(t[2] for t in totals.values())
    out.write(f"total: {all_count} arrays, {_size(all_size)}\n")
    for line in _extras_lines(extras):
        out.write(line + "\n")
    return EXIT_OK


def _extras_lines(extras: dict[str, tuple[str, Any]]) -> list[str]:
    """`extras:` and one line per extra: name, kind, and its saved state (JSON kinds)."""
    from . import _extras

    if not extras:
        return []
    lines = [f"extras by name ({len(extras)}):"]
    width = max(len(name) for name in extras)
    for name, (kind, state) in extras.items():
        text = f"  {name:<{width}}  {_extras.describe(kind)}"
        if state is None:
            text += f"  (arrays under {_extras.ROOT}/{name}/)"
        else:
            shown = json.dumps(_extras.encode(state, name), sort_keys=True)
            text += "  " + (shown if len(shown) <= 200 else shown[:197] + "...")
        lines.append(text)
    return lines


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _elements(spec: LeafSpec) -> int:
    count = 1
    for dim in spec.shape:
        count *= dim
    return count


# ---------------------------------------------------------------------------- diff
def cmd_diff(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import _restore

    steps = args.step or []
    if args.model is None and len(steps) != 2:
        raise UsageError(
            f"diff needs two steps (--step A --step B) or a model (--model module:factory); "
            f"got {len(steps)} --step. Example: roxxel diff {args.directory} --step 100 "
            "--step 200"
        )
    if args.model is not None and len(steps) > 1:
        raise UsageError(
            "with --model, diff compares one step (--step N, --best, or the newest by default) "
            f"with the model; got {len(steps)} --step options."
        )
    with _open(args) as checkpoints:
        if args.model is None:
            first, second = (checkpoints.choose_step(s) for s in steps)
            current = checkpoints.leaf_specs(first)
            saved = checkpoints.leaf_specs(second)
            report = _restore.plan(second, saved, current).report
            title = f"step {first} -> step {second} in {checkpoints.directory}"
        else:
            step = _chosen_step(checkpoints, args)
            current, params = _model_specs(args.model)
            saved = checkpoints.leaf_specs(step)
            report = _restore.plan(step, saved, current, params=params).report
            title = f"restoring step {step} of {checkpoints.directory} into {args.model}()"
    if args.json:
        json.dump({"title": title, "exact": report.exact, **report.to_dict()}, out, indent=2)
        out.write("\n")
    elif args.model is None:
        _write_step_diff(out, title, report, saved, current)
    else:
        out.write(title + "\n" + str(report) + "\n")
        if report.exact:
            out.write("every leaf matches: the restore is exact\n")
    return EXIT_OK if report.exact else EXIT_DIFFERENT


def _write_step_diff(
    out: TextIO,
    title: str,
    report: RestoreReport,
    saved: Mapping[str, LeafSpec],
    current: Mapping[str, LeafSpec],
) -> None:
    """Step A -> step B in diff words; the same plan a restore of B into A's model makes."""
    out.write(title + "\n")
    lines = []
    for path in report.unused:
        spec = saved[path]
        lines.append(f"  added       {path}  {_shape(spec.shape)} {spec.dtype}")
    for path in report.missing:
        spec = current[path]
        lines.append(f"  removed     {path}  {_shape(spec.shape)} {spec.dtype}")
    for path, (new_shape, old_shape) in report.mismatched.items():
        lines.append(f"  shape       {path}  {_shape(old_shape)} -> {_shape(new_shape)}")
    for path, (new_dtype, old_dtype) in report.cast.items():
        lines.append(f"  dtype       {path}  {old_dtype} -> {new_dtype}")
    for line in sorted(lines, key=lambda text: text.split()[1]):
        out.write(line + "\n")
    same = len(report.restored) - len(report.cast)
    out.write(
        f"{len(report.unused)} added, {len(report.missing)} removed, "
        f"{len(report.mismatched)} changed shape, {len(report.cast)} changed dtype, "
        f"{same} unchanged\n"
    )


def _model_specs(spec: str) -> tuple[dict[str, LeafSpec], set[str]]:
    """Import `module:factory`, call it, and return the leaf specs of what it built, and
    the paths of its parameters (`nnx.Param`), as `restore()` plans with them."""
    from flax import nnx

    from . import _state

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(
            f"--model must be module:factory (a function that returns a model, or "
            f"(model, optimizer)), got {spec!r}. Example: --model mypkg.train:build"
        )
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            loader = importlib.util.spec_from_file_location("_roxxel_model", module_name)
            if loader is None or loader.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"--model {spec}: cannot import {module_name!r}: {exc}. Run from the folder that "
            "holds the module, or pass a file path: --model path/to/train.py:build"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(
            f"--model {spec}: {module_name} has no function {attr!r}. Name a function that "
            "builds the model, e.g. def build(): return model, optimizer"
        )
    built = factory()
    if isinstance(built, tuple) and len(built) == 2:
        model, optimizer = built
    else:
        model, optimizer = built, None
    if not isinstance(model, nnx.Module) or not (
        optimizer is None or isinstance(optimizer, nnx.Optimizer)
    ):
        raise UsageError(
            f"--model {spec}: {attr}() returned {type(built).__name__}; it must return an "
            "nnx.Module, or a (model, nnx.Optimizer) pair."
        )
    live = _state.variables(model, optimizer)
    specs = {path: _state.spec_of(variable.get_value()) for path, variable in live.items()}
    params = {
        path
        for path, variable in live.items()
        if path.startswith("model/") and isinstance(variable, nnx.Param)
    }
    return specs, params


# -------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Pure file reading: neither JAX nor Orbax is imported, so this starts fast.
    from ._inspect import no_checkpoint_error
    from ._integrity import verify
    from ._paths import resolve

    bar = ProgressBar("verifying", stream=err, mode=args.progress)
    try:
        results = verify(args.directory, step=args.step, progress=bar)
    finally:
        bar.close()
    directory = resolve(args.directory, create=False)
    if not results:
        raise no_checkpoint_error(directory)
    bad = 0
    for result in results:
        if result.ok and result.files_checked == 0:
            notes = "; ".join(result.problems) or "no checksums recorded"
            out.write(f"step {result.step}: unverified ({notes})\n")
        elif result.ok:
            out.write(f"step {result.step}: ok ({result.files_checked} files)\n")
        else:
            bad += 1
            out.write(f"step {result.step}: FAILED ({len(result.problems)} problems)\n")
            for problem in result.problems:
                out.write(f"  {problem}\n")
    if bad:
        out.write(
            f"{bad} of {len(results)} checkpoints failed verification in {directory}. "
            "Restore another step (roxxel ls lists them), or delete the damaged ones.\n"
        )
        return EXIT_DIFFERENT
    out.write(f"all {len(results)} checkpoints ok in {directory}\n")
    return EXIT_OK


# -------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import _export
    from ._inspect import leaf_bytes

    target = os.path.abspath(args.out)
    fmt: Literal["safetensors", "npz"] = args.format or _format_from_suffix(target)
    if os.path.isdir(target):
        raise UsageError(
            f"{target} is a folder; export writes one file. Name a file, e.g. "
            f"{os.path.join(target, 'weights.' + fmt)}"
        )
    if os.path.exists(target) and not args.force:
        raise UsageError(f"{target} already exists. Pass --force to replace it.")
    with _open(args) as checkpoints:
        step = _chosen_step(checkpoints, args)
        specs = checkpoints.leaf_specs(step)
        roots = ("model/", "optimizer/") if args.optimizer else ("model/",)
        paths = [path for path in specs if path.startswith(roots)]
        if fmt == "safetensors":
            try:
                for path in paths:
                    _export.safetensors_dtype(specs[path].dtype, path)
            except _export.UnsupportedDtypeError as exc:
                raise UsageError(str(exc)) from None
        if args.verify:
            problems = _damage(checkpoints.listing().path(step), step, err, args.progress)
            if problems:
                return _fail(
                    err, _export_refused(checkpoints.directory, step, problems), EXIT_DIFFERENT
                )
        shapes = {
            path: (
                specs[path].shape,
                specs[path].dtype,
                leaf_bytes(specs[path]) // max(1, _elements(specs[path])),
            )
            for path in paths
        }
        total = sum(leaf_bytes(specs[path]) for path in paths)
        bar = ProgressBar(f"exporting step {step}", stream=err, mode=args.progress)
        done = 0

        def chunks() -> Any:
            nonlocal done
            bar(0, total)
            for chunk in checkpoints.read_chunks(step, paths):
                yield chunk
                done += sum(int(array.nbytes) for array in chunk.values())
                bar(done, total)

        metadata = {"roxxel_step": str(step), "roxxel_source": checkpoints.directory}
        keys = {path: specs[path].key_impl for path in paths if specs[path].key_impl}
        if keys:  # load_weights wraps these again as PRNG keys of their implementation
            metadata["roxxel_keys"] = json.dumps(keys, sort_keys=True)
        try:
            _export.write(target, fmt, shapes, chunks(), metadata=metadata)
        except CorruptCheckpointError as exc:  # a shard failed its CRC while it was read
            problems = exc.problems or (str(exc),)
            message = _export_refused(checkpoints.directory, step, problems, while_reading=True)
            return _fail(err, message, EXIT_DIFFERENT)
        finally:
            bar.close()
    out.write(f"wrote {len(paths)} arrays ({_size(total)}) of step {step} to {target} ({fmt})\n")
    return EXIT_OK


def _damage(step_dir: str, step: int, err: TextIO, progress: str) -> tuple[str, ...]:
    """The problems the deep checksum check finds in `step`, in its folder `step_dir` (none
    for a step saved without checksums)."""
    from ._integrity import check, recorded_bytes

    total = recorded_bytes(step_dir)
    bar = ProgressBar(f"verifying step {step}", stream=err, mode=progress)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        bar(done, total)

    try:
        bar(0, total)
        result = check(step_dir, step, on_bytes=advance)
    finally:
        bar.close()
    return () if result.ok else result.problems


def _export_refused(
    directory: str, step: int, problems: Sequence[str], *, while_reading: bool = False
) -> str:
    """Why export wrote nothing: the damaged files of `step`, and what to do instead."""
    shown = "".join(f"\n  {problem}" for problem in problems[:10])
    if len(problems) > 10:
        shown += f"\n  ... and {len(problems) - 10} more"
    if while_reading:
        anyway = (
            "The shards of the array data are checked as they are read, with or without "
            "--no-verify, so a damaged one cannot be exported."
        )
    else:
        anyway = "Pass --no-verify to skip this check of the whole step."
    return (
        f"step {step} in {directory} is damaged: {len(problems)} problem(s) against the "
        f"checksums recorded when it was saved:{shown}\nNothing was written. Export another "
        f"step (roxxel ls {directory} lists them; roxxel verify {directory} checks them all). "
        + anyway
    )


def _format_from_suffix(target: str) -> Literal["safetensors", "npz"]:
    suffix = os.path.splitext(target)[1].lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".npz":
        return "npz"
    raise UsageError(
        f"cannot tell the format of {target!r} from its name. Pass --format safetensors or "
        "--format npz, or end the name with .safetensors or .npz."
    )


# -------------------------------------------------------------------------- parser
def _step_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a step is a non-negative integer, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a step is a non-negative integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `roxxel` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="roxxel",
        description="Look inside Roxxel checkpoint directories: list, show, compare, verify "
        "and export checkpoints.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"roxxel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, handler: Callable[..., int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        sub.add_argument("directory", metavar="DIR", help="the checkpoint directory")
        return sub

    def ranking(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--best-metric",
            default="loss",
            metavar="NAME",
            help="the metric that ranks checkpoints for 'best' (default: loss)",
        )
        sub.add_argument(
            "--best-mode",
            choices=("min", "max"),
            default="min",
            help="min if a lower metric is better (default), max if a higher one is",
        )

    def which_step(sub: argparse.ArgumentParser) -> None:
        group = sub.add_mutually_exclusive_group()
        group.add_argument("--step", type=_step_value, metavar="N", help="this step")
        group.add_argument("--best", action="store_true", help="the best step by --best-metric")
        ranking(sub)

    def progress(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--progress",
            choices=("auto", "always", "never"),
            default="auto",
            help="progress bar on stderr (auto: on a terminal, or for a large job)",
        )

    ls = command("ls", "list the checkpoints of a directory", cmd_ls)
    ls.add_argument("--json", action="store_true", help="print JSON for scripts")
    ls.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the checksum check (the INTEGRITY column then shows '-')",
    )
    ls.add_argument(
        "--remote",
        metavar="URL",
        help="the remote tier of a two-tier checkpoint (DIRECTORY is then its local tier): "
        "list both",
    )
    ranking(ls)
    progress(ls)

    show = command("show", "show the saved arrays of one step (default: the newest)", cmd_show)
    which_step(show)
    show.add_argument("--json", action="store_true", help="print JSON for scripts")

    diff = command(
        "diff",
        "compare two steps (--step A --step B), or a step with a model (--model module:factory)",
        cmd_diff,
    )
    diff_step = diff.add_mutually_exclusive_group()
    diff_step.add_argument(
        "--step", type=_step_value, action="append", metavar="N", help="a step (give two)"
    )
    diff_step.add_argument("--best", action="store_true", help="with --model: the best step")
    ranking(diff)
    diff.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="a function returning a model or (model, optimizer); shows what restoring "
        "the step into it would do",
    )
    diff.add_argument("--json", action="store_true", help="print JSON for scripts")

    verify = command("verify", "check checkpoints against their checksums", cmd_verify)
    verify.add_argument("--step", type=_step_value, metavar="N", help="only this step")
    progress(verify)

    export = command("export", "export the weights of a step to safetensors or .npz", cmd_export)
    export.add_argument("out", metavar="OUT", help="the file to write")
    which_step(export)
    export.add_argument(
        "--format",
        choices=("safetensors", "npz"),
        help="the file format (default: from OUT's suffix)",
    )
    export.add_argument("--optimizer", action="store_true", help="include the optimizer state too")
    export.add_argument("--force", action="store_true", help="replace OUT if it exists")
    export.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the checksum check of the whole step before export (shards of the array "
        "data are still checked as they are read)",
    )
    progress(export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `roxxel` command with `argv` (default: `sys.argv[1:]`); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = sys.stdout, sys.stderr
    restore_logging = _quiet_absl()
    try:
        code: int = args.handler(args, out, err)
        return code
    except (UsageError, InvalidArgumentError) as exc:
        return _fail(err, str(exc), EXIT_USAGE)
    except CheckpointPathError as exc:
        return _fail(err, str(exc), EXIT_NO_DIRECTORY)
    except StepNotFoundError as exc:
        return _fail(err, str(exc), EXIT_NO_STEP)
    except NoCheckpointError as exc:
        return _fail(err, str(exc), EXIT_NO_CHECKPOINT)
    except StorageUnreachableError as exc:
        return _fail(err, str(exc), EXIT_STORAGE)
    except RoxxelError as exc:
        return _fail(err, str(exc), EXIT_DIFFERENT)
    except KeyboardInterrupt:
        return _fail(err, "interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:  # e.g. `roxxel ls DIR | head`
        return EXIT_OK
    finally:
        restore_logging()


def _quiet_absl() -> Callable[[], None]:
    """Silence absl's log lines for this run; return the function that undoes it.

    Orbax logs through absl: a WARNING on every read-only open, an ERROR (with the file's
    content) for each unreadable metadata file it meets. The command reports every problem
    itself, with what to do, so those lines would only repeat it in another voice. absl's
    verbosity and the `absl` Python logger (one object) are set to drop everything below
    CRITICAL; this runs before Orbax is imported, and is undone when the command returns
    (`main` is also called in-process, by tests and scripts).
    """
    absl_logging: Any
    try:
        from absl import logging as absl_logging
    except ImportError:  # pragma: no cover - absl comes with Orbax
        absl_logging = None
    logger = logging.getLogger("absl")  # after the import above: absl's own ABSLLogger
    level = logger.level
    verbosity = absl_logging.get_verbosity() if absl_logging is not None else None
    if absl_logging is not None:
        absl_logging.set_verbosity(absl_logging.FATAL)
    logger.setLevel(logging.CRITICAL)

    def restore() -> None:
        if absl_logging is not None and verbosity is not None:
            absl_logging.set_verbosity(verbosity)
        logger.setLevel(level)

    return restore


def _fail(err: TextIO, message: str, code: int) -> int:
    err.write(f"roxxel: error: {message}\n")
    err.flush()
    return code
