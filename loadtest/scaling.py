"""How permitd's cost grows, on one semaphore in one run: the scaling table of
scripts/bench.

Usage: scaling.py PERMITD_BINARY [--cluster-url URL --cluster-port P ...]
                  [--out SCALING.jsonl]

Starts its own redis-server and permitd on it (on free ports, descriptors
raised to the hard limit, since the run holds 10,000 connections), then
measures, each on a fresh semaphore:
- Redis µs per try-once acquire + release cycle with 10, 1,000 and 100,000
  live permits held (script time from INFO commandstats, per cycle);
- the contended cycle with 1,000 waiters queued: each waiter releases as
  soon as it is granted and queues again, so the queue stays 1,000 deep;
  Redis µs per cycle (a release that hands the unit over, and the
  re-queue);
- the time to the first grant, and to the last, after a limit raise that
  frees 10,000 units with 10,000 waiters queued, and how long each script of
  it ran (SLOWLOG): the raise serves the waiters in batches;
- one GET /semaphores page (100 names) with 100,000 semaphores in Redis:
  its time, first page and a page deep in the listing;
- with --cluster-url, the 10-permit cycle on a cluster against standalone
  (script time summed over the cluster's nodes).
Every script slower than 1 ms during the run is kept in SLOWLOG (read and
reset per row), so the table says how long the slowest one ran.

Prints a table and writes one JSON line per row with --out.
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

SCRIPT_CALLS = ("fcall", "fcall_ro", "evalsha", "evalsha_ro", "eval", "eval_ro")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def script_usec(ports: list[int]) -> tuple[float, float]:
    """Script calls and their µs, summed over the nodes."""
    calls = usec = 0.0
    for port in ports:
        for line in redis_cli(port, "info", "commandstats").splitlines():
            name, _, fields = line.removeprefix("cmdstat_").partition(":")
            if line.startswith("cmdstat_") and name in SCRIPT_CALLS:
                values = dict(f.split("=") for f in fields.split(","))
                calls += float(values["calls"])
                usec += float(values["usec"])
    return calls, usec


def resp(port: int, *args: str) -> Any:
    """One Redis command over RESP2, its reply parsed (nested lists)."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        command = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        conn.sendall(command.encode())
        stream = conn.makefile("rb")

        def read() -> Any:
            line = stream.readline()[:-2]
            kind, rest = line[:1], line[1:]
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            if kind == b"$":
                n = int(rest)
                return (
                    None if n < 0 else stream.read(n + 2)[:-2].decode(errors="replace")
                )
            if kind == b":":
                return int(rest)
            if kind == b"-":
                raise RuntimeError(rest.decode())
            return rest.decode()

        return read()


SLOWEST: dict[str, float] = {}


def slowest_script_ms(ports: list[int]) -> tuple[float, int]:
    """The slowest script in SLOWLOG (ms) and how many ran over 10 ms; resets it.
    The slowest of each script (its function's name) goes into SLOWEST."""
    slowest, over = 0.0, 0
    SLOWEST.clear()
    for port in ports:
        for entry in resp(port, "SLOWLOG", "GET", "100000"):
            # id, timestamp, duration µs, [command, args...], client, name
            us, command = entry[2], entry[3]
            if command and command[0].lower() in SCRIPT_CALLS:
                slowest = max(slowest, us / 1000)
                over += us > 10_000
                script = command[1].rsplit("_", 1)[-1]
                SLOWEST[script] = max(SLOWEST.get(script, 0.0), us / 1000)
        resp(port, "SLOWLOG", "RESET")
    return slowest, over


