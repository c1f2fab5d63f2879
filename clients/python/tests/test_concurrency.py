"""Many tasks on one semaphore never exceed its limit, and cancellation never
leaks a permit: not inside the block, not while releasing, not while waiting.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from servers import Permitd, until

import permitd


async def test_twenty_tasks_never_exceed_the_limit(client: permitd.Client, name: str) -> None:
    limit = 3
    sem = client.semaphore(name, limit=limit)
    in_flight = 0
    peak = 0
    held_seen: list[int] = []
    done = 0

    async def work(index: int) -> None:
        nonlocal in_flight, peak, done
        async with sem.acquire(wait=30, ttl=10, holder=f"task-{index}"):
            in_flight += 1
            peak = max(peak, in_flight)
            held_seen.append((await sem.status()).held)
            await asyncio.sleep(0.1)
            in_flight -= 1
        done += 1

    await asyncio.gather(*(work(i) for i in range(20)))
    assert done == 20
    # Never above the limit, counted here and by the server; and the limit
    # was used, so a client that ran them one at a time would fail too.
    assert peak == limit
    assert len(held_seen) == 20
    assert max(held_seen) <= limit
    assert min(held_seen) >= 1
    status = await sem.status()
    assert (status.held, status.waiting) == (0, 0)


async def test_cancelled_block_releases(client: permitd.Client, name: str) -> None:
    sem = client.semaphore(name, limit=1)
    entered = asyncio.Event()

    async def hold_forever() -> None:
        async with sem.acquire(ttl=30):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold_forever())
    await entered.wait()
    assert (await sem.status()).held == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await sem.status()).held == 0


async def test_cancelling_again_while_releasing_still_releases(server: Permitd, name: str) -> None:
    task: asyncio.Task[None] | None = None
    releases = 0

    async def on_request(request: httpx.Request) -> None:
        nonlocal releases
        if request.method == "DELETE" and task is not None:
            releases += 1
            # The release is on its way: cancel the task a second time now.
            task.cancel()

    entered = asyncio.Event()
    async with httpx.AsyncClient(event_hooks={"request": [on_request]}) as http:
        client = permitd.Client(server.url, http=http)
        sem = client.semaphore(name, limit=1)

        async def hold_forever() -> None:
            async with sem.acquire(ttl=30):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(hold_forever())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The release outlived the task; closing the client waits for it.
        await client.aclose()
        assert releases == 1

    async with permitd.Client(server.url) as observer:
        assert (await observer.semaphore(name).status()).held == 0


async def test_cancelled_waiter_leaves_the_queue(client: permitd.Client, name: str) -> None:
    sem = client.semaphore(name, limit=1)
    holder = await sem.acquire(ttl=30)

    async def wait_for_a_permit() -> None:
        async with sem.acquire(wait=20):
            pytest.fail("the waiter was granted a permit while the only unit was held")

    waiter = asyncio.create_task(wait_for_a_permit())

    async def queued() -> bool:
        return (await sem.status()).waiting == 1

    async def left() -> bool:
        return (await sem.status()).waiting == 0

    await until("the waiter to queue", queued)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await until("the cancelled waiter to leave the queue", left)
    await holder.release()
    # Nobody was waiting any more, so the released unit went to no one.
    assert (await sem.status()).held == 0
