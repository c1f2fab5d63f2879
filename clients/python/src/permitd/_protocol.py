"""What the asyncio client and its synchronous twin decide alike, without doing I/O.

`Client` and `SyncClient` differ only in how they send and how they wait;
everything they must agree on lives here as plain objects fed with the
monotonic time and each answer: paths, the acquire's arguments and its long
polls, what each answer means, which failures are retried and after how long,
and when a lease is due for a refresh or surely over. Keeping it free of I/O
is what lets both clients share it, and lets the unit tests drive it with
made-up clocks and answers.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from ._version import __version__
from .errors import (
    PROBLEM_PREFIX,
    TRANSIENT_STATUSES,
    LimitConflict,
    PermitdError,
    Unavailable,
    error_from_response,
    is_idempotency_in_progress,
    problem_of,
    retry_after_of,
)
from .models import Grant, SemaphoreStatus, parse_grant, parse_status

USER_AGENT = f"permitd-python/{__version__}"

# A long poll that came back this much sooner than it asked to wait was not
# a wait that ran out (the server refused early); polling again at once could
# spin, so such a poll is followed by a backoff delay instead.
_EARLY_POLL_FRACTION = 0.5


def semaphore_path(name: str) -> str:
    return "/semaphores/" + quote(name, safe="")


def permit_path(name: str, permit_id: str) -> str:
    return f"{semaphore_path(name)}/permits/{quote(permit_id, safe='')}"


def to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def request_was_sent(exc: BaseException) -> bool:
    """Whether the server may have carried out a request that failed this way.

    A connection that was never opened carried nothing; after that (a read
    timeout, a dropped connection) the request may have been handled.
    """
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def check_settings(url: str, timeout: float, max_wait: float) -> str:
    """Validates the settings both clients share; returns the base URL without a trailing /."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"permitd URL must start with http:// or https://, not {url!r}")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if max_wait <= 0:
        raise ValueError("max_wait must be positive")
    return url.rstrip("/")


def auth_headers(token: str | None) -> dict[str, str]:
    """The headers that carry `token`, sent with every request (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def acquire_body(
    *, limit: int | None, count: int, ttl: float | None, wait: float, holder: str | None
) -> dict[str, Any]:
    """The acquire body both clients send (without `wait_ms`, which each poll sets)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if ttl is not None and ttl <= 0:
        raise ValueError("ttl must be positive")
    if wait < 0:
        raise ValueError("wait must not be negative")
    body: dict[str, Any] = {"count": count}
    if limit is not None:
        body["limit"] = limit
    if ttl is not None:
        body["ttl_ms"] = to_ms(ttl)
    if holder:
        body["holder"] = holder
    return body


def acquire_timeout(timeout: float | None, default: float) -> float:
    """The retry budget of one acquire: the caller's `timeout`, else the client's."""
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive")
    return default if timeout is None else timeout


def acquire_key(given: str | None) -> str:
    """The key every attempt of one acquire carries: the caller's, else a fresh UUID."""
    return given or str(uuid.uuid4())


def read_ready(response: httpx.Response) -> bool:
    """Reads `/readyz`: 200 ready, 503 (its store cannot be reached) not; others raise."""
    if response.status_code == 200:
        return True
    if response.status_code == 503:
        return False
    raise error_from_response(response)


def read_status(response: httpx.Response, *ok: int) -> SemaphoreStatus:
    """A semaphore's status from an answer with one of the `ok` statuses."""
    if response.status_code not in ok:
        raise error_from_response(response)
    return parse_status(response.json())


def read_deleted(response: httpx.Response, ambiguous: bool) -> None:
    """Reads a semaphore delete's answer."""
    if response.status_code == 204 or (response.status_code == 404 and ambiguous):
        # 404 after an attempt whose answer was lost: that attempt deleted it.
        return
    raise error_from_response(response)


def create_limit(limit: int | None) -> int:
    """The limit `create` makes sure of; a handle without one cannot create."""
    if limit is None:
        raise ValueError("create() needs a limit: client.semaphore(name, limit=...)")
    return limit


def check_created(name: str, current: SemaphoreStatus, wanted: int) -> SemaphoreStatus:
    """What `create` returns for a semaphore that exists: it, if its limit is `wanted`."""
    if current.limit != wanted:
        raise limit_conflict(name, current.limit, wanted)
    return current


