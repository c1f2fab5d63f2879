"""Python client for permitd, the distributed counting semaphore served over HTTP.

`Client` (asyncio) is the main entry point and `SyncClient` its blocking twin
for scripts; every error is a `PermitdError`. This module only gathers the
public names: the clients live in `permitd.client` and `permitd.sync`, the
errors in `permitd.errors`, the returned values in `permitd.models`.
"""

from ._version import __version__
from .client import Acquisition, Client, Permit, Semaphore
from .errors import (
    Conflict,
    CountExceedsLimit,
    Forbidden,
    IdempotencyMismatch,
    InvalidRequest,
    LimitConflict,
    NoCapacity,
    NotFound,
    PermitdError,
    PermitEnded,
    PermitLost,
    ProblemError,
    Unauthorized,
    Unavailable,
)
from .models import Grant, Holder, SemaphoreStatus
from .sync import SyncClient, SyncPermit, SyncSemaphore

__all__ = [
    "Acquisition",
    "Client",
    "Conflict",
    "CountExceedsLimit",
    "Forbidden",
    "Grant",
    "Holder",
    "IdempotencyMismatch",
    "InvalidRequest",
    "LimitConflict",
    "NoCapacity",
    "NotFound",
    "Permit",
    "PermitEnded",
    "PermitLost",
    "PermitdError",
    "ProblemError",
    "Semaphore",
    "SemaphoreStatus",
    "SyncClient",
    "SyncPermit",
    "SyncSemaphore",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
