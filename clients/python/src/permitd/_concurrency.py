"""Where asyncio and threads differ, side by side: the few primitives the clients wait with.

`client.py` is written against the first half (`Async*`, `async_*`); the
blocking `sync.py` is generated from it by `scripts/unasync.py`, which maps
each of those names to its twin in the second half. Everything else the two
clients do is that one source, so a difference in behaviour can only come
from here, where the two versions of each primitive can be read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from time import monotonic
from typing import Any

# asyncio


async def async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def async_deadline(seconds: float) -> asyncio.Timeout:
    """Bounds a whole request (TimeoutError), on top of httpx's per-phase timeouts."""
    return asyncio.timeout(seconds)


class AsyncEvent:
    """Set once (a permit lost); waited for with an optional timeout."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None) -> bool:  # noqa: ASYNC109 (threading.Event's shape)
        """True once set; False if `timeout` seconds (None: no limit) pass first."""
        if self._event.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


class AsyncShieldedWork:
    """Work that must finish even if the task that started it is cancelled: a release.

    Each piece runs as a task of its own, held here so it is not
    garbage-collected mid-flight and so the client's `aclose` can wait for it.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.create_task(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Shielded: a task cancelled (again) while it releases must not cancel
        # the release too, or the units would stay held until the lease ran out.
        await asyncio.shield(task)

    async def wait(self) -> None:
        """Returns once every piece has finished."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))


class AsyncKeeper:
    """Runs one background loop (a permit's refresh) as a task, until stopped.

    `stop` cancels the task, so the loop ends wherever it waits; `stopped`
    tells it so at the points where it does not (an answer just read).
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def started(self) -> bool:
        return self._task is not None or self._stopped

    @property
    def stopped(self) -> bool:
        return self._stopped

    def start(self, loop: Callable[[], Coroutine[Any, Any, None]], *, name: str) -> None:
        self._task = asyncio.create_task(loop(), name=name)

    async def sleep_until(self, when: float) -> bool:
        """Sleeps until `when` (monotonic); False if stopped meanwhile."""
        await asyncio.sleep(max(0.0, when - monotonic()))
        return not self._stopped

    async def stop(self) -> None:
        """Ends the loop and returns once it has ended."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            # wait, unlike await, does not re-raise the loop's CancelledError.
            await asyncio.wait([task])


# Threads


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def deadline(seconds: float) -> contextlib.nullcontext[None]:
    """Nothing: a thread cannot be interrupted mid-request, so httpx's own
    timeouts (connect, each read, each write) are the bound."""
    return contextlib.nullcontext()


class Event:
    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)


class ShieldedWork:
    """Nothing cancels a thread's work: each piece just runs, to its end."""

    def run(self, work: Callable[[], None]) -> None:
        work()

    def wait(self) -> None:
        pass


class Keeper:
    """Runs one background loop as a daemon thread, until stopped.

    A daemon, so a script that exits without leaving its block is not kept
    alive by it (the lease then runs out by itself). `stop` wakes the loop
    from `sleep_until`; an attempt under way ends within its own timeout, and
    `stopped` tells the loop to drop its answer, so it cannot race the
    release that follows.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def started(self) -> bool:
        return self._thread is not None or self._stop.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self, loop: Callable[[], None], *, name: str) -> None:
        self._thread = threading.Thread(target=loop, name=name, daemon=True)
        self._thread.start()

    def sleep_until(self, when: float) -> bool:
        return not self._stop.wait(max(0.0, when - monotonic()))

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
