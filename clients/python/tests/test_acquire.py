"""Acquiring and releasing permits, the `async with` block, and each refusal
an acquire can meet, on each store.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from time import monotonic

import pytest
from servers import until

import permitd


async def test_acquire_and_release(client: permitd.Client, name: str) -> None:
    sem = client.semaphore(name, limit=2)
    first = await sem.acquire(ttl=10, holder="a")
    assert (first.semaphore, first.count, first.holder) == (name, 1, "a")
    assert first.expires_at - first.acquired_at == timedelta(seconds=10)
    second = await sem.acquire(holder="b")
    assert second.fencing_token > first.fencing_token
    assert second.id != first.id

    status = await sem.status()
    assert (status.limit, status.held, status.available) == (2, 2, 0)
    assert sorted(h.holder or "" for h in status.holders) == ["a", "b"]

    await first.release()
    await second.release()
    await second.release()  # a second release does nothing
    assert first.released
    assert second.released
    assert (await sem.status()).held == 0


async def test_context_manager_runs_work_under_a_permit(client: permitd.Client, name: str) -> None:
    sem = client.semaphore(name, limit=1)
    ran = False
    async with sem.acquire(holder="worker-7") as permit:
        status = await sem.status()
        assert status.held == 1
        assert status.holders[0].fencing_token == permit.fencing_token
        assert status.holders[0].holder == "worker-7"
        ran = True
    assert ran
    assert permit.released
    assert not permit.lost
    assert (await sem.status()).held == 0


async def test_block_that_raises_releases_its_permit(client: permitd.Client, name: str) -> None:
    sem = client.semaphore(name, limit=1)
    with pytest.raises(ZeroDivisionError):
        async with sem.acquire():
            assert (await sem.status()).held == 1
            _ = 1 / 0
    assert (await sem.status()).held == 0


async def test_creating_a_semaphore_that_exists(client: permitd.Client, name: str) -> None:
    mine = client.semaphore(name, limit=2)
    assert (await mine.create()).limit == 2
    # The same limit shares it...
    theirs = client.semaphore(name, limit=2)
    assert (await theirs.create()).limit == 2
    async with mine.acquire():
        assert (await theirs.status()).held == 1
    # ...another limit is refused, both by create and (atomically) by acquire,
    # and names the current limit.
    other = client.semaphore(name, limit=3)
    with pytest.raises(permitd.LimitConflict) as created:
        await other.create()
    assert created.value.limit == 2
    with pytest.raises(permitd.LimitConflict) as acquired:
        await other.acquire()
    assert (acquired.value.status, acquired.value.limit) == (409, 2)
    assert (await mine.status()).limit == 2  # never silently changed
    # Changing it is explicit.
    assert (await other.set_limit(3)).limit == 3
    async with other.acquire():
        pass


async def test_full_semaphore_is_no_capacity(client: permitd.Client, name: str) -> None:
    sem = client.semaphore(name, limit=1)
    async with sem.acquire(ttl=20):
        with pytest.raises(permitd.NoCapacity) as caught:
            await sem.acquire()
        error = caught.value
        assert error.status == 429
        assert error.retry_after is not None
        assert 1 <= error.retry_after <= 20
        assert (error.limit, error.held, error.available) == (1, 1, 0)

        # With a wait, the refusal comes when the wait is over.
        started = monotonic()
        with pytest.raises(permitd.NoCapacity):
            await sem.acquire(wait=0.3)
        assert monotonic() - started >= 0.3


async def test_waiter_gets_the_permit_when_it_is_released(
    client: permitd.Client, name: str
) -> None:
    sem = client.semaphore(name, limit=1)
    holder = await sem.acquire(ttl=20)
    waiter = asyncio.ensure_future(sem.acquire(wait=10))

    async def queued() -> bool:
        return (await sem.status()).waiting == 1

    await until("the waiter to queue", queued)
    assert not waiter.done()
    await holder.release()
    permit = await asyncio.wait_for(waiter, 5)
    assert permit.fencing_token > holder.fencing_token
    await permit.release()


async def test_other_refusals(client: permitd.Client, name: str) -> None:
    unknown = client.semaphore(name)
    with pytest.raises(permitd.NotFound):
        await unknown.acquire()  # no such semaphore, and no limit to create it
    with pytest.raises(permitd.NotFound):
        await unknown.status()

    sem = client.semaphore(name, limit=2)
    await sem.create()
    with pytest.raises(permitd.CountExceedsLimit) as caught:
        await sem.acquire(count=3)
    assert caught.value.limit == 2
    with pytest.raises(permitd.InvalidRequest) as invalid:
        await sem.acquire(ttl=0.01)  # below the server's shortest lease
    assert "ttl_ms" in str(invalid.value)

    await sem.delete()
    with pytest.raises(permitd.NotFound):
        await sem.delete()


async def test_idempotency_key_replays_the_same_permit(client: permitd.Client, name: str) -> None:
    sem = client.semaphore(name, limit=5)
    first = await sem.acquire(ttl=10, idempotency_key=f"order-42-{name}")
    again = await sem.acquire(ttl=10, idempotency_key=f"order-42-{name}")
    assert again.id == first.id
    assert (await sem.status()).held == 1
    with pytest.raises(permitd.IdempotencyMismatch):
        # The same key with another body is a client bug, not a retry.
        await sem.acquire(ttl=20, idempotency_key=f"order-42-{name}")
    await first.release()
