"""The synchronous twin: the same behaviours, with a refresh thread instead of a task."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from servers import Launcher, Permitd, release_behind_its_back_sync

import permitd


def test_sync_client(server: Permitd, name: str) -> None:
    with permitd.SyncClient(server.url, timeout=5.0) as client:
        assert client.ready() is True
        sem = client.semaphore(name, limit=1)
        with sem.acquire(ttl=0.5, holder="script") as permit:
            time.sleep(1.5)  # three leases long: only the refresh thread keeps it
            assert not permit.lost
            status = sem.status()
            assert status.held == 1
            assert status.holders[0].fencing_token == permit.fencing_token
            assert status.holders[0].holder == "script"
            with pytest.raises(permitd.NoCapacity) as caught:
                sem.acquire()
            assert caught.value.retry_after is not None
        assert permit.released
        assert sem.status().held == 0

        with pytest.raises(permitd.LimitConflict) as conflict:
            client.semaphore(name, limit=2).acquire()
        assert conflict.value.limit == 1

        with pytest.raises(KeyError), sem.acquire():
            raise KeyError("the work failed")
        assert sem.status().held == 0

    # No refresh thread outlives its block.
    assert not [t for t in threading.enumerate() if t.name.startswith("permitd refresh")]


def test_sync_lost_lease_is_reported(server: Permitd, name: str) -> None:
    with permitd.SyncClient(server.url, timeout=5.0) as client:
        sem = client.semaphore(name, limit=1)
        with pytest.raises(permitd.PermitLost) as caught, sem.acquire(ttl=0.3) as permit:
            release_behind_its_back_sync(server.url, permit)
            assert permit.wait_lost(timeout=2.0) is permit.lost_error
        assert caught.value.permit_id == permit.id


def test_sync_wait_lost_is_none_on_timeout_then_the_loss(server: Permitd, name: str) -> None:
    with permitd.SyncClient(server.url, timeout=5.0) as client:
        sem = client.semaphore(name, limit=1)
        with pytest.raises(permitd.PermitLost), sem.acquire(ttl=0.5) as permit:
            started = time.monotonic()
            assert permit.wait_lost(timeout=0.3) is None  # held: the timeout ends it
            assert time.monotonic() - started >= 0.3
            release_behind_its_back_sync(server.url, permit)
            lost = permit.wait_lost(timeout=2.0)
            assert isinstance(lost, permitd.PermitLost)
            assert lost is permit.lost_error
            assert lost.permit_id == permit.id
            assert permit.wait_lost(timeout=0) is lost  # once lost, at once


def test_sync_no_wait_against_a_down_permitd_is_one_attempt_at_once(
    launcher: Launcher, name: str
) -> None:
    app = launcher.permitd()
    acquires: list[httpx.Request] = []

    def on_request(request: httpx.Request) -> None:
        if request.method == "POST":
            acquires.append(request)

    with (
        httpx.Client(event_hooks={"request": [on_request]}) as http,
        permitd.SyncClient(app.url, http=http) as client,  # the default timeout, 10 s
    ):
        sem = client.semaphore(name, limit=1)
        sem.acquire(ttl=1).release()  # works while permitd is up
        app.process.kill()
        app.process.wait()
        acquires.clear()
        started = time.monotonic()
        with pytest.raises(permitd.Unavailable) as caught:
            sem.acquire(wait=0)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"{len(acquires)} attempts in {elapsed:.1f} s"
    assert len(acquires) == 1
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert "gave up after 1 attempt " in str(caught.value), str(caught.value)


def test_sync_wait_is_served(server: Permitd, name: str) -> None:
    with permitd.SyncClient(server.url, timeout=5.0) as client:
        sem = client.semaphore(name, limit=1)
        holder = sem.acquire(ttl=10)
        timer = threading.Timer(0.3, holder.release)
        timer.start()
        started = time.monotonic()
        with sem.acquire(wait=5, ttl=10) as permit:
            assert time.monotonic() - started >= 0.3
            assert permit.fencing_token > holder.fencing_token
        timer.join()
