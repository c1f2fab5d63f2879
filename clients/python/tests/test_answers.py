"""How the client reads answers, without a server.

The other tests run against the real binary; these cover what it cannot be
made to say on demand (403, 410, 422, a 409 for a key still in use, a 500),
and the arithmetic of polls and retries with a made-up clock. They feed the
client through httpx's MockTransport, so each counts exactly what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

import permitd
from permitd._protocol import AcquirePlan, Backoff

GRANT = {
    "id": "3b0c5a4e-8f1d-4c3a-9a57-2f6c1e0d9b21",
    "semaphore": "payments",
    "count": 1,
    "fencing_token": 1795851413712265,
    "acquired_at": "2026-11-28T07:36:53.712Z",
    "expires_at": "2026-11-28T07:37:23.712Z",
    "holder": "worker-7",
}


def problem(status: int, kind: str, **extra: Any) -> httpx.Response:
    body = {"type": f"urn:permitd:problem:{kind}", "title": kind, "status": status, "detail": kind}
    headers = {"content-type": "application/problem+json"}
    if "retry_after" in extra:
        headers["retry-after"] = str(extra.pop("retry_after"))
    return httpx.Response(status, json={**body, **extra}, headers=headers)


class Server:
    """Answers acquires from a script of responses (or exceptions), recording each request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self._answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self._answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]


async def acquire_with(server: Server, **options: Any) -> permitd.Permit:
    transport = httpx.MockTransport(server)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        permitd.Client("http://permitd.test", http=http, timeout=5.0) as client,
    ):
        return await client.semaphore("payments", limit=5).acquire(**options)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (problem(410, "permit-ended"), permitd.PermitEnded),
        (problem(422, "idempotency-key-mismatch"), permitd.IdempotencyMismatch),
        (problem(409, "idempotency-key-reused"), permitd.IdempotencyMismatch),
        (problem(403, "forbidden"), permitd.Forbidden),
        (problem(401, "unauthorized"), permitd.Unauthorized),
        (problem(500, "internal"), permitd.ProblemError),
        (problem(409, "something-new"), permitd.Conflict),
    ],
)
async def test_final_refusals_are_not_retried(
    answer: httpx.Response, error: type[permitd.PermitdError]
) -> None:
    server = Server(answer)
    with pytest.raises(error) as caught:
        await acquire_with(server)
    assert type(caught.value) is error
    assert caught.value.status == answer.status_code
    assert caught.value.problem == answer.json()
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("connection reset"),
        problem(503, "store-unavailable", retry_after=0),
        problem(409, "idempotency-key-in-use"),  # the first attempt is still running
        httpx.Response(502, text="<html>bad gateway</html>"),
    ],
)
async def test_transient_failures_are_retried_with_the_same_key(
    failure: httpx.Response | Exception,
) -> None:
    server = Server(failure, httpx.Response(201, json=GRANT))
    permit = await acquire_with(server, ttl=30, wait=1)
    assert permit.id == GRANT["id"]
    assert len(server.requests) == 2
    assert server.keys[0] is not None
    assert server.keys[0] == server.keys[1]
    # The body is the same too, but for the wait left: the server replays
    # only an identical request, and ignores wait_ms when it compares.
    first, retry = (json.loads(r.content) for r in server.requests)
    assert first.pop("wait_ms") >= retry.pop("wait_ms")
    assert first == retry


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("connection reset"),
        problem(503, "store-unavailable", retry_after=0),
        problem(409, "idempotency-key-in-use"),
        httpx.Response(502, text="<html>bad gateway</html>"),
    ],
)
async def test_no_wait_is_one_attempt_whatever_the_failure(
    failure: httpx.Response | Exception,
) -> None:
    server = Server(failure, httpx.Response(201, json=GRANT))
    with pytest.raises(permitd.Unavailable, match="gave up after 1 attempt "):
        await acquire_with(server, ttl=30)
    assert len(server.requests) == 1


async def test_given_key_is_sent() -> None:
    server = Server(httpx.Response(201, json=GRANT))
    await acquire_with(server, idempotency_key="order-42")
    assert server.keys == ["order-42"]
    assert json.loads(server.requests[0].content) == {"count": 1, "limit": 5, "wait_ms": 0}


def test_sync_client_retries_with_the_same_key() -> None:
    server = Server(httpx.ConnectError("refused"), httpx.Response(201, json=GRANT))
    with (
        httpx.Client(transport=httpx.MockTransport(server)) as http,
        permitd.SyncClient("http://permitd.test", http=http) as client,
    ):
        permit = client.semaphore("payments", limit=5).acquire(wait=1)
    assert permit.fencing_token == GRANT["fencing_token"]
    assert server.keys[0] is not None
    assert server.keys[0] == server.keys[1]


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def test_backoff_grows_to_its_cap_and_honours_retry_after() -> None:
    backoff = Backoff(first=0.1, cap=1.0, rng=fixed(1.0))
    assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.next(retry_after=3.0) == 3.0
    backoff.reset()
    assert backoff.next() == 0.1
    # Jitter takes off up to half.
    assert Backoff(first=0.1, cap=1.0, rng=fixed(0.0)).next() == 0.05


def no_capacity() -> httpx.Response:
    return problem(429, "no-capacity", retry_after=7, limit=1, held=1, available=0)


def test_long_wait_is_split_into_polls_of_the_servers_maximum() -> None:
    plan = AcquirePlan(
        semaphore="s", body={}, key="k", wait=2.5, timeout=1.0, max_wait=1.0, now=0.0
    )
    body, http_timeout = plan.next_request(0.0)
    assert (body["wait_ms"], http_timeout) == (1000, 2.0)
    assert plan.answered(no_capacity(), 1.0) == 0.0  # the poll ran its course: poll again
    assert plan.next_request(1.0)[0]["wait_ms"] == 1000
    assert plan.answered(no_capacity(), 2.0) == 0.0
    assert plan.next_request(2.0)[0]["wait_ms"] == 500
    with pytest.raises(permitd.NoCapacity) as caught:
        plan.answered(no_capacity(), 2.5)
    assert caught.value.retry_after == 7.0


def test_early_no_capacity_is_not_polled_again_at_once() -> None:
    plan = AcquirePlan(
        semaphore="s", body={}, key="k", wait=5.0, timeout=1.0, max_wait=1.0, now=0.0
    )
    plan.next_request(0.0)
    # Refused long before its 1 s were up: repeating at once could spin.
    delay = plan.answered(no_capacity(), 0.01)
    assert isinstance(delay, float)
    assert delay > 0


def test_retry_that_cannot_start_in_time_gives_up_at_once() -> None:
    plan = AcquirePlan(
        semaphore="s", body={}, key="k", wait=0.5, timeout=1.0, max_wait=60.0, now=0.0
    )
    plan.next_request(0.0)
    assert plan.answered(problem(503, "store-unavailable", retry_after=1), 0.1) == 1.0
    plan.next_request(1.1)
    with pytest.raises(permitd.Unavailable, match="gave up after 2 attempts") as caught:
        plan.answered(problem(503, "store-unavailable", retry_after=1), 1.2)
    assert (caught.value.status, caught.value.retry_after) == (503, 1.0)


def test_retry_after_may_be_a_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    response = httpx.Response(
        429, headers={"retry-after": format_datetime(when, usegmt=True)}, json={}
    )
    error = permitd.errors.error_from_response(response)
    assert isinstance(error, permitd.NoCapacity)
    assert error.retry_after is not None
    assert 28 <= error.retry_after <= 30
