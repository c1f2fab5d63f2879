# unasync: async-only
"""The asyncio client: `Client`, its `Semaphore`s, and the `Permit`s they grant.

```python
async with permitd.Client("http://127.0.0.1:8080", token=token) as client:
    sem = client.semaphore("payments", limit=5)
    async with sem.acquire(ttl=30, wait=10, holder="worker-7") as permit:
        await call_api(fencing_token=permit.fencing_token)
```

Inside `async with sem.acquire(...)` the lease is refreshed in the
background, and the permit is released when the block ends: normally, by an
exception, or by cancellation (the release is shielded, so cancelling the
task again while it releases does not stop it; `Client.aclose` waits for it).
A lease that is lost anyway is reported as `PermitLost` when the block ends,
and `permit.lost` / `await permit.wait_lost()` tell the block while it runs;
the block is not interrupted, since only it knows how to stop its work safely.
The decisions themselves (polls, retries, lease timing) are in `_protocol`,
and what a permit's answers mean in `_permit`.

This file is also the source of the synchronous twin, `permitd.sync`:
`scripts/unasync.py` rewrites it (`async def` to `def`, `Client` to
`SyncClient`, ...). Where asyncio and threads differ it uses the primitives
of `_concurrency`, whose thread versions the twin gets; the lines only one
side has are marked `# unasync: async-only` or, commented out here,
`# unasync: sync-only`. Edit this file, never `sync.py`, then run the script.
"""
# unasync: sync-only
# """The synchronous twin of the asyncio client, for scripts: `SyncClient`,
# `SyncSemaphore`, `SyncPermit`.
#
# ```python
# with permitd.SyncClient("http://127.0.0.1:8080") as client:
#     sem = client.semaphore("reports", limit=3)
#     with sem.acquire(ttl=30, wait=10) as permit:
#         build_report(fencing_token=permit.fencing_token)
# ```
#
# `sem.acquire(...)` acquires at once and returns the permit; used in `with`,
# the lease is refreshed by a background thread for the block and released
# when it ends, and a lease lost anyway raises `PermitLost` there (the block is
# not interrupted: `permit.lost` and `permit.wait_lost(timeout)` tell it). Used
# without `with`, the caller refreshes and releases. It is the asyncio client's
# code (`client.py`), rewritten by `scripts/unasync.py`; only the waiting is
# done with threads instead of tasks (`_concurrency`).
# """
# unasync: end

from __future__ import annotations

# unasync: async-only
from collections.abc import Generator

# unasync: end
from time import monotonic
from types import TracebackType
from typing import Any, Self

import httpx

from ._concurrency import AsyncEvent, AsyncKeeper, AsyncShieldedWork, async_deadline, async_sleep
from ._permit import PermitBase
from ._protocol import (
    USER_AGENT,
    AcquirePlan,
    CallPlan,
    acquire_body,
    acquire_key,
    acquire_timeout,
    auth_headers,
    check_created,
    check_settings,
    create_limit,
    read_deleted,
    read_ready,
    read_status,
    semaphore_path,
)
from .errors import NotFound, PermitdError, PermitLost
from .models import Grant, SemaphoreStatus

# What a failed attempt can raise: httpx's transport errors (its timeouts
# included), and TimeoutError from the bound put around each whole request
# (asyncio's; threads have only httpx's).
_TRANSPORT_ERRORS = (httpx.TransportError, TimeoutError)