class Http:
    """One keep-alive HTTP/1.1 connection, just enough for permitd's JSON."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: Any = None
    ) -> tuple[int, dict[str, str], Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port
            )
        assert self.reader is not None
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data)}\r\n"
        if body is not None:
            head += "content-type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + data)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        raw = await self.reader.readexactly(length) if length else b""
        parsed = json.loads(raw) if raw and raw[:1] in b"{[" else None
        return status, headers, parsed

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def fan(
    port: int, jobs: list[tuple[str, str, Any]], width: int = 32
) -> list[Any]:
    """Runs requests over `width` connections; returns the bodies in order."""
    results: list[Any] = [None] * len(jobs)
    next_job = 0

    async def worker() -> None:
        nonlocal next_job
        http = Http(port)
        while next_job < len(jobs):
            i = next_job
            next_job += 1
            method, path, body = jobs[i]
            status, _, answer = await http.request(method, path, body)
            if status >= 300:
                raise RuntimeError(f"{method} {path}: {status} {answer}")
            results[i] = answer
        http.close()

    await asyncio.gather(*(worker() for _ in range(width)))
    return results


async def cycle_cost(
    port: int, ports: list[int], name: str, cycles: int = 2000
) -> float:
    """Redis script µs per try-once acquire + release cycle on `name`."""
    http = Http(port)
    for _ in range(100):  # warm-up
        _, _, permit = await http.request("POST", f"/semaphores/{name}/permits", {})
        await http.request("DELETE", f"/semaphores/{name}/permits/{permit['id']}")
    calls0, usec0 = script_usec(ports)
    for _ in range(cycles):
        status, _, permit = await http.request(
            "POST", f"/semaphores/{name}/permits", {}
        )
        assert status == 201, (status, permit)
        await http.request("DELETE", f"/semaphores/{name}/permits/{permit['id']}")
    calls1, usec1 = script_usec(ports)
    http.close()
    assert calls1 - calls0 >= 2 * cycles
    return (usec1 - usec0) / cycles


async def held_rows(port: int, ports: list[int]) -> list[dict[str, Any]]:
    rows = []
    base: float | None = None
    for held in (10, 1_000, 100_000):
        name = f"held-{held}"
        http = Http(port)
        await http.request("PUT", f"/semaphores/{name}", {"limit": held + 1_000})
        http.close()
        started = time.monotonic()
        await fan(
            port,
            [("POST", f"/semaphores/{name}/permits", {"ttl_ms": 3_600_000})] * held,
        )
        filled_s = time.monotonic() - started
        slowest_script_ms(ports)
        us = await cycle_cost(port, ports, name)
        slowest, over = slowest_script_ms(ports)
        base = base or us
        rows.append(
            {
                "row": f"try-once cycle, {held:,} permits held",
                "redis_us_per_cycle": round(us, 1),
                "vs_10_held": round(us / base, 2),
                "slowest_script_ms": round(slowest, 2),
                "scripts_over_10ms": over,
                "filled_in_s": round(filled_s, 1),
            }
        )
    return rows


async def queued_row(port: int, ports: list[int]) -> dict[str, Any]:
    """The contended cycle with 1,000 waiters queued (see the module docs)."""
    name, waiters, limit = "queued-1000", 1_000, 10
    http = Http(port)
    await http.request("PUT", f"/semaphores/{name}", {"limit": limit})
    http.close()
    stop = False
    grants = 0

    async def waiter() -> None:
        nonlocal grants
        conn = Http(port)
        while not stop:
            status, _, permit = await conn.request(
                "POST", f"/semaphores/{name}/permits", {"wait_ms": 60_000}
            )
            if status != 201:
                raise RuntimeError(f"waiter answered {status} {permit}")
            grants += 1
            await conn.request("DELETE", f"/semaphores/{name}/permits/{permit['id']}")
        conn.close()

    tasks = [asyncio.create_task(waiter()) for _ in range(waiters)]
    await asyncio.sleep(3)  # all queued, cycling
    slowest_script_ms(ports)
    grants0, (calls0, usec0) = grants, script_usec(ports)
    await asyncio.sleep(5)
    grants1, (calls1, usec1) = grants, script_usec(ports)
    slowest, over = slowest_script_ms(ports)
    stop = True
    await asyncio.gather(*tasks)
    cycles = grants1 - grants0
    return {
        "row": f"contended cycle, {waiters:,} waiters queued (limit {limit})",
        "redis_us_per_cycle": round((usec1 - usec0) / cycles, 1),
        "script_calls_per_cycle": round((calls1 - calls0) / cycles, 2),
        "cycles_per_s": round(cycles / 5),
        "slowest_script_ms": round(slowest, 2),
        "scripts_over_10ms": over,
    }


async def raise_row(port: int, ports: list[int]) -> dict[str, Any]:
    """A raise that frees 10,000 units with 10,000 waiters queued."""
    name, waiters = "raise-10000", 10_000
    http = Http(port)
    await http.request("PUT", f"/semaphores/{name}", {"limit": 1})
    await http.request("POST", f"/semaphores/{name}/permits", {"ttl_ms": 3_600_000})
    granted_at: list[float] = []

    async def waiter() -> None:
        conn = Http(port)
        status, _, permit = await conn.request(
            "POST",
            f"/semaphores/{name}/permits",
            {"wait_ms": 120_000, "ttl_ms": 600_000},
        )
        if status != 201:
            raise RuntimeError(f"waiter answered {status} {permit}")
        granted_at.append(time.monotonic())
        conn.close()

    tasks = []
    for _ in range(waiters // 500):
        tasks += [asyncio.create_task(waiter()) for _ in range(500)]
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 60
    while True:
        _, _, status = await http.request("GET", f"/semaphores/{name}")
        if status["waiting"] == waiters:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {status['waiting']} of {waiters} queued")
        await asyncio.sleep(0.2)
    slowest_script_ms(ports)
    raised = time.monotonic()
    await http.request("PUT", f"/semaphores/{name}", {"limit": waiters + 1})
    await asyncio.gather(*tasks)
    slowest, over = slowest_script_ms(ports)
    http.close()
    granted_at.sort()
    return {
        "row": f"limit raise freeing {waiters:,} units, {waiters:,} waiters queued",
        "first_grant_ms": round((granted_at[0] - raised) * 1000, 1),
        "last_grant_ms": round((granted_at[-1] - raised) * 1000, 1),
        "slowest_script_ms": round(slowest, 2),
        "scripts_over_10ms": over,
        "slowest_by_script_ms": {k: round(v, 2) for k, v in SLOWEST.items()},
    }


async def list_row(port: int, ports: list[int]) -> dict[str, Any]:
    """GET /semaphores pages with 100,000 semaphores in Redis."""
    total = 100_000
    started = time.monotonic()
    await fan(
        port, [("PUT", f"/semaphores/list-{i:06d}", {"limit": 1}) for i in range(total)]
    )
    filled_s = time.monotonic() - started
    http = Http(port)
    slowest_script_ms(ports)
    times: list[float] = []
    deep_times: list[float] = []
    cursor, pages = None, 0
    while pages < 300:
        path = "/semaphores?limit=100" + (f"&cursor={cursor}" if cursor else "")
        t = time.monotonic()
        status, _, page = await http.request("GET", path)
        elapsed = (time.monotonic() - t) * 1000
        assert status == 200, (status, page)
        (times if pages < 20 else deep_times).append(elapsed)
        cursor = page.get("next_cursor")
        pages += 1
        if not cursor:
            break
    slowest, over = slowest_script_ms(ports)
    http.close()
    return {
        "row": f"GET /semaphores, 100 per page, {total:,} semaphores",
        "page_p50_ms": round(statistics.median(times), 2),
        "page_max_ms": round(max(times + deep_times), 2),
        "pages_read": pages,
        "slowest_script_ms": round(slowest, 2),
        "scripts_over_10ms": over,
        "filled_in_s": round(filled_s, 1),
    }


async def cluster_row(
    standalone_port: int, redis_port: int, cluster_url: str, cluster_ports: list[int]
) -> dict[str, Any]:
    port = int(cluster_url.rsplit(":", 1)[1].strip("/"))
    for p, ports in ((standalone_port, [redis_port]), (port, cluster_ports)):
        http = Http(p)
        await http.request("PUT", "/semaphores/cycle-10", {"limit": 1_000})
        http.close()
        await fan(
            p, [("POST", "/semaphores/cycle-10/permits", {"ttl_ms": 3_600_000})] * 10
        )
    standalone = await cycle_cost(standalone_port, [redis_port], "cycle-10")
    cluster = await cycle_cost(port, cluster_ports, "cycle-10")
    return {
        "row": "try-once cycle, 10 permits held: 3+3 cluster / standalone",
        "redis_us_per_cycle": f"{cluster:.1f} / {standalone:.1f}",
        "ratio": round(cluster / standalone, 2),
    }


def start(binary: str, work: str) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    redis_port, http_port = free_port(), free_port()
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            work,
            "--slowlog-log-slower-than",
            "1000",
            "--slowlog-max-len",
            "100000",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            redis_cli(redis_port, "ping")
            break
        except subprocess.CalledProcessError:
            time.sleep(0.05)
    permitd = subprocess.Popen(
        [
            binary,
            "--listen",
            f"127.0.0.1:{http_port}",
            "--redis-url",
            f"redis://127.0.0.1:{redis_port}",
            "--max-wait-ms",
            "300000",
        ],
        env={**os.environ, "RUST_LOG": "warn"},
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", http_port), timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    return [permitd, redis], redis_port, http_port


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as work:
        processes, redis_port, http_port = start(args.permitd, work)
        try:
            ports = [redis_port]
            for port in args.cluster_port or []:
                resp(port, "CONFIG", "SET", "slowlog-log-slower-than", "1000")
            rows = []
            if args.only in (None, "held"):
                rows += await held_rows(http_port, ports)
            if args.only in (None, "queued"):
                rows.append(await queued_row(http_port, ports))
            if args.only in (None, "raise"):
                rows.append(await raise_row(http_port, ports))
            if args.only in (None, "list"):
                rows.append(await list_row(http_port, ports))
            if args.cluster_url and args.only is None:
                rows.append(
                    await cluster_row(
                        http_port, redis_port, args.cluster_url, args.cluster_port
                    )
                )
            return rows
        finally:
            for process in processes:
                process.terminate()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("permitd")
    parser.add_argument("--cluster-url")
    parser.add_argument("--cluster-port", type=int, action="append")
    parser.add_argument("--out")
    parser.add_argument("--only", choices=["held", "queued", "raise", "list"])
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = asyncio.run(run(args))
    keys = [k for row in rows for k in row if k != "row"]
    cols = list(dict.fromkeys(keys))
    print(
        "\nScaling (one semaphore per row; Redis µs are script time, INFO commandstats)"
    )
    print("\n| | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for row in rows:
        print(
            f"| {row['row']} | " + " | ".join(str(row.get(c, "-")) for c in cols) + " |"
        )
    if args.out:
        with open(args.out, "w") as file:
            for row in rows:
                file.write(json.dumps({"label": "scaling", **row}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
