"""Fan out N calls to a slow API, at most `limit` at a time, through permitd.

The scenario permitd grew out of: start all the calls at once, let each hold a
permit of a shared semaphore while it calls the API, and see how long the lot
takes with a limit of 1 against a limit of 5. The "API" is permitd's own slow
upstream, `GET /demo/upstream?delay_ms=...`, so nothing else needs to run:

    python examples/fanout.py --url http://127.0.0.1:8080

prints a line per handled call, then for each limit a line like
"takes ~0.5687 seconds to handle 5 with 1 bounded limit".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import httpx

import permitd


async def fan_out(
    client: permitd.Client,
    api: httpx.AsyncClient,
    api_url: str,
    requests: int,
    limit: int,
) -> float:
    """Runs `requests` calls under a fresh semaphore of `limit`; returns the seconds taken."""
    sem = client.semaphore(f"fanout-{uuid.uuid4()}", limit=limit)

    async def call(index: int) -> None:
        # Waits as long as the whole run could take, so no call gives up.
        async with sem.acquire(wait=60, ttl=30, holder=f"fanout-{index}"):
            response = await api.get(api_url)
        print(f"Handled api request №{index} with status code {response.status_code}", flush=True)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(call(i) for i in range(1, requests + 1)))
    finally:
        await sem.delete()
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(
        description="Fan out calls to a slow API, at most `limit` at a time, through permitd."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="permitd's base URL")
    parser.add_argument("--requests", type=int, default=5, help="calls to fan out (5)")
    parser.add_argument(
        "--limits", type=int, nargs="+", default=[1, 5], help="semaphore limits to try (1 5)"
    )
    parser.add_argument(
        "--api-url", help="the API to call (default: permitd's /demo/upstream?delay_ms=100)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("PERMITD_TOKEN"),
        help="permitd API token (default: $PERMITD_TOKEN)",
    )
    args = parser.parse_args()
    base = args.url.rstrip("/")
    api_url = args.api_url or f"{base}/demo/upstream?delay_ms=100"
    # The built-in upstream is part of permitd's API, so it wants the token too.
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}

    async with (
        permitd.Client(base, token=args.token) as client,
        httpx.AsyncClient(headers=headers, timeout=30) as api,
    ):
        for limit in args.limits:
            n = args.requests
            seconds = await fan_out(client, api, api_url, n, limit)
            print(f"takes ~{seconds:.4f} seconds to handle {n} with {limit} bounded limit")


if __name__ == "__main__":
    asyncio.run(main())
