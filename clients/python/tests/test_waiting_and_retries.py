"""Waits longer than the server allows in one request are several long polls,
and retried acquires carry the same Idempotency-Key, so a retry whose first
attempt was granted unseen gets that permit rather than a second one.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from time import monotonic

import httpx
import pytest
from servers import Launcher, Permitd

import permitd


def is_acquire(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.endswith("/permits")


async def test_wait_longer_than_the_servers_maximum_is_several_polls(
    launcher: Launcher, store: str, name: str
) -> None:
    app = launcher.server(store, PERMITD_MAX_WAIT_MS="1000")
    polls: list[int] = []

    async def on_request(request: httpx.Request) -> None:
        if is_acquire(request):
            polls.append(json.loads(request.content)["wait_ms"])

    async with (
        httpx.AsyncClient(event_hooks={"request": [on_request]}) as http,
        permitd.Client(app.url, max_wait=1.0, http=http) as client,
    ):
        sem = client.semaphore(name, limit=1)
        holder = await sem.acquire(ttl=10)

        async def release_later() -> None:
            await asyncio.sleep(1.8)
            await holder.release()

        releaser = asyncio.create_task(release_later())
        polls.clear()
        started = monotonic()
        async with sem.acquire(wait=2.5, ttl=10):
            waited = monotonic() - started
        await releaser

        # A client that sent the whole wait at once is refused by this server.
        async with permitd.Client(app.url) as naive:
            with pytest.raises(permitd.InvalidRequest, match="wait_ms"):
                await naive.semaphore(name).acquire(wait=2.5)

    assert 1.7 <= waited < 2.5, waited
    assert len(polls) >= 2, polls
    assert all(0 < wait_ms <= 1000 for wait_ms in polls), polls


async def test_every_acquire_sends_its_own_key(server: Permitd, name: str) -> None:
    keys: list[str | None] = []

    async def on_request(request: httpx.Request) -> None:
        if is_acquire(request):
            keys.append(request.headers.get("idempotency-key"))

    async with (
        httpx.AsyncClient(event_hooks={"request": [on_request]}) as http,
        permitd.Client(server.url, http=http) as client,
    ):
        sem = client.semaphore(name, limit=2)
        async with sem.acquire(), sem.acquire():
            pass
    assert len(keys) == 2
    assert all(key is not None and uuid.UUID(key).version == 4 for key in keys)
    assert keys[0] != keys[1]


class LoseFirstAnswer(httpx.AsyncBaseTransport):
    """Sends the first acquire to the server, then drops its answer on the floor.

    To the client this is a connection that broke after the request went
    out: the server granted a permit the client never heard of.
    """

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.acquires: list[tuple[str | None, int, dict[str, object]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if not is_acquire(request):
            return response
        body = json.loads(await response.aread())
        self.acquires.append((request.headers.get("idempotency-key"), response.status_code, body))
        if len(self.acquires) == 1:
            raise httpx.ReadError("answer lost (dropped by the test)", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_retry_after_a_lost_answer_gets_the_same_permit(server: Permitd, name: str) -> None:
    transport = LoseFirstAnswer()
    async with (
        httpx.AsyncClient(transport=transport) as http,
        permitd.Client(server.url, http=http) as client,
    ):
        sem = client.semaphore(name, limit=5)
        permit = await sem.acquire(ttl=10, wait=1)
        status = await sem.status()
        await permit.release()

    (first_key, first_status, first_body), (retry_key, retry_status, _) = transport.acquires
    assert first_status == 201
    assert retry_key == first_key
    # The retry was answered with the permit the lost answer carried (a
    # replay), and only that one permit was ever held.
    assert retry_status == 200
    assert permit.id == first_body["id"]
    assert status.held == 1


async def test_no_wait_is_one_attempt_and_its_key_recovers_a_lost_answer(
    server: Permitd, name: str
) -> None:
    transport = LoseFirstAnswer()
    async with (
        httpx.AsyncClient(transport=transport) as http,
        permitd.Client(server.url, http=http) as client,
    ):
        sem = client.semaphore(name, limit=5)
        acquisition = sem.acquire(ttl=10)  # no wait: one attempt
        with pytest.raises(permitd.Unavailable, match="gave up after 1 attempt ") as caught:
            await acquisition
        assert len(transport.acquires) == 1
        # The server did grant it; the caller asks again with the same key
        # and is answered with that permit, not a second one.
        permit = await sem.acquire(ttl=10, idempotency_key=acquisition.idempotency_key)
        status = await sem.status()
        await permit.release()

    assert isinstance(caught.value.__cause__, httpx.ReadError)
    (first_key, first_status, first_body), (retry_key, retry_status, _) = transport.acquires
    assert (first_status, retry_status) == (201, 200)
    assert retry_key == first_key
    assert permit.id == first_body["id"]
    assert status.held == 1


async def test_503_while_redis_stalls_is_retried_with_the_same_key(
    launcher: Launcher, name: str
) -> None:
    redis = launcher.redis()
    app = launcher.permitd(redis=redis, PERMITD_REDIS_TIMEOUT_MS="300")
    answers: list[tuple[str | None, int]] = []
    got_503 = asyncio.Event()

    async def on_response(response: httpx.Response) -> None:
        if is_acquire(response.request):
            answers.append((response.request.headers.get("idempotency-key"), response.status_code))
            if response.status_code == 503:
                got_503.set()

    async with (
        httpx.AsyncClient(event_hooks={"response": [on_response]}) as http,
        permitd.Client(app.url, timeout=10.0, http=http) as client,
    ):
        sem = client.semaphore(name, limit=3)
        await sem.create()
        redis.pause()
        try:
            # A short wait: the server retries its store within a wait and
            # answers 503 at its end; the client retries within the timeout
            # after it (without a wait, the 503 would be the answer).
            acquiring = asyncio.ensure_future(sem.acquire(ttl=20, wait=0.1))
            await asyncio.wait_for(got_503.wait(), 5.0)
        finally:
            redis.resume()
        permit = await asyncio.wait_for(acquiring, 10.0)
        status = await sem.status()
        await permit.release()

    assert answers[0][1] == 503
    assert answers[-1][1] in (200, 201)
    assert len({key for key, _ in answers}) == 1, answers
    # Whether Redis ran the stalled attempt's script once it resumed (then
    # the retry was a replay) or not, exactly one permit is held.
    assert status.held == 1
    assert status.holders[0].fencing_token == permit.fencing_token
