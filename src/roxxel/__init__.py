"""Roxxel: asynchronous checkpoints of Flax NNX training state, kept right and restored into
the model you have now.

The library lives in `roxxel.checkpoint`; importing `roxxel` alone stays light (no JAX), so
that the `roxxel` command starts fast.
"""

__version__ = "0.2.0"
