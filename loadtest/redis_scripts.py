"""The baseline the uncontended target is set against: a Python asyncio
redis-py client running permitd's own acquire and release Lua scripts
directly against Redis (what the original Python service did), 16 clients on
a limit of 16, acquire then release at once.

Run: python loadtest/redis_scripts.py redis://127.0.0.1:6379
"""

import asyncio
import json
import os
import pathlib
import sys
import time
import uuid

import redis.asyncio as aioredis

SCRIPTS = (
    pathlib.Path(__file__).resolve().parent.parent
    / "src"
    / "store"
    / "redis"
    / "scripts"
)
CLIENTS = int(os.environ.get("CLIENTS", "16"))
LIMIT = int(os.environ.get("LIMIT", "16"))
DURATION_S = float(os.environ.get("DURATION_S", "10"))
WARMUP_S = float(os.environ.get("WARMUP_S", "1"))


def script(body: str) -> str:
    # Exactly how the Rust store builds each script's EVALSHA text
    # (src/store/redis/scripts.rs): the prelude, then the body as a function
    # that the prelude's `run` calls, its reply wrapped with the count of
    # leases it swept.
    return (
        (SCRIPTS / "prelude.lua").read_text()
        + "\nlocal function body(KEYS, ARGV)\n"
        + (SCRIPTS / body).read_text()
        + "\nend\nreturn run(body, KEYS, ARGV)\n"
    )


async def main(url: str) -> None:
    client = aioredis.from_url(url, max_connections=CLIENTS)
    acquire = client.register_script(script("acquire.lua"))
    release = client.register_script(script("release.lua"))
    name = f"py-{os.getpid()}"
    keys = [
        f"permitd:{{{name}}}:{suffix}"
        for suffix in (
            "meta",
            "expiry",
            "permits",
            "idem",
            "queue",
            "waiters",
            "wleases",
            "left",
            "ended",
        )
    ]
    # What the Rust store appends to every script's ARGV (see prelude.lua):
    # the default idle TTL and the Idempotency-Key retention, both 24 h.
    lifecycle = [86_400_000, 86_400_000]
    start = time.monotonic()
    window = (start + WARMUP_S, start + WARMUP_S + DURATION_S)
    counts = [0] * CLIENTS
    errors = 0

    async def worker(index: int) -> None:
        nonlocal errors
        while time.monotonic() < window[1]:
            ticket = str(uuid.uuid4())
            sent = time.monotonic()
            reply = await acquire(
                keys=keys,
                # ARGV as acquire.lua names them; no deadline, and never
                # queued (so no handoff: the last two).
                args=[
                    LIMIT,
                    1,
                    60000,
                    "",
                    "",
                    "",
                    ticket,
                    "0",
                    3000,
                    "permitd:wake:bench",
                    "",
                    "0",
                    *lifecycle,
                ],
            )
            if reply[1][0] != b"granted":
                errors += 1
                continue
            await release(keys=keys, args=[ticket, *lifecycle])
            if window[0] <= sent < window[1]:
                counts[index] += 1

    await asyncio.gather(*(worker(i) for i in range(CLIENTS)))
    await client.delete(*keys)
    await client.aclose()
    cycles = sum(counts)
    print(
        json.dumps(
            {
                "label": "python-redis-py-scripts",
                "clients": CLIENTS,
                "limit": LIMIT,
                "cycles": cycles,
                "cycles_per_s": round(cycles / DURATION_S),
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379"))
