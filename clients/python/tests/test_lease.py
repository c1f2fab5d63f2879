"""Leases: the background refresh keeps a short lease alive, explicit refresh
and release, and a lease lost anyway is reported as `PermitLost`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from servers import Permitd, release_behind_its_back

import permitd


async def test_refresh_keeps_a_one_second_lease_for_three(
    client: permitd.Client, name: str
) -> None:
    sem = client.semaphore(name, limit=1)
    async with sem.acquire(ttl=1.0, holder="long") as permit:
        first_expiry = permit.expires_at
        await asyncio.sleep(3.0)  # three leases long: only refreshes keep it
        assert not permit.lost
        assert permit.expires_at - first_expiry > timedelta(seconds=1.5)
        status = await sem.status()
        assert status.held == 1
        assert status.holders[0].fencing_token == permit.fencing_token
        with pytest.raises(permitd.NoCapacity):
            await client.semaphore(name).acquire()
    # Leaving the block found the permit still held: no PermitLost.
    assert permit.released
    assert (await sem.status()).held == 0


async def test_lost_lease_is_reported(client: permitd.Client, server: Permitd, name: str) -> None:
    sem = client.semaphore(name, limit=1)
    with pytest.raises(permitd.PermitLost) as caught:
        async with sem.acquire(ttl=0.3) as permit:
            await release_behind_its_back(server.url, permit)
            lost = await asyncio.wait_for(permit.wait_lost(), 2.0)
            assert permit.lost
            assert permit.lost_error is lost
    error = caught.value
    assert (error.permit_id, error.semaphore, error.status) == (permit.id, name, 404)
    assert "refresh found it gone" in str(error)


async def test_wait_lost_is_none_on_timeout_then_the_loss(
    client: permitd.Client, server: Permitd, name: str
) -> None:
    sem = client.semaphore(name, limit=1)
    with pytest.raises(permitd.PermitLost):
        async with sem.acquire(ttl=0.5) as permit:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await permit.wait_lost(timeout=0.3) is None  # held: the timeout ends it
            assert loop.time() - started >= 0.3
            await release_behind_its_back(server.url, permit)
            lost = await permit.wait_lost(timeout=2.0)
            assert isinstance(lost, permitd.PermitLost)
            assert lost is permit.lost_error
            assert lost.permit_id == permit.id
            assert await permit.wait_lost(timeout=0) is lost  # once lost, at once


async def test_lost_lease_is_noted_on_the_blocks_own_error(
    client: permitd.Client, server: Permitd, name: str
) -> None:
    sem = client.semaphore(name, limit=1)
    with pytest.raises(ValueError, match="the work failed") as caught:
        async with sem.acquire(ttl=0.3) as permit:
            await release_behind_its_back(server.url, permit)
            await asyncio.wait_for(permit.wait_lost(), 2.0)
            raise ValueError("the work failed")
    assert any("was lost" in note for note in caught.value.__notes__)


async def test_explicit_refresh_and_release(
    client: permitd.Client, server: Permitd, name: str
) -> None:
    sem = client.semaphore(name, limit=1)
    permit = await sem.acquire(ttl=0.5)
    await permit.refresh(ttl=20)
    assert permit.expires_at - permit.acquired_at >= timedelta(seconds=20)
    assert (await sem.status()).holders[0].expires_at == permit.expires_at
    await permit.release()
    with pytest.raises(RuntimeError):
        await permit.refresh()

    gone = await sem.acquire(ttl=20)
    await release_behind_its_back(server.url, gone)
    with pytest.raises(permitd.PermitLost):
        await gone.refresh()
    assert gone.lost


async def test_release_after_the_lease_ran_out_is_permit_lost(
    client: permitd.Client, name: str
) -> None:
    sem = client.semaphore(name, limit=1)
    permit = await sem.acquire(ttl=0.2)  # awaited, not a block: nothing refreshes it
    await asyncio.sleep(0.4)
    assert (await sem.status()).held == 0
    with pytest.raises(permitd.PermitLost) as caught:
        await permit.release()
    assert caught.value.status == 404


async def test_replayed_permit_is_refreshed_at_once(client: permitd.Client, name: str) -> None:
    sem = client.semaphore(name, limit=1)
    key = f"restart-{name}"
    earlier = await sem.acquire(ttl=1.5, idempotency_key=key)  # say, before a restart
    await asyncio.sleep(1.2)  # most of its lease is gone
    async with sem.acquire(ttl=1.5, idempotency_key=key) as permit:
        assert permit.id == earlier.id
        # A first refresh a third of a lease from now (0.5 s) would come
        # after the lease's end (0.3 s from now); it must come at once.
        await asyncio.sleep(0.6)
        assert not permit.lost
        assert (await sem.status()).held == 1