def limit_conflict(name: str, current: int, wanted: int) -> LimitConflict:
    """The conflict `create` reports, shaped like the server's own."""
    return LimitConflict(
        f"semaphore {name!r} exists with limit {current}, not {wanted}",
        problem={
            "type": PROBLEM_PREFIX + "limit-conflict",
            "title": "Semaphore exists with another limit",
            "limit": current,
        },
    )


def describe_failure(exc: BaseException | None) -> str:
    """Words for an attempt that got no answer."""
    if exc is not None and not request_was_sent(exc):
        return f"cannot reach permitd ({type(exc).__name__}: {exc})"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "no answer from permitd in time"
    return f"no answer from permitd ({type(exc).__name__}: {exc})"


class Backoff:
    """Delays between retries: exponential with jitter, never below `Retry-After`.

    Jitter keeps many clients that lost the same server from retrying in
    lockstep when it returns.
    """

    def __init__(
        self,
        first: float = 0.05,
        cap: float = 2.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._first = first
        self._cap = cap
        self._rng = rng
        self._attempt = 0

    def next(self, retry_after: float | None = None) -> float:
        ceiling = min(self._cap, self._first * 2.0**self._attempt)
        self._attempt += 1
        delay = ceiling * (0.5 + 0.5 * self._rng())
        return max(delay, retry_after or 0.0)

    def reset(self) -> None:
        self._attempt = 0


@dataclass
class _Budget:
    """The time one operation may take, retries included, and what it has seen."""

    what: str
    started: float
    deadline: float
    # False for an operation of one attempt (an acquire without a wait).
    retries: bool = True
    attempts: int = 0
    # Some attempt may have been carried out although its answer was lost.
    ambiguous: bool = False

    def fits(self, delay: float, now: float) -> bool:
        """Whether a retry after `delay` is allowed and would start before the deadline."""
        return self.retries and now + delay < self.deadline

    def retry_in(self, delay: float, now: float, error: PermitdError) -> float:
        """`delay` before retrying after the refusal `error`, or `Unavailable` if it won't fit."""
        if self.fits(delay, now):
            return delay
        raise self.give_up(str(error), now, error)

    def retry_failed_in(self, delay: float, now: float, exc: Exception) -> float:
        """`delay` before retrying after the transport error `exc`, or `Unavailable` from it."""
        if self.fits(delay, now):
            return delay
        raise self.give_up(describe_failure(exc), now) from exc

    def give_up(self, reason: str, now: float, cause: PermitdError | None = None) -> Unavailable:
        message = (
            f"{self.what}: {reason}; gave up after {self.attempts} "
            f"attempt{'s' if self.attempts != 1 else ''} in {now - self.started:.1f} s"
        )
        if not self.retries:
            message += " (no wait: one attempt)"
        if cause is None:
            return Unavailable(message)
        return Unavailable(
            message,
            retry_after=getattr(cause, "retry_after", None),
            status=cause.status,
            problem=cause.problem,
            request_id=cause.request_id,
        )


class CallPlan:
    """One call other than an acquire, retried on transient failures within `timeout`.

    `answered` hands back the final response for the caller to read, or the
    delay before the next attempt; `failed` does the same for a transport
    error. Both raise `Unavailable` once the budget would run out.
    """

    def __init__(self, what: str, *, timeout: float, now: float) -> None:
        self._budget = _Budget(what, started=now, deadline=now + timeout)
        self._backoff = Backoff()

    @property
    def ambiguous(self) -> bool:
        """An earlier attempt may have taken effect although its answer was lost."""
        return self._budget.ambiguous

    def http_timeout(self, now: float) -> float:
        self._budget.attempts += 1
        return max(self._budget.deadline - now, 0.001)

    def answered(self, response: httpx.Response, now: float) -> httpx.Response | float:
        if response.status_code not in TRANSIENT_STATUSES:
            return response
        self._budget.ambiguous = True
        error = error_from_response(response)
        return self._budget.retry_in(self._backoff.next(retry_after_of(response)), now, error)

    def failed(self, exc: Exception, now: float) -> float:
        if request_was_sent(exc):
            self._budget.ambiguous = True
        return self._budget.retry_failed_in(self._backoff.next(), now, exc)


class AcquirePlan:
    """One acquire: its long polls, its retries, and the key that makes them safe.

    The body is fixed for the whole acquire except `wait_ms`, because the
    server replays a permit for a retried Idempotency-Key only when the rest
    of the body is the same. The caller's `wait` is served by polls of at most
    `max_wait` each (the server refuses longer ones); between polls the
    acquire loses its place in the server's first-come-first-served queue.
    Transient failures (no answer, 502/503/504, a 409 for a key whose first
    request is still running) are retried with the same key until
    `wait + timeout` has passed, so a retry never takes a second permit.
    Without a wait (`wait == 0`) there is one attempt, bounded by `timeout`,
    and such a failure is `Unavailable` at once: "try once" means one request,
    not a backoff through the whole timeout. If that request may have been
    carried out (no answer after it was sent, a 503), its key is what gets
    that permit back: the caller may ask again with it.
    """

    def __init__(
        self,
        *,
        semaphore: str,
        body: dict[str, Any],
        key: str,
        wait: float,
        timeout: float,
        max_wait: float,
        now: float,
    ) -> None:
        self.key = key
        self._body = body
        self._timeout = timeout
        self._max_wait = max_wait
        self._wait_until = now + wait
        self._budget = _Budget(
            f"acquire on semaphore {semaphore!r}",
            started=now,
            deadline=self._wait_until + timeout,
            retries=wait > 0,
        )
        self._backoff = Backoff()
        self._poll_started = now
        self._poll_wait = 0.0

    def next_request(self, now: float) -> tuple[dict[str, Any], float]:
        """The body of the next attempt and how long to let it take."""
        # Rounded down, so a poll never asks for more than the server allows.
        wait_ms = int(max(0.0, min(self._wait_until - now, self._max_wait)) * 1000)
        self._budget.attempts += 1
        self._poll_started = now
        self._poll_wait = wait_ms / 1000
        http_timeout = min(self._poll_wait + self._timeout, self._budget.deadline - now)
        return {**self._body, "wait_ms": wait_ms}, max(http_timeout, 0.001)

    def answered(self, response: httpx.Response, now: float) -> Grant | float:
        """The permit, or the delay before the next attempt; raises for a final refusal."""
        status = response.status_code
        if status in (200, 201):
            # 200 is a replay: an earlier attempt of this acquire got the permit.
            return parse_grant(response.json())
        if status == 429:
            error = error_from_response(response)
            if self._wait_until - now < 0.001:
                raise error
            if now - self._poll_started >= self._poll_wait * _EARLY_POLL_FRACTION:
                return 0.0
            delay = self._backoff.next()
            if not self._budget.fits(delay, now):
                # Out of time while the server kept refusing for capacity: the
                # caller learns that (`NoCapacity`), not of an outage.
                raise error
            return delay
        if status in TRANSIENT_STATUSES or is_idempotency_in_progress(
            response, problem_of(response)
        ):
            error = error_from_response(response)
            return self._budget.retry_in(self._backoff.next(retry_after_of(response)), now, error)
        raise error_from_response(response)

    def failed(self, exc: Exception, now: float) -> float:
        """The delay before retrying after a transport error (or timeout)."""
        return self._budget.retry_failed_in(self._backoff.next(), now, exc)


class LeaseSchedule:
    """When a held lease is due for a refresh, and when it is surely over.

    Times are on the local monotonic clock, so they do not depend on the
    server's clock agreeing with ours. The server starts a lease somewhere
    between our sending the request and our reading its answer: the lease
    surely lasts until `sent + lease`, and is surely over at
    `answered + lease`. A refresh is due a third of the lease after it was
    sent, which leaves two more thirds for retries when one fails; failed
    refreshes are retried at least every tenth of the lease.
    """

    def __init__(self, lease: float, *, sent_at: float, answered_at: float) -> None:
        self.lease = lease
        self.sent_at = sent_at
        self.answered_at = answered_at
        self._backoff = Backoff()
        self._due: float | None = None

    def renewed(self, lease: float, *, sent_at: float, answered_at: float) -> None:
        self.lease = lease
        self.sent_at = sent_at
        self.answered_at = answered_at
        self._due = None
        self._backoff.reset()

    def refresh_soon(self, now: float) -> None:
        """Makes a refresh due now: for a lease whose start is unknown."""
        self._due = now

    @property
    def refresh_at(self) -> float:
        return self._due if self._due is not None else self.sent_at + self.lease / 3

    @property
    def surely_over_at(self) -> float:
        return self.answered_at + self.lease

    def retry_at(self, now: float, retry_after: float | None) -> float:
        return now + min(self._backoff.next(retry_after), self.lease / 10)
