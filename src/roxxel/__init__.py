"""Roxxel: asynchronous checkpoints of Flax NNX training state, kept right and restored into
the model you have now.

The library lives in `roxxel.checkpoint`; importing `roxxel` alone stays light (no JAX), so
that the `roxxel` command starts fast. `roxxel.load_weights` is `roxxel.checkpoint.load_weights`,
imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._weights import load_weights

__version__ = "0.2.0"
__all__ = ["__version__", "load_weights"]


def __getattr__(name: str) -> Any:
    if name == "load_weights":
        from ._weights import load_weights

        return load_weights
    raise AttributeError(f"module 'roxxel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "load_weights"])
