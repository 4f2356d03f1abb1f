"""`roxxel.checkpoint`: the Checkpointer, `load_weights` and the errors they raise.

```python
from roxxel.checkpoint import Checkpointer, load_weights
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
    PromotionError,
    ReadOnlyError,
    RestoreMismatchError,
    RoxxelError,
    StepExistsError,
    StepNotFoundError,
    StepOrderError,
    StorageUnreachableError,
    WeightsFileError,
)
from ._integrity import StepIntegrity, verify
from ._restore import RestoreReport
from ._telemetry import SaveStats
from ._weights import load_weights

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
    "PromotionError",
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
    "WeightsFileError",
    "load_weights",
    "verify",
]

for _name in __all__:
    globals()[_name].__module__ = "roxxel.checkpoint"
del _name
