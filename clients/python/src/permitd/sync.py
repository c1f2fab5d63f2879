"""The synchronous twin of the asyncio client, for scripts: `SyncClient`,
`SyncSemaphore`, `SyncPermit`.

```python
with permitd.SyncClient("http://127.0.0.1:8080") as client:
    sem = client.semaphore("reports", limit=3)
    with sem.acquire(ttl=30, wait=10) as permit:
        build_report(fencing_token=permit.fencing_token)
```

`sem.acquire(...)` acquires at once and returns the permit; used in `with`,
the lease is refreshed by a background thread for the block and released
when it ends, and a lease lost anyway raises `PermitLost` there (the block is
not interrupted: `permit.lost` and `permit.wait_lost()` tell it). Used
without `with`, the caller refreshes and releases. It makes the same
decisions as the asyncio client (`_protocol`, `_permit`); only the waiting is
done with threads instead of tasks.
"""

from __future__ import annotations

import threading
import time
from time import monotonic
from types import TracebackType
from typing import Any, Self

import httpx

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

_TRANSPORT_ERRORS = (httpx.TransportError,)


class SyncClient:
    """A blocking connection to permitd; the settings mean what they mean for `Client`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        max_wait: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._base = check_settings(url, timeout, max_wait)
        self.timeout = timeout
        self.max_wait = max_wait
        self._auth = auth_headers(token)
        self._owns_http = http is None
        # httpx.Client may be shared by threads: the refresh threads use it too.
        self._http = http if http is not None else httpx.Client(headers={"User-Agent": USER_AGENT})

    @property
    def url(self) -> str:
        return self._base

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def semaphore(self, name: str, *, limit: int | None = None) -> SyncSemaphore:
        """A handle on semaphore `name`; see `Client.semaphore`."""
        return SyncSemaphore(self, name, limit)

    def ready(self) -> bool:
        """The connection check; see `Client.ready`."""
        try:
            response = self._send("GET", "/readyz", within=self.timeout)
        except _TRANSPORT_ERRORS:
            return False
        return read_ready(response)

    def _send(
        self,
        method: str,
        path: str,
        *,
        within: float,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        return self._http.request(
            method,
            self._base + path,
            json=json,
            headers={**self._auth, **(headers or {})},
            timeout=within,
        )

    def _call(
        self, what: str, method: str, path: str, json: dict[str, Any] | None = None
    ) -> tuple[httpx.Response, bool]:
        """See `Client._call`."""
        plan = CallPlan(what, timeout=self.timeout, now=monotonic())
        while True:
            try:
                response = self._send(
                    method, path, json=json, within=plan.http_timeout(monotonic())
                )
            except _TRANSPORT_ERRORS as exc:
                delay = plan.failed(exc, monotonic())
            else:
                result = plan.answered(response, monotonic())
                if isinstance(result, httpx.Response):
                    return result, plan.ambiguous
                delay = result
            time.sleep(delay)


class SyncSemaphore:
    """One semaphore of a `SyncClient`; the methods mean what they mean for `Semaphore`."""

    def __init__(self, client: SyncClient, name: str, limit: int | None) -> None:
        self._client = client
        self.name = name
        self._limit = limit

    @property
    def limit(self) -> int | None:
        return self._limit

    def __repr__(self) -> str:
        return f"<SyncSemaphore {self.name!r} limit={self._limit}>"

    def acquire(
        self,
        *,
        count: int = 1,
        ttl: float | None = None,
        wait: float = 0.0,
        holder: str | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> SyncPermit:
        """Acquires now and returns the permit; see `Semaphore.acquire`."""
        client = self._client
        body = acquire_body(limit=self._limit, count=count, ttl=ttl, wait=wait, holder=holder)
        timeout = acquire_timeout(timeout, client.timeout)
        plan = AcquirePlan(
            semaphore=self.name,
            body=body,
            key=acquire_key(idempotency_key),
            wait=wait,
            timeout=timeout,
            max_wait=client.max_wait,
            now=monotonic(),
        )
        path = semaphore_path(self.name) + "/permits"
        while True:
            sent = monotonic()
            request_body, http_timeout = plan.next_request(sent)
            try:
                response = client._send(
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
                    return SyncPermit(
                        client,
                        result,
                        ttl_ms=body.get("ttl_ms"),
                        sent_at=sent,
                        answered_at=answered,
                        # 200: an earlier request was granted this permit.
                        replayed=response.status_code == 200,
                    )
                delay = result
            time.sleep(delay)

    def status(self) -> SemaphoreStatus:
        response, _ = self._client._call(
            f"status of semaphore {self.name!r}", "GET", semaphore_path(self.name)
        )
        return read_status(response, 200)

    def create(self) -> SemaphoreStatus:
        limit = create_limit(self._limit)
        try:
            current = self.status()
        except NotFound:
            return self.set_limit(limit)
        return check_created(self.name, current, limit)

    def set_limit(self, limit: int) -> SemaphoreStatus:
        response, _ = self._client._call(
            f"set limit of semaphore {self.name!r}",
            "PUT",
            semaphore_path(self.name),
            {"limit": limit},
        )
        status = read_status(response, 200, 201)
        self._limit = limit
        return status

    def delete(self) -> None:
        response, ambiguous = self._client._call(
            f"delete of semaphore {self.name!r}", "DELETE", semaphore_path(self.name)
        )
        read_deleted(response, ambiguous)


class SyncPermit(PermitBase):
    """A held permit; `with` keeps it alive for the block and releases it after."""

    def __init__(
        self,
        client: SyncClient,
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
        self._lost_event = threading.Event()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def __enter__(self) -> Self:
        if self._keeper is None and not self._released:
            # A daemon thread: a script that exits without leaving the block
            # is not kept alive by it (the lease then runs out by itself).
            self._keeper = threading.Thread(
                target=self._keep_alive,
                name=f"permitd refresh {self.semaphore} {self.id}",
                daemon=True,
            )
            self._keeper.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.release()
        except PermitLost:
            pass  # recorded in self._lost, raised below
        except PermitdError as error:
            self._release_failed(error)
        self._block_ended(exc)

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Blocks until the lease is lost (True) or `timeout` seconds pass (False)."""
        return self._lost_event.wait(timeout)

    def refresh(self, ttl: float | None = None) -> None:
        """See `Permit.refresh`."""
        ttl_ms = self._refresh_ttl_ms(ttl)
        sent = monotonic()
        response, _ = self._client._call(
            f"refresh of permit {self.id}", "PATCH", self._path, {"ttl_ms": ttl_ms}
        )
        self._refreshed(response, ttl_ms, sent, monotonic())

    def release(self) -> None:
        """See `Permit.release`."""
        if self._released:
            return
        self._stop_keeping_alive()
        if self._lost is not None:
            self._released = True
            raise self._lost
        response, ambiguous = self._client._call(
            f"release of permit {self.id}", "DELETE", self._path
        )
        self._released_by(response, ambiguous)

    def _signal_lost(self) -> None:
        self._lost_event.set()

    def _stop_keeping_alive(self) -> None:
        self._stop.set()
        keeper, self._keeper = self._keeper, None
        if keeper is not None and keeper is not threading.current_thread():
            # An attempt under way ends within its own timeout; its answer is
            # then dropped, so it cannot race the release that follows.
            keeper.join()

    def _keep_alive(self) -> None:
        next_at: float | None = self._schedule.refresh_at
        while next_at is not None:
            if self._stop.wait(max(0.0, next_at - monotonic())):
                return
            sent = monotonic()
            attempt = self._keep_alive_attempt(sent, self._client.timeout)
            if attempt is None:
                return
            ttl_ms, timeout = attempt
            try:
                response = self._client._send(
                    "PATCH", self._path, json={"ttl_ms": ttl_ms}, within=timeout
                )
            except _TRANSPORT_ERRORS as exc:
                next_at = self._keep_alive_failed(exc, monotonic())
                continue
            if self._stop.is_set():
                return
            next_at = self._keep_alive_answered(response, ttl_ms, sent, monotonic())
