"""Fixtures: permitd servers on each store, clients, and unique semaphore names.

`server` is one permitd per store ("memory", "redis") for the whole session:
tests that take it run once on each, and isolate themselves by semaphore name
(`name`). Tests that need a server of their own (other settings, or one they
break on purpose) start it with `launcher`, on each store with `store`; it
stops everything it started when the test ends.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from servers import STORES, Launcher, Permitd

import permitd


@pytest.fixture(scope="session")
def session_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("servers"))
    yield launcher
    launcher.close()


@pytest.fixture(scope="session", params=STORES)
def server(request: pytest.FixtureRequest, session_launcher: Launcher) -> Permitd:
    """A permitd with default settings, shared by the session, on each store."""
    store: str = request.param
    return session_launcher.server(store)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    """For tests that start their own server: run them on each store."""
    value: str = request.param
    return value


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.close()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A semaphore name no other test uses (tests share the session's servers)."""
    test = re.sub(r"[^A-Za-z0-9._:-]", "-", request.node.name)[:80]
    return f"{test}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(server: Permitd) -> AsyncIterator[permitd.Client]:
    async with permitd.Client(server.url, timeout=5.0) as client:
        yield client
