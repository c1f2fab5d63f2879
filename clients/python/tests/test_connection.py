"""The connection check, tokens, and what a caller sees while the service is down:
a clear `Unavailable` within its time budget, never a hang, nothing left behind.
"""

from __future__ import annotations

import asyncio
from time import monotonic

import httpx
import pytest
from servers import Launcher, Permitd, free_port

import permitd


async def test_ready_is_the_connection_check(client: permitd.Client) -> None:
    assert await client.ready() is True


async def test_nothing_listening_is_unavailable_within_the_budget(name: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # a port nobody listens on
    async with permitd.Client(url, timeout=1.0) as client:
        assert await client.ready() is False
        started = monotonic()
        with pytest.raises(permitd.Unavailable) as caught:
            await client.semaphore(name, limit=1).acquire(wait=0.5)
        elapsed = monotonic() - started
    # The budget is wait + timeout = 1.5 s; the client gives up as soon as
    # its next retry could not start within it.
    assert elapsed <= 1.6, elapsed
    error = caught.value
    assert error.status is None
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert "cannot reach permitd" in str(error)
    assert "gave up after" in str(error)
    assert "1 attempt " not in str(error), str(error)
    # Nothing left running: no refresh, no release, no stray task.
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_no_wait_against_a_down_permitd_is_one_attempt_at_once(
    launcher: Launcher, name: str
) -> None:
    app = launcher.permitd()
    acquires: list[httpx.Request] = []

    async def on_request(request: httpx.Request) -> None:
        if request.method == "POST":
            acquires.append(request)

    async with (
        httpx.AsyncClient(event_hooks={"request": [on_request]}) as http,
        permitd.Client(app.url, http=http) as client,  # the default timeout, 10 s
    ):
        sem = client.semaphore(name, limit=1)
        await (await sem.acquire(ttl=1)).release()  # works while permitd is up
        app.process.kill()
        app.process.wait()
        acquires.clear()
        started = monotonic()
        with pytest.raises(permitd.Unavailable) as caught:
            await sem.acquire(wait=0)
        elapsed = monotonic() - started
    # No wait: one request, refused at once, then the error; no backoff
    # through the 10 s timeout.
    assert elapsed < 1.0, f"{len(acquires)} attempts in {elapsed:.1f} s"
    assert len(acquires) == 1
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert "cannot reach permitd" in str(caught.value)
    assert "gave up after 1 attempt " in str(caught.value), str(caught.value)


async def test_store_down_is_unavailable_within_the_budget(launcher: Launcher, name: str) -> None:
    redis = launcher.redis()
    app = launcher.permitd(redis=redis, PERMITD_REDIS_TIMEOUT_MS="500")
    async with permitd.Client(app.url, timeout=1.5) as client:
        sem = client.semaphore(name, limit=1)
        async with sem.acquire():
            pass  # works while Redis is up
        redis.kill()
        assert await client.ready() is False

        # No wait: the 503 is the answer, not a reason to retry.
        started = monotonic()
        with pytest.raises(permitd.Unavailable) as at_once:
            await sem.acquire()
        no_wait = monotonic() - started

        # With a wait, retried within wait + timeout. (permitd retries its
        # store within the wait and answers 503 at its end.)
        started = monotonic()
        with pytest.raises(permitd.Unavailable) as caught:
            await sem.acquire(wait=0.1, timeout=1.4)
        elapsed = monotonic() - started
        with pytest.raises(permitd.Unavailable):
            await sem.status()
    assert at_once.value.status == 503
    assert "gave up after 1 attempt " in str(at_once.value), str(at_once.value)
    assert no_wait < 0.9, no_wait
    error = caught.value
    assert error.status == 503
    assert error.type == "urn:permitd:problem:store-unavailable"
    assert error.retry_after == 1.0
    # Retry-After (1 s) was honoured between the two attempts the budget of
    # wait + timeout (1.5 s) allows, and the client gave up rather than
    # sleep past it.
    assert "gave up after 2 attempts" in str(error), str(error)
    assert 1.0 <= elapsed <= 1.5 + 0.5, elapsed
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_hung_server_is_unavailable_not_a_hang(
    launcher: Launcher, store: str, name: str
) -> None:
    app = launcher.server(store)
    async with permitd.Client(app.url, timeout=1.0) as client:
        sem = client.semaphore(name, limit=1)
        await sem.create()
        app.pause()  # accepts connections (the kernel does), never answers
        try:
            started = monotonic()
            with pytest.raises(permitd.Unavailable) as caught:
                await sem.acquire(ttl=1.0)
            elapsed = monotonic() - started
        finally:
            app.resume()
    assert elapsed <= 1.0 + 0.5, elapsed
    assert caught.value.status is None


async def test_tokens(launcher: Launcher, store: str, name: str) -> None:
    app: Permitd = launcher.server(store, PERMITD_API_TOKENS="s3cret-token")
    async with permitd.Client(app.url) as anonymous:
        # The probe needs no token, so the connection check works without one.
        assert await anonymous.ready() is True
        with pytest.raises(permitd.Unauthorized) as caught:
            await anonymous.semaphore(name, limit=1).acquire()
        assert caught.value.status == 401
    async with permitd.Client(app.url, token="wrong") as wrong:
        with pytest.raises(permitd.Unauthorized):
            await wrong.semaphore(name).status()
    async with (
        permitd.Client(app.url, token="s3cret-token") as client,
        client.semaphore(name, limit=1).acquire() as permit,
    ):
        assert permit.fencing_token > 0
