"""Roxxel: asynchronous checkpoints of Flax NNX training state, kept right and restored into
the model you have now.

The Checkpointer lives in `roxxel.checkpoint`. `roxxel.open(path)` reads a checkpoint
directory without the model's code; `roxxel.load_weights` loads a safetensors file into a
model. Importing `roxxel` alone stays light (no JAX, no NumPy), so that the `roxxel`
command starts fast: these names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._inspect import CheckpointDir, StepEntry
    from ._inspect import open_checkpoints as open
    from ._weights import load_weights

__version__ = "0.3.0"
__all__ = ["CheckpointDir", "StepEntry", "__version__", "load_weights", "open"]

_LAZY = {
    "open": ("_inspect", "open_checkpoints"),
    "CheckpointDir": ("_inspect", "CheckpointDir"),
    "StepEntry": ("_inspect", "StepEntry"),
    "load_weights": ("_weights", "load_weights"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'roxxel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