class Client:
    """A connection to one permitd (or a load balancer in front of several).

    `token` is sent as `Authorization: Bearer <token>`. `timeout` (seconds)
    bounds every call, retries of unreachable-server and 503 answers
    included; an acquire may take its `wait` on top. `max_wait` is the
    server's `--max-wait-ms` in seconds (60 by default on both sides): longer
    waits are sent as several polls of at most that. Pass `http` to use your
    own `httpx.AsyncClient` (proxies, TLS, event hooks); it is then yours to
    close.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        max_wait: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._base = check_settings(url, timeout, max_wait)
        self.timeout = timeout
        self.max_wait = max_wait
        self._auth = auth_headers(token)
        self._owns_http = http is None
        if http is None:
            http = httpx.AsyncClient(headers={"User-Agent": USER_AGENT})
        # One httpx client for every task or thread: the background refreshes use it too.
        self._http = http
        # Releases that must finish although the block that started them is
        # cancelled (a task's; a thread's just run to their end); aclose waits
        # for them.
        self._shielded = AsyncShieldedWork()

    @property
    def url(self) -> str:
        return self._base

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes, once releases still under way (of cancelled tasks) have ended.

        Each such release is bounded by `timeout`.
        """
        await self._shielded.wait()
        if self._owns_http:
            await self._http.aclose()

    def semaphore(self, name: str, *, limit: int | None = None) -> Semaphore:
        """A handle on semaphore `name`; nothing is sent until it is used.

        With `limit`, acquires create the semaphore when it does not exist,
        and refuse (`LimitConflict`) when it exists with another limit.
        """
        return Semaphore(self, name, limit)

    async def ready(self) -> bool:
        """The connection check: True when permitd answers and its store does.

        False when permitd cannot be reached or says its store cannot (503);
        one attempt, bounded by `timeout`. Other answers (say, a URL that is
        not a permitd) raise their error.
        """
        try:
            response = await self._send("GET", "/readyz", within=self.timeout)
        except _TRANSPORT_ERRORS:
            return False
        return read_ready(response)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        within: float,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One attempt: httpx's timeouts bound each phase, a deadline (asyncio) the whole."""
        async with async_deadline(within):
            return await self._http.request(
                method,
                self._base + path,
                json=json,
                headers={**self._auth, **(headers or {})},
                timeout=within,
            )

    async def _call(
        self, what: str, method: str, path: str, json: dict[str, Any] | None = None
    ) -> tuple[httpx.Response, bool]:
        """A call retried on transient failures within `timeout`.

        Returns the final response and whether an earlier attempt may have
        taken effect unseen (so a 404 may mean "already done").
        """
        plan = CallPlan(what, timeout=self.timeout, now=monotonic())
        while True:
            try:
                response = await self._send(
                    method, path, json=json, within=plan.http_timeout(monotonic())
                )
            except _TRANSPORT_ERRORS as exc:
                delay = plan.failed(exc, monotonic())
            else:
                result = plan.answered(response, monotonic())
                if isinstance(result, httpx.Response):
                    return result, plan.ambiguous
                delay = result
            await async_sleep(delay)


