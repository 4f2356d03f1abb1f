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
    PreemptionSyncError,
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
    "PreemptionSyncError",
    "ReadOnlyError",
    "RestoreMismatchError",
    "RestoreReport",
    "RoxxelError",
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
