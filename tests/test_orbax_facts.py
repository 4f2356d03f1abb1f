"""Re-checks of the Orbax 0.12.8 behaviours Roxxel's design depends on.

If one of these starts failing after an Orbax upgrade, the workaround it justifies (named in
each docstring) may be unnecessary or wrong: revisit `_orbax.py` and docs/design.md.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest


def _tree(value: float) -> dict[str, jax.Array]:
    return {"w": jnp.full((4,), value)}


def test_best_fn_with_max_to_keep_deletes_the_newest(tmp_path: Path) -> None:
    """Why retention is our own preservation policy, not `best_fn` + `max_to_keep`."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=3, best_fn=lambda m: m["loss"], best_mode="min"
    )
    with ocp.CheckpointManager(tmp_path, options=options) as manager:
        for step, loss in enumerate([5, 4, 3, 2, 1, 2, 3, 4, 5, 6]):
            manager.save(step, args=ocp.args.StandardSave(_tree(step)), metrics={"loss": loss})
        manager.wait_until_finished()
        assert sorted(manager.all_steps()) == [3, 4, 5]


def test_standard_restore_rejects_a_changed_structure(tmp_path: Path) -> None:
    """Why restore is planned leaf by leaf from metadata (`_restore.plan`)."""
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(0, args=ocp.args.StandardSave(_tree(1.0)))
        manager.wait_until_finished()
        bigger = {**_tree(0.0), "extra": jnp.zeros((2,))}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, bigger)
        with pytest.raises(ValueError, match=r"do not match|mismatch"):
            manager.restore(0, args=ocp.args.StandardRestore(abstract))


def test_host_view_of_a_cpu_array_is_zero_copy() -> None:
    """Why `save()` blocks only milliseconds on CPU: Orbax's host copy aliases the buffer."""
    x = jnp.arange(1024.0)
    view = np.asarray(x)
    assert view.ctypes.data == x.unsafe_buffer_pointer()
    assert not view.flags.writeable