class Semaphore:
    """One semaphore of a `Client`: acquire permits, read or change it."""

    def __init__(self, client: Client, name: str, limit: int | None) -> None:
        self._client = client
        self.name = name
        self._limit = limit

    @property
    def limit(self) -> int | None:
        """The limit acquires create the semaphore with (and insist on), if any."""
        return self._limit

    def __repr__(self) -> str:
        return f"<Semaphore {self.name!r} limit={self._limit}>"

    def acquire(
        self,
        *,
        count: int = 1,
        ttl: float | None = None,
        wait: float = 0.0,
        holder: str | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Acquisition:
        """Asks for `count` units for a lease of `ttl` seconds (server default: 30).

        `wait` is how long to wait for capacity. With a wait, `timeout`
        (default: the client's) bounds the retries of transient failures on
        top of it, so the acquire ends within `wait + timeout`; without one
        (0, the default) there is one attempt, bounded by `timeout`, and no
        retry. Every attempt carries the same `Idempotency-Key` (a fresh UUID
        unless given), so a retry whose first attempt was granted unseen gets
        that same permit; after an `Unavailable`, asking again with the same
        `idempotency_key` does that too.

        `async with sem.acquire(...) as permit:` holds the permit for the
        block (see the module doc); `permit = await sem.acquire(...)` just
        acquires, and the caller refreshes and releases.

        Raises `NoCapacity` when the wait ends, `LimitConflict`,
        `CountExceedsLimit`, `NotFound` (no such semaphore and no limit),
        `Unavailable`, `PermitEnded`, `IdempotencyMismatch`, `Unauthorized`.
        """
        body = acquire_body(limit=self._limit, count=count, ttl=ttl, wait=wait, holder=holder)
        key = acquire_key(idempotency_key)
        timeout = acquire_timeout(timeout, self._client.timeout)
        # unasync: async-only
        return Acquisition(self, body, key=key, wait=wait, retries_for=timeout)
        # unasync: sync-only
        # return self._acquire(body, key=key, wait=wait, retries_for=timeout)
        # unasync: end

    async def status(self) -> SemaphoreStatus:
        """Limit, held, available, waiting and the live holders. `NotFound` if none."""
        response, _ = await self._client._call(
            f"status of semaphore {self.name!r}", "GET", semaphore_path(self.name)
        )
        return read_status(response, 200)

    async def create(self) -> SemaphoreStatus:
        """Makes sure the semaphore exists with this handle's limit.

        An existing semaphore with the same limit is shared as it is; one with
        another limit is a `LimitConflict` (made by this client, naming the
        current limit), never silently changed: use `set_limit` for that. The
        server has no create-only call, so this reads, then creates: two
        creators racing with different limits in that gap leave the later
        one's limit. Acquiring with a limit checks atomically.
        """
        limit = create_limit(self._limit)
        try:
            current = await self.status()
        except NotFound:
            return await self.set_limit(limit)
        return check_created(self.name, current, limit)

    async def set_limit(self, limit: int) -> SemaphoreStatus:
        """Creates the semaphore with `limit`, or changes its limit to it.

        Lowering never revokes held permits. This handle's later acquires
        use the new limit.
        """
        response, _ = await self._client._call(
            f"set limit of semaphore {self.name!r}",
            "PUT",
            semaphore_path(self.name),
            {"limit": limit},
        )
        status = read_status(response, 200, 201)
        self._limit = limit
        return status

    async def delete(self) -> None:
        """Removes the semaphore with every permit. `NotFound` if there is none."""
        response, ambiguous = await self._client._call(
            f"delete of semaphore {self.name!r}", "DELETE", semaphore_path(self.name)
        )
        read_deleted(response, ambiguous)

    async def _acquire(
        self, body: dict[str, Any], *, key: str, wait: float, retries_for: float
    ) -> Permit:
        """The acquire itself: its polls and retries, until a permit or an error.

        `retries_for` is the acquire's `timeout`: how long transient failures
        are retried after the wait (none without a wait).
        """
        client = self._client
        plan = AcquirePlan(
            semaphore=self.name,
            body=body,
            key=key,
            wait=wait,
            timeout=retries_for,
            max_wait=client.max_wait,
            now=monotonic(),
        )
        path = semaphore_path(self.name) + "/permits"
        while True:
            sent = monotonic()
            request_body, http_timeout = plan.next_request(sent)
            try:
                response = await client._send(
                    "POST",
                    path,
                    json=request_body,
                    headers={"Idempotency-Key": plan.key},
                    within=http_timeout,
                )
            except _TRANSPORT_ERRORS as exc:
                delay = plan.failed(exc, monotonic())
            else:
                answered = monotonic()
                result = plan.answered(response, answered)
                if isinstance(result, Grant):
                    return Permit(
                        client,
                        result,
                        ttl_ms=body.get("ttl_ms"),
                        sent_at=sent,
                        answered_at=answered,
                        # 200: an earlier request was granted this permit.
                        replayed=response.status_code == 200,
                    )
                delay = result
            await async_sleep(delay)


# unasync: async-only
class Acquisition:
    """What `Semaphore.acquire` returns: use it in `async with`, or await it.

    (The synchronous twin has no such thing: its `acquire` acquires at once
    and returns the permit, which is its own `with` block.)
    """

    def __init__(
        self,
        semaphore: Semaphore,
        body: dict[str, Any],
        *,
        key: str,
        wait: float,
        retries_for: float,
    ) -> None:
        self._semaphore = semaphore
        self._body = body
        self.idempotency_key = key
        self._wait = wait
        self._retries_for = retries_for
        self._permit: Permit | None = None

    def __await__(self) -> Generator[Any, None, Permit]:
        return self._acquire().__await__()

    async def __aenter__(self) -> Permit:
        permit = await self._acquire()
        permit._hold()
        self._permit = permit
        return permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._permit is not None:
            await self._permit._end_block(exc)

    async def _acquire(self) -> Permit:
        return await self._semaphore._acquire(
            self._body, key=self.idempotency_key, wait=self._wait, retries_for=self._retries_for
        )


# unasync: end
class Permit(PermitBase):
    """A held permit: its fencing token and lease, and the calls to refresh and release it."""

    def __init__(
        self,
        client: Client,
        grant: Grant,
        *,
        ttl_ms: int | None,
        sent_at: float,
        answered_at: float,
        replayed: bool = False,
    ) -> None:
        super().__init__(
            grant, ttl_ms=ttl_ms, sent_at=sent_at, answered_at=answered_at, replayed=replayed
        )
        self._client = client
        self._lost_event = AsyncEvent()
        self._keeper = AsyncKeeper()

    # unasync: sync-only
    # def __enter__(self) -> Self:
    #     """Holds the permit for the block: refreshed meanwhile, released after."""
    #     self._hold()
    #     return self
    #
    # def __exit__(
    #     self,
    #     exc_type: type[BaseException] | None,
    #     exc: BaseException | None,
    #     tb: TracebackType | None,
    # ) -> None:
    #     self._end_block(exc)
    #
    # unasync: end
    # `timeout` is a parameter, although asyncio code would rather wrap the
    # call in asyncio.timeout, so that both clients' `wait_lost` have one
    # signature and result: a thread has no such wrapper.
    async def wait_lost(self, timeout: float | None = None) -> PermitLost | None:  # noqa: ASYNC109
        """The `PermitLost` saying how the lease was lost, once it is.

        None if `timeout` seconds pass first (None, the default: no limit).
        """
        if not await self._lost_event.wait(timeout):
            return None
        return self._lost

    async def refresh(self, ttl: float | None = None) -> None:
        """A new lease of `ttl` seconds from now (default: the current lease length).

        A new `ttl` also becomes the lease the background refresh renews.
        Raises `PermitLost` when the server no longer has the permit.
        """
        ttl_ms = self._refresh_ttl_ms(ttl)
        sent = monotonic()
        response, _ = await self._client._call(
            f"refresh of permit {self.id}", "PATCH", self._path, {"ttl_ms": ttl_ms}
        )
        self._refreshed(response, ttl_ms, sent, monotonic())

    async def release(self) -> None:
        """Hands the units back. Raises `PermitLost` if the lease had already ended.

        Releasing twice is harmless; the second does nothing.
        """
        if self._released:
            return
        await self._keeper.stop()
        if self._lost is not None:
            self._released = True
            raise self._lost
        response, ambiguous = await self._client._call(
            f"release of permit {self.id}", "DELETE", self._path
        )
        self._released_by(response, ambiguous)

    def _signal_lost(self) -> None:
        self._lost_event.set()

    def _hold(self) -> None:
        """The start of a block that holds the permit: refreshed in the background from now."""
        if not self._released and not self._keeper.started:
            self._keeper.start(self._keep_alive, name=f"permitd refresh {self.semaphore} {self.id}")

    async def _keep_alive(self) -> None:
        next_at: float | None = self._schedule.refresh_at
        while next_at is not None:
            if not await self._keeper.sleep_until(next_at):
                return
            sent = monotonic()
            attempt = self._keep_alive_attempt(sent, self._client.timeout)
            if attempt is None:
                return
            ttl_ms, timeout = attempt
            try:
                response = await self._client._send(
                    "PATCH", self._path, json={"ttl_ms": ttl_ms}, within=timeout
                )
            except _TRANSPORT_ERRORS as exc:
                next_at = self._keep_alive_failed(exc, monotonic())
                continue
            if self._keeper.stopped:
                return  # released meanwhile: this answer must not count
            next_at = self._keep_alive_answered(response, ttl_ms, sent, monotonic())

    async def _end_block(self, exc: BaseException | None) -> None:
        """The end of a block that held the permit: released, and a loss reported."""
        await self._client._shielded.run(self._finish)
        self._block_ended(exc)

    async def _finish(self) -> None:
        try:
            await self.release()
        except PermitLost:
            pass  # recorded in self._lost; _end_block raises it
        except PermitdError as exc:
            self._release_failed(exc)
