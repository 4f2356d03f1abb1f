"""Checks of user input, done at the call, before anything touches disk.

Each function returns the normalised value or raises an error that names the argument, the
value received and what to pass instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._errors import InvalidArgumentError, InvalidStepError


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (type {type(value).__name__})"


def step(value: Any, *, name: str = "step") -> int:
    """Return `value` as a non-negative `int`.

    Python, NumPy and JAX integer scalars are accepted. Booleans, floats (even `5.0`),
    strings and arrays with more than one element are refused.
    """
    if isinstance(value, (bool, np.bool_)):
        raise InvalidStepError(
            f"{name} must be a non-negative integer, got {_describe(value)}. "
            f"Booleans are not steps: pass the training step counter, e.g. {name}=100.",
            name=name,
            value=value,
        )
    if isinstance(value, numbers.Integral):
        result = int(value)
    elif hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        kind = np.dtype(value.dtype).kind if _is_numpy_dtype(value) else ""
        if kind not in ("i", "u"):
            raise InvalidStepError(
                f"{name} must be a non-negative integer, got a scalar of dtype "
                f"{value.dtype}: {_describe(value)}. Pass int({name}) if the value "
                "is whole, or use the integer step counter.",
                name=name,
                value=value,
            )
        result = int(value)  # type: ignore[call-overload]
    else:
        hint = ""
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            hint = f" Use {name}={int(value)}."
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            hint = f" Convert it first: {name}=int({value!r})."
        raise InvalidStepError(
            f"{name} must be a non-negative integer, got {_describe(value)}.{hint}",
            name=name,
            value=value,
        )
    if result < 0:
        raise InvalidStepError(
            f"{name} must be a non-negative integer, got {result}. Steps name checkpoint "
            "folders and order them; count training steps from 0.",
            name=name,
            value=value,
        )
    return result


def _is_numpy_dtype(value: Any) -> bool:
    try:
        np.dtype(value.dtype)
    except TypeError:
        return False
    return True


_EXACT_INT = 2**53
"""Integers up to this size (in magnitude) are exact as floats; above it, not all are."""


def metric_value(key: str, value: Any) -> float:
    """Return one metric as a Python float; NaN and infinities are kept (they are never best).

    Accepted: Python and NumPy real numbers, and scalar (or one-element) arrays of any float
    dtype, including JAX's bfloat16, float16 and float8 types (the value is converted to a
    Python float, which holds every one of them exactly), or of an integer dtype.

    Metrics are stored as floats (64-bit), so an integer is refused, not rounded, when its
    magnitude is above 2**53: beyond that a float cannot hold every integer, and the stored
    value would silently differ from the one passed. Pass such a number as a float
    (`float(n)`) if an approximation is meant. A number too large for a float at all (e.g.
    `10**400`) is refused the same way.
    """
    name = f"metrics_dict[{key!r}]"
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise InvalidArgumentError(
            f"{name} must be a real number, got {_describe(value)}. "
            "Pass a float such as the mean loss of the step.",
            name=name,
            value=value,
        )
    if isinstance(value, numbers.Integral):
        return _exact_int(name, int(value), value)
    if isinstance(value, numbers.Real):
        return _to_float(name, value)
    shape = getattr(value, "shape", None)
    if hasattr(value, "dtype") and shape in ((), (1,)) and _is_numpy_dtype(value):
        dtype = np.dtype(value.dtype)
        scalar = np.asarray(value).reshape(())
        if dtype.kind in ("i", "u"):
            return _exact_int(name, int(scalar), value)
        if _is_float_dtype(dtype):
            return _to_float(name, scalar)
    raise InvalidArgumentError(
        f"{name} must be a real number, got {_describe(value)}. "
        "Pass a Python float or a scalar array (call .mean() on a batch of values first).",
        name=name,
        value=value,
    )


def _exact_int(name: str, number: int, value: Any) -> float:
    if abs(number) > _EXACT_INT:
        raise InvalidArgumentError(
            f"{name} is the integer {_describe(value)}, too large to store exactly: metrics "
            f"are stored as floats, which hold every integer only up to 2**53 "
            f"({_EXACT_INT}) in magnitude. Pass a float, e.g. {name}=float(n), if an "
            "approximation is fine, or a smaller number (a count in thousands, say).",
            name=name,
            value=value,
        )
    return float(number)


def _to_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except OverflowError:  # e.g. a Fraction beyond the float range
        raise InvalidArgumentError(
            f"{name} is {_describe(value)}, too large for a float (the largest is about "
            "1.8e308). Pass a float: the value itself, scaled down, or its logarithm.",
            name=name,
            value=value,
        ) from None


def _is_float_dtype(dtype: np.dtype[Any]) -> bool:
    """NumPy's float dtypes, and those JAX adds through ml_dtypes (bfloat16, float8_*)."""
    if dtype.kind == "f":
        return True
    if dtype.kind != "V":  # ml_dtypes' types are opaque to NumPy; complex is not a float
        return False
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes comes with JAX
        return False
    try:
        ml_dtypes.finfo(dtype)  # type: ignore[no-untyped-call]
    except (TypeError, ValueError, KeyError):
        return False
    return True


