"""Roxxel: asynchronous checkpoints of Flax NNX training state, kept right and restored into
the model you have now.

The Checkpointer lives in `roxxel.checkpoint`. `roxxel.open(path)` reads a checkpoint
directory without the model's code. Importing `roxxel` alone stays light (no JAX, no NumPy),
so that the `roxxel` command starts fast: the names below are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._inspect import CheckpointDir, StepEntry
    from ._inspect import open_checkpoints as open

__version__ = "0.2.0"
__all__ = ["CheckpointDir", "StepEntry", "__version__", "open"]

_LAZY = {"open": "open_checkpoints", "CheckpointDir": "CheckpointDir", "StepEntry": "StepEntry"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import _inspect

        value = getattr(_inspect, _LAZY[name])
        globals()[name] = value
        return value
    raise AttributeError(f"module 'roxxel' has no attribute {name!r}")
