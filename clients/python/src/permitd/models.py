"""The values permitd answers with, as typed, immutable Python objects.

`Grant` is a permit as the acquire and refresh responses show it,
`SemaphoreStatus` (with its `Holder`s) a semaphore's status. Times are
timezone-aware datetimes on the store's clock; the parsers here are the only
place that knows the JSON field names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Grant:
    """A permit as the server last described it."""

    id: str
    semaphore: str
    count: int
    fencing_token: int
    acquired_at: datetime
    expires_at: datetime
    holder: str | None

    @property
    def lease(self) -> float:
        """The lease length in seconds, as the server granted it."""
        return (self.expires_at - self.acquired_at).total_seconds()


@dataclass(frozen=True)
class Holder:
    """One live permit in a semaphore's status (never its id)."""

    count: int
    fencing_token: int
    acquired_at: datetime
    expires_at: datetime
    holder: str | None


@dataclass(frozen=True)
class SemaphoreStatus:
    """A semaphore's status: `held` may exceed `limit` after the limit was lowered."""

    name: str
    limit: int
    held: int
    available: int
    waiting: int
    holders: tuple[Holder, ...]


def _time(value: Any) -> datetime:
    # Python 3.11's fromisoformat reads the trailing "Z" permitd writes.
    return datetime.fromisoformat(str(value))


def _label(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_grant(body: Mapping[str, Any]) -> Grant:
    return Grant(
        id=str(body["id"]),
        semaphore=str(body["semaphore"]),
        count=int(body["count"]),
        fencing_token=int(body["fencing_token"]),
        acquired_at=_time(body["acquired_at"]),
        expires_at=_time(body["expires_at"]),
        holder=_label(body.get("holder")),
    )


def parse_status(body: Mapping[str, Any]) -> SemaphoreStatus:
    return SemaphoreStatus(
        name=str(body["name"]),
        limit=int(body["limit"]),
        held=int(body["held"]),
        available=int(body["available"]),
        waiting=int(body["waiting"]),
        holders=tuple(
            Holder(
                count=int(h["count"]),
                fencing_token=int(h["fencing_token"]),
                acquired_at=_time(h["acquired_at"]),
                expires_at=_time(h["expires_at"]),
                holder=_label(h.get("holder")),
            )
            for h in body.get("holders", ())
        ),
    )
