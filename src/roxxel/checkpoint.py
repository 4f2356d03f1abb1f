"""`roxxel.checkpoint`: the Checkpointer and the errors it raises.

```python
from roxxel.checkpoint import Checkpointer
```
"""

from ._checkpointer import Checkpointer
from ._compat import UnavailableManagerAPIError
from ._errors import (
    BackgroundWriteError,
    CheckpointerClosedError,
    CheckpointLockedError,
    CheckpointPathError,
    CorruptCheckpointError,
    InvalidArgumentError,
    InvalidStepError,
    NoCheckpointError,
    ReadOnlyError,
    RestoreMismatchError,
    RoxxelError,
    StepExistsError,
    StepNotFoundError,
    StepOrderError,
    StorageUnreachableError,
)
from ._integrity import StepIntegrity, verify
from ._restore import RestoreReport
from ._telemetry import SaveStats

__all__ = [
    "BackgroundWriteError",
    "CheckpointPathError",
    "Checkpointer",
    "CheckpointerClosedError",
    "CheckpointLockedError",
    "CorruptCheckpointError",
    "InvalidArgumentError",
    "InvalidStepError",
    "NoCheckpointError",
    "ReadOnlyError",
    "RestoreMismatchError",
    "RestoreReport",
    "RoxxelError",
    "SaveStats",
    "StepExistsError",
    "StepIntegrity",
    "StepNotFoundError",
    "StepOrderError",
    "StorageUnreachableError",
    "UnavailableManagerAPIError",
    "verify",
]

for _name in __all__:
    globals()[_name].__module__ = "roxxel.checkpoint"
del _name
