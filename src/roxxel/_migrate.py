"""Reading PyTrees that Orbax wrote without Roxxel: their leaf names in Roxxel's terms.

Roxxel names a leaf `model/<path>` or `optimizer/<path>`. The layouts it migrates from save
`nnx.state(...)` as one PyTree:

* the page's sketch and many training scripts save `nnx.state((model, optimizer))`, a tuple:
  `0/linear/kernel/value`, `1/opt_state/0/mu/linear/kernel/value`, `1/step/value`;
* plain Orbax and Flax's NNX guide save `nnx.state(model)`: `linear/kernel/value`;
* a dict `{"model": ..., "optimizer": ...}` already has Roxxel's top level.

Each NNX variable is saved as a node whose one leaf is `value` (`raw_value` in some Flax
versions); that last component is dropped. The result then goes through the same restore plan
as a Roxxel step (renames, casts, re-sharding, the report). Pure functions, no disk.
"""

from __future__ import annotations

from collections.abc import Iterable

_VARIABLE_LEAVES = ("value", "raw_value")
_OPTIMIZER_KEYS = ("opt_state", "step")


def _strip_variable(path: str) -> str:
    head, _, last = path.rpartition("/")
    return head if head and last in _VARIABLE_LEAVES else path


def _top(path: str) -> str:
    return path.split("/", 1)[0]


def describe(paths: Iterable[str]) -> str:
    """What was saved, in words: for the restore report and messages."""
    kind = _shape_of(list(paths))
    return {
        "tuple": "nnx.state((model, optimizer))",
        "named": "a {'model': ..., 'optimizer': ...} state",
        "model": "nnx.state(model)",
    }[kind]


def _shape_of(paths: list[str]) -> str:
    tops = {_top(p) for p in paths}
    if tops and tops <= {"model", "optimizer"}:
        return "named"
    if tops == {"0", "1"}:
        second = {p.split("/")[1] for p in paths if _top(p) == "1" and "/" in p}
        if second & set(_OPTIMIZER_KEYS):
            return "tuple"
    return "model"


def roxxel_names(paths: Iterable[str]) -> dict[str, str]:
    """`{Roxxel leaf name: saved leaf path}` for the leaves of a PyTree saved by Orbax.

    Example:
        >>> roxxel_names(["0/linear/kernel/value", "1/step/value"])
        {'model/linear/kernel': '0/linear/kernel/value', 'optimizer/step': '1/step/value'}
    """
    saved = list(paths)
    kind = _shape_of(saved)
    names: dict[str, str] = {}
    for path in saved:
        stripped = _strip_variable(path)
        if kind == "tuple":
            top, _, rest = stripped.partition("/")
            name = f"{'model' if top == '0' else 'optimizer'}/{rest}" if rest else stripped
        elif kind == "named":
            name = stripped
        else:
            name = f"model/{stripped}"
        names[name] = path
    return names
