"""The saved form of an NNX model and optimizer: a tree of plain arrays keyed by path.

Every leaf has one path string, used on disk, in reports and in the CLI:
`model/<attribute>/...` for the model and `optimizer/<attribute>/...` for the optimizer, e.g.
`model/linear/kernel` or `optimizer/opt_state/0/mu/linear/kernel`.

Typed PRNG keys (`nnx.Rngs`, `nnx.Dropout` streams) are saved as their raw key data, with the
key implementation recorded beside the tree so that restore can wrap them again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

_ROOTS = ("model", "optimizer")
_PY_SCALARS = (bool, int, float, complex)
STRING = "str"
"""The dtype recorded in a LeafSpec for a string leaf (Orbax stores strings natively)."""


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """Shape and dtype of one leaf, as stored (key data for PRNG keys).

    `python` marks a live Python scalar (`nnx.Variable(3)`): its dtype is NumPy's default for
    the type, and a saved integer of another width is not a cast (NNX's transforms turn such
    values into 32-bit arrays).
    """

    shape: tuple[int, ...]
    dtype: str
    key_impl: str | None = None
    python: bool = False

    def casts_to(self, current: LeafSpec) -> bool:
        """True when restoring this saved leaf into `current` changes its dtype."""
        if self.dtype == current.dtype:
            return False
        return not (current.python and np.can_cast(self.dtype, current.dtype, "same_kind"))

    def fits(self, current: LeafSpec) -> bool:
        """True when this saved leaf can be restored into `current` (maybe with a cast)."""
        if self.shape != current.shape or (self.dtype == STRING) != (current.dtype == STRING):
            return False
        # PRNG keys are never cast: a key of another implementation does not fit.
        return self.key_impl == current.key_impl or not (self.key_impl or current.key_impl)

    def describe(self) -> str:
        """`shape (4, 8) float32`, `key<rbg> data of shape (4,)`, or `a string`."""
        if self.dtype == STRING:
            return "a string"
        if self.key_impl is not None:
            return f"key<{self.key_impl}> data of shape {self.shape}"
        return f"shape {self.shape} {self.dtype}"


def _path_string(root: str, path: tuple[Any, ...]) -> str:
    return f"{root}/{'/'.join(map(str, path))}" if path else root


def variables(
    model: nnx.Module, optimizer: nnx.Optimizer[Any] | None
) -> dict[str, nnx.Variable[Any]]:
    """The live Variables of `model` and `optimizer`, keyed by path string.

    Setting a value on one of them changes the model (or optimizer) in place. The paths and
    the Variables are those of `nnx.to_flat_state(nnx.state(obj))` (a shared Variable under
    its first path); `nnx.iter_graph` finds them 20x faster, which is most of what `save()`
    blocks for on a model with thousands of leaves (`tests/test_state_kinds.py` checks both
    agree).
    """
    result: dict[str, nnx.Variable[Any]] = {}
    objects: list[tuple[str, Any]] = [("model", model)]
    if optimizer is not None:
        objects.append(("optimizer", optimizer))
    for root, obj in objects:
        for path, node in nnx.iter_graph(obj):
            if isinstance(node, nnx.Variable) and value_of(node) is not None:
                result[_path_string(root, tuple(path))] = node
    return result


def value_of(variable: nnx.Variable[Any]) -> Any:
    """The value of a Variable; a plain array is taken without `get_value()`'s checks
    (30 µs a leaf)."""
    raw = variable.get_raw_value()
    return raw if isinstance(raw, (jax.Array, np.ndarray)) else variable.get_value()


def is_key(value: Any) -> bool:
    """True for a typed PRNG key array."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or isinstance(dtype, np.dtype):  # the common case, without the slow check
        return False
    return bool(jax.numpy.issubdtype(dtype, jax.dtypes.prng_key))


def key_impl_name(value: Any) -> str:
    """The registered name of a typed key's implementation (e.g. `threefry2x32`)."""
    return str(jax.random.key_impl(value))


def spec_of(value: Any) -> LeafSpec:
    """The LeafSpec of a live value (array, key array or Python scalar)."""
    if is_key(value):
        data = jax.random.key_data(value)
        return LeafSpec(tuple(data.shape), str(data.dtype), key_impl_name(value))
    if isinstance(value, str):
        return LeafSpec((), STRING, python=True)
    if isinstance(value, _PY_SCALARS):
        array = np.asarray(value)
        return LeafSpec((), str(array.dtype), python=True)
    return LeafSpec(tuple(int(d) for d in value.shape), str(np.dtype(value.dtype)))


def to_saved(value: Any) -> Any:
    """The array that stands for `value` on disk (key data for keys, 0-d arrays for scalars)."""
    if is_key(value):
        return jax.random.key_data(value)
    if isinstance(value, (*_PY_SCALARS, np.generic)):
        return np.asarray(value)
    return value


def read_target(current: Any, saved: LeafSpec) -> jax.ShapeDtypeStruct | str:
    """What to read from disk to replace the live value `current`.

    Device arrays are read straight into the current value's dtype (the cast happens while
    reading) and sharding, so a checkpoint written on another device layout takes the current
    one. Python scalars and NumPy arrays are read into host memory; Python scalars keep the
    saved dtype, so that no 64-bit value is narrowed on the way. A string is read as one.
    """
    if isinstance(current, str):
        return current
    if isinstance(current, _PY_SCALARS):
        return jax.ShapeDtypeStruct(saved.shape, np.dtype(saved.dtype))  # type: ignore[no-untyped-call]
    stored = to_saved(current)
    if isinstance(stored, (np.ndarray, np.generic)):
        return jax.ShapeDtypeStruct(saved.shape, stored.dtype)  # type: ignore[no-untyped-call]
    return jax.ShapeDtypeStruct(  # type: ignore[no-untyped-call]
        saved.shape, stored.dtype, sharding=stored.sharding
    )


def from_saved(array: Any, current: Any, spec: LeafSpec) -> Any:
    """Turn an array read with `read_target` into the type of the current value it replaces."""
    if spec.key_impl is not None:
        return jax.random.wrap_key_data(array, impl=spec.key_impl)
    if isinstance(current, str):
        return str(array)
    if isinstance(current, _PY_SCALARS):
        return type(current)(np.asarray(array).item())
    if isinstance(current, np.ndarray):
        return np.asarray(array, dtype=current.dtype)
    if isinstance(current, np.generic):  # a NumPy scalar stays one
        return np.asarray(array, dtype=current.dtype)[()]
    if np.dtype(array.dtype) != np.dtype(current.dtype):
        return array.astype(current.dtype)
    return array


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Turn `{"a/b/c": x}` into `{"a": {"b": {"c": x}}}`."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, last = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a nested mapping into `{"a/b/c": leaf}` (the inverse of `nest`)."""
    result: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                walk(f"{prefix}/{key}" if prefix else str(key), child)
        else:
            result[prefix] = node

    walk("", tree)
    return result
