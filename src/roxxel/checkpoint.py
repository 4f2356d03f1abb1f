"""`roxxel.checkpoint`: the Checkpointer and the errors it raises.

```python
from roxxel.checkpoint import Checkpointer
```
"""

from ._checkpointer import Checkpointer
from ._errors import (
    BackgroundWriteError,
    CheckpointerClosedError,
    CheckpointPathError,
    InvalidArgumentError,
    InvalidStepError,
    NoCheckpointError,
    ReadOnlyError,
    RestoreMismatchError,
    RoxxelError,
    StepExistsError,
    StepNotFoundError,
    StepOrderError,
)
from ._restore import RestoreReport

__all__ = [
    "BackgroundWriteError",
    "CheckpointPathError",
    "Checkpointer",
    "CheckpointerClosedError",
    "InvalidArgumentError",
    "InvalidStepError",
    "NoCheckpointError",
    "ReadOnlyError",
    "RestoreMismatchError",
    "RestoreReport",
    "RoxxelError",
    "StepExistsError",
    "StepNotFoundError",
    "StepOrderError",
]

for _name in __all__:
    globals()[_name].__module__ = "roxxel.checkpoint"
del _name
