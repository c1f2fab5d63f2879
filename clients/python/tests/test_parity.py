"""The asyncio client and its synchronous twin are one API: every public
method of `Client`, `Semaphore` and `Permit` has a twin on `SyncClient`,
`SyncSemaphore` and `SyncPermit` with the same parameters and the same
result, but for the names of the classes themselves and of the two
differences the sync side cannot avoid (`aclose` is `close`; `acquire`
returns the acquired permit, not an `Acquisition` to await or enter).
"""

from __future__ import annotations

import inspect
import re

import pytest

import permitd

TWINS = [
    (permitd.Client, permitd.SyncClient),
    (permitd.Semaphore, permitd.SyncSemaphore),
    (permitd.Permit, permitd.SyncPermit),
]
# How a name on the async side is spelled on the sync side.
SYNC_NAMES = {
    "AsyncClient": "Client",
    "Client": "SyncClient",
    "Semaphore": "SyncSemaphore",
    "Permit": "SyncPermit",
    "Acquisition": "SyncPermit",
    "aclose": "close",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
}
DUNDERS = {"__init__", "__aenter__", "__aexit__", "__enter__", "__exit__", "__repr__"}


def as_sync(text: str) -> str:
    return re.sub(r"\b\w+\b", lambda m: SYNC_NAMES.get(m[0], m[0]), text)


def public(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") or name in DUNDERS
    }


def shape(member: object) -> str:
    """A member's signature, or that it is a property."""
    if isinstance(member, property):
        return "property"
    return str(inspect.signature(member))  # type: ignore[arg-type]


@pytest.mark.parametrize(("async_cls", "sync_cls"), TWINS, ids=lambda cls: cls.__name__)
def test_the_sync_twin_has_the_same_api(async_cls: type, sync_cls: type) -> None:
    async_members = {as_sync(name): shape(m) for name, m in public(async_cls).items()}
    sync_members = {name: shape(m) for name, m in public(sync_cls).items()}
    if sync_cls is permitd.SyncPermit:
        # `with sem.acquire() as permit` enters the permit itself; the async
        # side enters the `Acquisition`, which `test_acquire` covers.
        del sync_members["__enter__"], sync_members["__exit__"]
    assert sorted(async_members) == sorted(sync_members)
    for name, async_shape in async_members.items():
        assert as_sync(async_shape) == sync_members[name], name