def metrics(value: object, *, best_metric: str | None) -> dict[str, float] | None:
    """Return `metrics_dict` as a dict of floats, checking that the best metric is there."""
    if value is None:
        if best_metric is not None:
            raise InvalidArgumentError(
                f"metrics_dict is required: the Checkpointer tracks the best checkpoint by "
                f"{best_metric!r}. Pass metrics_dict={{{best_metric!r}: value}}, or create the "
                "Checkpointer with best_metric=None to keep only the newest checkpoints.",
                name="metrics_dict",
                value=value,
            )
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            f"metrics_dict must be a mapping of metric names to numbers, got {_describe(value)}. "
            'Pass e.g. metrics_dict={"loss": 0.52}.',
            name="metrics_dict",
            value=value,
        )
    result: dict[str, float] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidArgumentError(
                f"metrics_dict keys must be strings, got {_describe(key)}.",
                name="metrics_dict",
                value=key,
            )
        result[key] = metric_value(key, item)
    if best_metric is not None and best_metric not in result:
        raise InvalidArgumentError(
            f"metrics_dict has no {best_metric!r}, which the Checkpointer uses to keep the best "
            f"checkpoint; it has {sorted(result)}. Add metrics_dict[{best_metric!r}], or create "
            f"the Checkpointer with best_metric=<one of {sorted(result)}> or best_metric=None.",
            name="metrics_dict",
            value=value,
        )
    return result


def count(value: object, *, name: str, minimum: int, allow_none: bool = False) -> int | None:
    """Return an integer option that must be at least `minimum` (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        none = " or None" if allow_none else ""
        raise InvalidArgumentError(
            f"{name} must be an integer >= {minimum}{none}, got {_describe(value)}.",
            name=name,
            value=value,
        )
    return int(value)


def positive_seconds(value: object, *, name: str) -> float:
    """Return a timeout in seconds, which must be a finite positive number."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or float(value) <= 0
    ):
        raise InvalidArgumentError(
            f"{name} must be a positive number of seconds, got {_describe(value)}. "
            f"Pass e.g. {name}=1000.",
            name=name,
            value=value,
        )
    return float(value)


def choice(value: object, *, name: str, options: tuple[str, ...]) -> str:
    """Return `value` if it is one of `options`."""
    if not isinstance(value, str) or value not in options:
        raise InvalidArgumentError(
            f"{name} must be one of {', '.join(map(repr, options))}, got {_describe(value)}.",
            name=name,
            value=value,
        )
    return value


def instance(value: Any, cls: type, *, name: str, hint: str) -> None:
    """Raise unless `value` is an instance of `cls`."""
    if not isinstance(value, cls):
        raise InvalidArgumentError(
            f"{name} must be a {cls.__module__}.{cls.__qualname__}, got {_describe(value)}. {hint}",
            name=name,
            value=value,
        )
