"""ecsnap: in-memory, erasure-coded snapshots of PyTorch training state.

snap = ecsnap.Snapshotter()
step = snap.restore(app_state)      # newest step every rank holds, loaded in place (or None)
h = snap.save(step, app_state)      # returns at once; the copy runs in the background
h.wait(); h.wait_protected()

Restore unpickles only safe types (containers, numbers, strings, torch and NumPy values): allow a
type of yours with `ecsnap.add_safe_globals(MyType)`.
"""

from ecsnap.ddp import settle_ddp
from ecsnap.errors import (
    ChecksumError,
    EcsnapError,
    MemoryLimitError,
    RestoreError,
    SMPUnavailableError,
    SnapshotError,
)
from ecsnap.handle import SaveHandle
from ecsnap.rng import RNGState
from ecsnap.safepickle import add_safe_globals
from ecsnap.snapshotter import Snapshotter

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "EcsnapError",
    "MemoryLimitError",
    "RNGState",
    "RestoreError",
    "SMPUnavailableError",
    "SaveHandle",
    "Snapshotter",
    "SnapshotError",
    "add_safe_globals",
    "settle_ddp",
]
