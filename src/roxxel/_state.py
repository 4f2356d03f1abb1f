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


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """Shape and dtype of one leaf, as stored (key data for PRNG keys)."""

    shape: tuple[int, ...]
    dtype: str
    key_impl: str | None = None


def _path_string(root: str, path: tuple[Any, ...]) -> str:
    return "/".join([root, *(str(part) for part in path)])


def variables(
    model: nnx.Module, optimizer: nnx.Optimizer[Any] | None
) -> dict[str, nnx.Variable[Any]]:
    """The live Variables of `model` and `optimizer`, keyed by path string.

    Setting a value on one of them changes the model (or optimizer) in place.
    """
    result: dict[str, nnx.Variable[Any]] = {}
    objects: list[tuple[str, Any]] = [("model", model)]
    if optimizer is not None:
        objects.append(("optimizer", optimizer))
    for root, obj in objects:
        for path, variable in nnx.to_flat_state(nnx.state(obj)):
            if variable.get_value() is None:
                continue
            result[_path_string(root, tuple(path))] = variable
    return result


def is_key(value: Any) -> bool:
    """True for a typed PRNG key array."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and jax.numpy.issubdtype(dtype, jax.dtypes.prng_key)


def key_impl_name(value: Any) -> str:
    """The registered name of a typed key's implementation (e.g. `threefry2x32`)."""
    return str(jax.random.key_impl(value))


def spec_of(value: Any) -> LeafSpec:
    """The LeafSpec of a live value (array, key array or Python scalar)."""
    if is_key(value):
        data = jax.random.key_data(value)
        return LeafSpec(tuple(data.shape), str(data.dtype), key_impl_name(value))
    if isinstance(value, _PY_SCALARS):
        array = np.asarray(value)
        return LeafSpec((), str(array.dtype))
    return LeafSpec(tuple(int(d) for d in value.shape), str(np.dtype(value.dtype)))


def to_saved(value: Any) -> Any:
    """The array that stands for `value` on disk (key data for keys, 0-d arrays for scalars)."""
    if is_key(value):
        return jax.random.key_data(value)
    if isinstance(value, _PY_SCALARS):
        return np.asarray(value)
    return value


def from_saved(array: Any, current: Any, spec: LeafSpec) -> Any:
    """Turn a restored array back into the type of the current value it replaces."""
    if spec.key_impl is not None:
        return jax.random.wrap_key_data(array, impl=spec.key_impl)
    if isinstance(current, _PY_SCALARS):
        return type(current)(np.asarray(array).item())
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
