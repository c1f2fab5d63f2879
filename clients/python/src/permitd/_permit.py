"""The state a held permit has in both clients, and how each answer changes it.

What the server last said about the permit, its lease schedule, whether it
was released or lost, what a refresh, release or background refresh answer
means for it, and what the end of a `with` block reports. The asyncio `Permit`
and the threaded `SyncPermit` add only the I/O and their own way of signalling
a loss, so they cannot disagree about the rest.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

import httpx

from ._protocol import LeaseSchedule, permit_path, to_ms
from .errors import PermitdError, PermitLost, error_from_response, problem_of, retry_after_of
from .models import Grant, parse_grant

logger = logging.getLogger("permitd")


class PermitBase:
    def __init__(
        self,
        grant: Grant,
        *,
        ttl_ms: int | None,
        sent_at: float,
        answered_at: float,
        replayed: bool,
    ) -> None:
        lease = grant.lease if ttl_ms is None else ttl_ms / 1000
        self._grant = grant
        self._ttl_ms = to_ms(lease)
        self._schedule = LeaseSchedule(lease, sent_at=sent_at, answered_at=answered_at)
        if replayed:
            # An earlier request got this permit (a lost answer, or a key
            # reused after a restart): its lease may be nearly over, and only
            # a refresh tells us when it ends.
            self._schedule.refresh_soon(answered_at)
        self._lost: PermitLost | None = None
        self._released = False
        self._last_failure = ""
        # The synchronous twin's refresh thread and its caller both touch this
        # state; the lock costs nothing noticeable on the asyncio side.
        self._state_lock = threading.Lock()

    @property
    def id(self) -> str:
        """The permit id: the capability to refresh and release it."""
        return self._grant.id

    @property
    def semaphore(self) -> str:
        """The name of the semaphore the permit belongs to."""
        return self._grant.semaphore

    @property
    def count(self) -> int:
        return self._grant.count

    @property
    def fencing_token(self) -> int:
        """Strictly increasing per semaphore: pass it to systems that can refuse stale holders."""
        return self._grant.fencing_token

    @property
    def acquired_at(self) -> datetime:
        return self._grant.acquired_at

    @property
    def expires_at(self) -> datetime:
        """When the lease runs out unless refreshed, as of the last refresh (store clock)."""
        return self._grant.expires_at

    @property
    def holder(self) -> str | None:
        return self._grant.holder

    @property
    def lost(self) -> bool:
        """True once the lease is known to have ended while held (see `PermitLost`)."""
        return self._lost is not None

    @property
    def lost_error(self) -> PermitLost | None:
        """The `PermitLost` saying how the lease was lost, if it was."""
        return self._lost

    @property
    def released(self) -> bool:
        return self._released

    def __repr__(self) -> str:
        state = "lost" if self.lost else "released" if self._released else "held"
        return (
            f"<{type(self).__name__} {self.semaphore!r} id={self.id} "
            f"fencing_token={self.fencing_token} {state}>"
        )

    @property
    def _path(self) -> str:
        return permit_path(self.semaphore, self.id)

    def _signal_lost(self) -> None:
        """Wakes whoever waits for a loss; each client has its own kind of event."""

    def _lose(self, reason: str, response: httpx.Response | None = None) -> PermitLost:
        """Records the loss (the first one wins) and returns it, for raising."""
        error = PermitLost(
            f"permit {self.id} of semaphore {self.semaphore!r} was lost: {reason}",
            permit_id=self.id,
            semaphore=self.semaphore,
            status=None if response is None else response.status_code,
            problem=None if response is None else problem_of(response),
            request_id=None if response is None else response.headers.get("x-request-id"),
        )
        with self._state_lock:
            first = self._lost is None
            if first:
                self._lost = error
        if first:
            self._signal_lost()
        return self._lost or error

    def _refresh_ttl_ms(self, ttl: float | None) -> int:
        """Checks a refresh may be sent; the lease it asks for, in ms."""
        if self._released:
            raise RuntimeError(f"permit {self.id} was released")
        if self._lost is not None:
            raise self._lost
        return self._ttl_ms if ttl is None else to_ms(ttl)

    def _refreshed(
        self, response: httpx.Response, ttl_ms: int, sent_at: float, answered_at: float
    ) -> None:
        """Reads a refresh's answer; a new `ttl` becomes the one the background renews."""
        if response.status_code == 404:
            raise self._lose("the server no longer has it (lease ran out, or released)", response)
        if response.status_code != 200:
            raise error_from_response(response)
        with self._state_lock:
            self._ttl_ms = ttl_ms
            self._grant = parse_grant(response.json())
            self._schedule.renewed(ttl_ms / 1000, sent_at=sent_at, answered_at=answered_at)

    def _released_by(self, response: httpx.Response, ambiguous: bool) -> None:
        """Reads a release's answer."""
        if response.status_code == 204 or (response.status_code == 404 and ambiguous):
            # 404 after an attempt whose answer was lost: that attempt released it.
            self._released = True
            return
        if response.status_code == 404:
            self._released = True
            raise self._lose("its lease had run out before the release", response)
        raise error_from_response(response)

    # The end of a `with` block, after the release: `_release_failed` for a
    # release that did not get through, then `_block_ended`.

    def _release_failed(self, error: PermitdError) -> None:
        # Logged, not raised: the block's own outcome matters more, and the
        # lease ends by itself anyway.
        logger.warning(
            "could not release permit %s of %r (%s); its lease runs out by itself",
            self.id,
            self.semaphore,
            error,
        )

    def _block_ended(self, exc: BaseException | None) -> None:
        """Reports a loss of the lease to the block that held it; `exc` is what the block raised."""
        lost = self._lost
        if lost is None:
            return
        if exc is None:
            # Raised afresh: its traceback would otherwise show where the
            # loss was first recorded, not the block it ends.
            raise lost.with_traceback(None)
        # The block's own exception says more about what went wrong; keep it,
        # and say that the permit had been lost as well.
        exc.add_note(str(lost))

    # The background refresh, as steps both clients' loops take in turn:
    # `_keep_alive_attempt` before each PATCH, one of the two `_keep_alive_*`
    # after it. Each returns when to try next, or None once the permit is lost.

    def _keep_alive_attempt(self, now: float, timeout: float) -> tuple[int, float] | None:
        """The lease to ask for and the time the PATCH may take; None if too late."""
        over_at = self._schedule.surely_over_at
        if now >= over_at:
            self._lose(f"no refresh got through before the lease ran out ({self._last_failure})")
            return None
        return self._ttl_ms, min(timeout, over_at - now)

    def _keep_alive_answered(
        self, response: httpx.Response, ttl_ms: int, sent_at: float, now: float
    ) -> float | None:
        if response.status_code == 200:
            with self._state_lock:
                self._grant = parse_grant(response.json())
                self._schedule.renewed(ttl_ms / 1000, sent_at=sent_at, answered_at=now)
            return self._schedule.refresh_at
        if response.status_code == 404:
            self._lose("a refresh found it gone (its lease ran out, or it was released)", response)
            return None
        # Other answers (503, or a 401 after a token was revoked) may pass;
        # the lease's end bounds how long they may.
        self._keep_alive_failure(str(error_from_response(response)))
        return self._schedule.retry_at(now, retry_after_of(response))

    def _keep_alive_failed(self, exc: Exception, now: float) -> float:
        self._keep_alive_failure(repr(exc))
        return self._schedule.retry_at(now, None)

    def _keep_alive_failure(self, failure: str) -> None:
        self._last_failure = f"last attempt: {failure}"
        logger.warning("refresh of permit %s failed (%s); retrying", self.id, failure)
