"""The exceptions this client raises, and the mapping from permitd's answers to them.

Every class derives from `PermitdError`, so one `except` catches them all; each
names one thing that happened, so callers catch what they can act on. Refusals
from the server arrive as `application/problem+json` (RFC 9457):
`error_from_response` picks the class by status and problem `type`, and every
error keeps the problem body (`problem`) and the `x-request-id` the server
logged the request under (`request_id`), for bug reports.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx

PROBLEM_PREFIX = "urn:permitd:problem:"


class PermitdError(Exception):
    """Base of every error this client raises.

    `status` is the HTTP status when the server answered (None when it could
    not be reached), `problem` the problem+json body (empty when there was
    none), `request_id` the server's id of the request.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        problem: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})
        self.request_id = request_id

    @property
    def type(self) -> str | None:
        """The problem `type`, e.g. `urn:permitd:problem:no-capacity`."""
        value = self.problem.get("type")
        return value if isinstance(value, str) else None

    @property
    def detail(self) -> str | None:
        """The server's explanation of this occurrence, if it gave one."""
        value = self.problem.get("detail")
        return value if isinstance(value, str) else None

    def _int_member(self, name: str) -> int | None:
        value = self.problem.get(name)
        # bool is an int subclass; a problem member is never meant as one.
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class InvalidRequest(PermitdError):
    """400: a value is outside its bound (e.g. `wait` above the server's maximum)."""


class Unauthorized(PermitdError):
    """401: the server wants a bearer token, and none or a wrong one was sent."""


class Forbidden(PermitdError):
    """403: the token is valid but lacks the permission this call needs."""


class NotFound(PermitdError):
    """404: no such semaphore (acquire without a limit, status, delete) or route."""


class Conflict(PermitdError):
    """409: the request conflicts with the semaphore's state."""


class LimitConflict(Conflict):
    """409: the semaphore exists with another limit; `limit` is the current one.

    Two clients that disagree about a limit never silently share a semaphore:
    acquire without a limit, with this one, or change it with `set_limit`.
    """

    @property
    def limit(self) -> int | None:
        return self._int_member("limit")


class CountExceedsLimit(Conflict):
    """409: `count` is more than the limit, so the acquire could never succeed."""

    @property
    def limit(self) -> int | None:
        return self._int_member("limit")


class IdempotencyMismatch(PermitdError):
    """The Idempotency-Key was used before with a different request body.

    A client bug rather than a retry: 422, or 409 `idempotency-key-reused`
    from servers that predate the 422.
    """


class PermitEnded(PermitdError):
    """410: a retried acquire whose permit was granted, and has ended since.

    The first attempt's answer was lost, and by the retry the permit had been
    released or had expired. The server never grants a second permit for the
    same key, so the caller decides whether to acquire anew.
    """


class _RetryAfter(PermitdError):
    """A refusal that may come with the server's `Retry-After`: `retry_after`, in seconds."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        problem: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, problem=problem, request_id=request_id)
        self.retry_after = retry_after


class NoCapacity(_RetryAfter):
    """429: not enough units came free within the wait.

    `retry_after` is the server's hint in seconds (when the soonest lease runs
    out); `limit`, `held` and `available` describe the semaphore at refusal.
    """

    @property
    def limit(self) -> int | None:
        return self._int_member("limit")

    @property
    def held(self) -> int | None:
        return self._int_member("held")

    @property
    def available(self) -> int | None:
        return self._int_member("available")


class Unavailable(_RetryAfter):
    """permitd could not serve the call within the time allowed.

    Either it answered 503 (its store is unreachable, or the request ran past
    its time limit; 502 and 504 from a proxy in front count too), or it could
    not be reached at all (`status` is None, `__cause__` the connection
    error). Raised only after retrying within the caller's time budget.
    """


class PermitLost(PermitdError):
    """The permit's lease ended while it was meant to be held.

    A refresh or release found it gone (404: it expired, or someone released
    it), or no refresh got through before the lease surely ran out. Work done
    after that point was not protected by the semaphore: another holder may
    have run alongside. `permit_id` and `semaphore` name the permit.
    """

    def __init__(
        self,
        message: str,
        *,
        permit_id: str,
        semaphore: str,
        status: int | None = None,
        problem: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, problem=problem, request_id=request_id)
        self.permit_id = permit_id
        self.semaphore = semaphore


class ProblemError(PermitdError):
    """Any other refusal (405, 413, 500, ...), with the problem body as sent."""


# Statuses that mean "try again shortly": permitd's own 503, and the answers a
# proxy or load balancer in front of it gives while it restarts.
TRANSIENT_STATUSES = frozenset({502, 503, 504})


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The problem body of `response`, or a stand-in when it has none.

    Proxies in front of permitd may answer with HTML or nothing; the stand-in
    keeps the status and some of the text so the error still says something.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"status": response.status_code, "detail": response.text[:200]}


def retry_after_of(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds: permitd sends whole seconds, RFC 9110 also allows a date."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_idempotency_in_progress(response: httpx.Response, problem: Mapping[str, Any]) -> bool:
    """409 about an Idempotency-Key whose first request is still being handled.

    A retry then has to wait for that request to finish, so it is retried
    like a 503. The server's other idempotency 409, `idempotency-key-reused`
    (a different body), is a client bug and is not.
    """
    kind = problem.get("type")
    return (
        response.status_code == 409
        and isinstance(kind, str)
        and "idempotency" in kind
        and kind != PROBLEM_PREFIX + "idempotency-key-reused"
    )


def error_from_response(response: httpx.Response) -> PermitdError:
    """The exception for a refusal: by status, and by problem `type` for 409."""
    problem = problem_of(response)
    status = response.status_code
    kind = problem.get("type")
    title = problem.get("title")
    detail = problem.get("detail")
    parts = [p for p in (title, detail) if isinstance(p, str) and p]
    message = ": ".join(parts) if parts else f"permitd answered {status}"
    request_id = response.headers.get("x-request-id")
    common: dict[str, Any] = {"status": status, "problem": problem, "request_id": request_id}

    if status == 429:
        retry_after = retry_after_of(response)
        if retry_after is not None:
            message += f" (retry after {retry_after:g} s)"
        return NoCapacity(message, retry_after=retry_after, **common)
    if status in TRANSIENT_STATUSES:
        return Unavailable(message, retry_after=retry_after_of(response), **common)
    if status == 409:
        if kind == PROBLEM_PREFIX + "limit-conflict":
            return LimitConflict(message, **common)
        if kind == PROBLEM_PREFIX + "count-exceeds-limit":
            return CountExceedsLimit(message, **common)
        if kind == PROBLEM_PREFIX + "idempotency-key-reused":
            return IdempotencyMismatch(message, **common)
        return Conflict(message, **common)
    by_status: dict[int, type[PermitdError]] = {
        400: InvalidRequest,
        401: Unauthorized,
        403: Forbidden,
        404: NotFound,
        410: PermitEnded,
        422: IdempotencyMismatch,
    }
    return by_status.get(status, ProblemError)(message, **common)
