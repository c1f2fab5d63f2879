#!/usr/bin/env python3
"""The client conformance suite: the same scenarios for every permitd
client, against the real binary, on the memory store and on Redis.

Each client takes part through an adapter (PROTOCOL.md): a program that does
one operation through the client and prints what happened as JSON lines.
This harness starts the servers, runs the adapters, and judges from the
events' times and from the server's own view; no client counts for itself.

    clients/conformance/conformance.py --permitd target/debug/permitd \\
        --client 'rust=target/debug/examples/conformance' \\
        --client 'python-async=.venv/bin/python clients/conformance/adapters/python_client.py async'

It prints one line per scenario and client and store, and exits 1 if any
failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now_ms() -> float:
    return time.time() * 1000


def request(
    port: int, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body); status 0 when the connection failed."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        payload = json.dumps(body) if body is not None else None
        headers = {"content-type": "application/json"} if payload else {}
        conn.request(method, path, payload, headers)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        return response.status, (json.loads(raw) if raw else {})
    except (OSError, ValueError):
        return 0, {}


class Failed(Exception):
    """A scenario's check did not hold."""


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


class Servers:
    """A permitd (and its Redis, for the Redis store) on free ports, which a
    scenario may kill and start again."""

    def __init__(
        self,
        binary: str,
        store: str,
        root: str,
        redis: tuple[int, subprocess.Popen[bytes]] | None = None,
    ) -> None:
        self.binary, self.store, self.root = binary, store, root
        if store == "redis" and redis is None:
            redis = start_redis(root)
        self.redis: subprocess.Popen[bytes] | None = redis[1] if redis else None
        self.redis_port = redis[0] if redis else 0
        self.permitd: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        args = [self.binary, "--listen", f"127.0.0.1:{self.port}"]
        if self.redis:
            args += ["--redis-url", f"redis://127.0.0.1:{self.redis_port}"]
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env["RUST_LOG"] = "warn"
        self.permitd = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        until(lambda: request(self.port, "GET", "/readyz")[0] == 200, "permitd ready")

    def kill(self) -> None:
        if self.permitd:
            self.permitd.kill()
            self.permitd.wait()

    def stop(self) -> None:
        self.kill()
        if self.redis:
            self.redis.kill()
            self.redis.wait()


def start_redis(root: str) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
        + ["--dir", root],
        stdout=subprocess.DEVNULL,
    )
    until(lambda: redis_ping(port), "redis-server up")
    return port, process


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def until(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {within} s")
        time.sleep(0.02)


@dataclass
class Adapter:
    """One running adapter process and the events it printed."""

    process: subprocess.Popen[str]
    started: float
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.process.stdout
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unreadable", "line": line, "t": now_ms()}
            self.events.append(event)

    def first(self, kind: str, within: float = 30.0) -> dict[str, Any]:
        """The first event of `kind`, waiting up to `within` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = [e for e in self.events if e["event"] == kind]
            if found:
                return found[0]
            if self.process.poll() is not None and self.reader:
                self.reader.join()
                found = [e for e in self.events if e["event"] == kind]
                if found:
                    return found[0]
                raise Failed(f"no {kind!r} event; it printed {self.events}")
            time.sleep(0.005)
        raise Failed(f"no {kind!r} event within {within} s; it printed {self.events}")

    def finish(self, within: float = 60.0) -> list[dict[str, Any]]:
        try:
            code = self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise Failed(f"the adapter did not exit within {within} s: {self.events}")
        if self.reader:
            self.reader.join()
        stderr = self.process.stderr.read() if self.process.stderr else ""
        if code != 0:
            raise Failed(f"the adapter exited {code}: {stderr.strip()[-800:]}")
        bad = [e for e in self.events if e["event"] == "unreadable"]
        expect(not bad, f"lines that are not JSON: {bad}")
        return self.events

    def outcome(self) -> dict[str, Any]:
        """The last event: how the operation ended."""
        events = self.finish()
        expect(bool(events), "no event at all")
        return events[-1]


class Client:
    """How to run one client's adapter."""

    def __init__(self, name: str, command: str) -> None:
        self.name = name
        self.command = shlex.split(command)

    def start(self, op: str, url: str, semaphore: str, **options: int) -> Adapter:
        argv = [*self.command, op, "--url", url, "--semaphore", semaphore]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        try:
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as e:
            raise Failed(f"cannot start the adapter {argv[0]}: {e}") from e
        adapter = Adapter(process, now_ms())
        adapter.reader = threading.Thread(target=adapter.read, daemon=True)
        adapter.reader.start()
        return adapter


class Scenarios:
    """The scenarios, each a method taking its semaphore name; each raises
    Failed with what it saw when a check does not hold."""

    def __init__(self, client: Client, servers: Servers | None) -> None:
        self.client = client
        self._servers = servers

    @property
    def servers(self) -> Servers:
        assert self._servers, "a scenario that needs no server"
        return self._servers

    @property
    def port(self) -> int:
        return self.servers.port

    def run(self, op: str, name: str, **options: int) -> Adapter:
        return self.client.start(op, self.servers.url, name, **options)

    def raw_permit(self, name: str, limit: int, ttl_ms: int) -> dict[str, Any]:
        status, body = request(
            self.port,
            "POST",
            f"/semaphores/{name}/permits",
            {"limit": limit, "ttl_ms": ttl_ms},
        )
        expect(status == 201, f"the harness's own acquire answered {status} {body}")
        return body

    def held(self, name: str) -> int:
        status, body = request(self.port, "GET", f"/semaphores/{name}")
        expect(status == 200, f"GET {name} answered {status} {body}")
        return int(body["held"])

    # 1.
    def long_wait_then_a_hold_of_several_leases(self, name: str) -> str:
        blocker = self.raw_permit(name, 1, 10_000)
        adapter = self.run(
            "hold", name, limit=1, ttl_ms=1000, wait_ms=10_000, hold_ms=3500
        )
        time.sleep(2.5)
        freed = now_ms()
        request(self.port, "DELETE", f"/semaphores/{name}/permits/{blocker['id']}")
        acquired = adapter.first("acquired")
        expect(acquired["t"] >= freed, "granted before the unit was free")
        ends = set()
        while adapter.process.poll() is None:
            _, body = request(self.port, "GET", f"/semaphores/{name}")
            ends |= {h["expires_at"] for h in body.get("holders", [])}
            time.sleep(0.1)
        end = adapter.outcome()
        expect(end["event"] == "released", f"the hold ended with {end}")
        held_for = end["t"] - acquired["t"]
        expect(held_for >= 3400, f"held {held_for:.0f} ms of 3500")
        expect(len(ends) >= 4, f"the lease was refreshed {len(ends) - 1} times")
        expect(self.held(name) == 0, "still held after the release")
        return (
            f"waited 2.5 s on a 1 s lease, held {held_for:.0f} ms, {len(ends)} leases"
        )

    # 2.
    def nine_workers_limit_three(self, name: str) -> str:
        workers = [
            self.run("hold", name, limit=3, ttl_ms=1000, wait_ms=30_000, hold_ms=1500)
            for _ in range(9)
        ]
        spans = []
        for worker in workers:
            end = worker.outcome()
            expect(end["event"] == "released", f"a worker ended with {end}")
            spans.append((worker.first("acquired")["t"], end["t"]))
        edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
        peak = holding = 0
        for _, step in edges:
            holding += step
            peak = max(peak, holding)
        wall = max(b for _, b in spans) - min(a for a, _ in spans)
        expect(peak == 3, f"peak holders {peak}, limit 3")
        expect(wall >= 4490, f"9 holds of 1.5 s at 3 at once took {wall:.0f} ms")
        return f"9/9 done, peak 3, {wall / 1000:.2f} s"

    # 3.
    def revoked_mid_hold(self, name: str) -> str:
        adapter = self.run(
            "hold", name, limit=1, ttl_ms=1500, wait_ms=0, hold_ms=20_000
        )
        acquired = adapter.first("acquired")
        time.sleep(0.3)
        revoked = now_ms()
        request(self.port, "DELETE", f"/semaphores/{name}/permits/{acquired['id']}")
        end = adapter.outcome()
        expect(end["event"] == "lost", f"the hold ended with {end}")
        late = end["t"] - revoked
        # One refresh interval (a third of the lease), plus a refresh's trip.
        expect(late <= 500 + 700, f"reported lost {late:.0f} ms after the revocation")
        return f"lost reported {late:.0f} ms after the revocation"

    # 4.
    def permitd_killed_mid_hold(self, name: str) -> str:
        adapter = self.run(
            "hold", name, limit=1, ttl_ms=2000, wait_ms=0, hold_ms=20_000
        )
        adapter.first("acquired")
        time.sleep(0.2)
        killed = now_ms()
        self.servers.kill()
        try:
            end = adapter.outcome()
        finally:
            self.servers.start()
        expect(end["event"] == "lost", f"the hold ended with {end}")
        late = end["t"] - killed
        # The lease ends at most one lease after the kill.
        expect(late <= 2000 + 100, f"reported lost {late:.0f} ms after the kill")
        return f"lost reported {late:.0f} ms after the kill (lease 2000 ms)"

    # 5.
    def cancelled_mid_hold(self, name: str) -> str:
        adapter = self.run(
            "hold", name, limit=1, ttl_ms=30_000, wait_ms=0, hold_ms=30_000
        )
        adapter.first("acquired")
        expect(self.held(name) == 1, "not held while the adapter holds")
        cancelled = now_ms()
        adapter.process.send_signal(signal.SIGINT)
        end = adapter.outcome()
        expect(end["event"] == "cancelled", f"the hold ended with {end}")
        # The lease is 30 s: only the release frees it this soon.
        until(lambda: self.held(name) == 0, "the unit freed after the cancel", 2.0)
        return f"released {now_ms() - cancelled:.0f} ms after Ctrl-C"

    # 6.
    def unreachable(self, name: str) -> str:
        url = f"http://127.0.0.1:{free_port()}"
        adapter = self.client.start(
            "hold", url, name, limit=1, ttl_ms=1000, wait_ms=16_000, hold_ms=0
        )
        end = adapter.outcome()
        took = end["t"] - adapter.started
        expect(end["event"] == "error" and end.get("kind") == "Unavailable", f"{end}")
        # Retried for the whole wait; a retry that cannot start within it is
        # not made, so up to one backoff (2 s) early; a request timeout late.
        expect(took >= 16_000 - 2500, f"gave up after {took:.0f} ms of a 16 s wait")
        expect(took <= 16_000 + 3500, f"answered after {took:.0f} ms")
        return f"Unavailable after {took / 1000:.1f} s of a 16 s wait"

    # 7.
    def full_past_the_wait(self, name: str) -> str:
        blocker = self.raw_permit(name, 1, 10_000)
        adapter = self.run("hold", name, limit=1, ttl_ms=1000, wait_ms=500, hold_ms=0)
        end = adapter.outcome()
        took = end["t"] - adapter.started
        request(self.port, "DELETE", f"/semaphores/{name}/permits/{blocker['id']}")
        expect(end["event"] == "error" and end.get("kind") == "NoCapacity", f"{end}")
        expect(
            isinstance(end.get("retry_after_ms"), (int, float)),
            f"no retry_after: {end}",
        )
        expect(took >= 500, f"answered after {took:.0f} ms of a 500 ms wait")
        return f"NoCapacity after {took:.0f} ms, retry after {end['retry_after_ms']:.0f} ms"

    # 8: the seed's five.
    def connection_check(self, name: str) -> str:
        up = self.run("check", name).outcome()
        expect(up == {**up, "event": "ready", "ready": True}, f"live: {up}")
        dead = self.client.start("check", f"http://127.0.0.1:{free_port()}", name)
        down = dead.outcome()
        expect(down == {**down, "event": "ready", "ready": False}, f"dead: {down}")
        return "ready true, and false with nothing listening"

    def acquire_and_release(self, name: str) -> str:
        adapter = self.run("hold", name, limit=2, wait_ms=0, hold_ms=100)
        acquired = adapter.first("acquired")
        expect(int(acquired["token"]) > 0, f"fencing token {acquired}")
        end = adapter.outcome()
        expect(end["event"] == "released", f"{end}")
        expect(self.held(name) == 0, "still held after the release")
        return f"token {acquired['token']}"

    def create_existing(self, name: str) -> str:
        status, _ = request(self.port, "PUT", f"/semaphores/{name}", {"limit": 2})
        expect(status in (200, 201), f"PUT answered {status}")
        same = self.run("create", name, limit=2).outcome()
        expect(same["event"] == "created", f"same limit: {same}")
        other = self.run("create", name, limit=3).outcome()
        expect(other.get("kind") == "LimitConflict", f"another limit: {other}")
        expect(
            request(self.port, "GET", f"/semaphores/{name}")[1]["limit"] == 2, "changed"
        )
        return "same limit shared, another refused"

    def store_down(self, name: str) -> str:
        if self.servers.store != "redis":
            return "skipped: the memory store cannot be down"
        port, redis = start_redis(self.servers.root)
        server = Servers(self.servers.binary, "redis", "", (port, redis))
        try:
            redis.kill()
            redis.wait()
            adapter = self.client.start(
                "hold", server.url, name, limit=1, ttl_ms=1000, wait_ms=1000, hold_ms=0
            )
            end = adapter.outcome()
            took = end["t"] - adapter.started
        finally:
            server.kill()
        expect(end["event"] == "error" and end.get("kind") == "Unavailable", f"{end}")
        expect(took <= 1000 + 2000 + 1500, f"answered after {took:.0f} ms")
        return f"Unavailable after {took:.0f} ms"


SCENARIOS = [
    "long_wait_then_a_hold_of_several_leases",
    "nine_workers_limit_three",
    "revoked_mid_hold",
    "permitd_killed_mid_hold",
    "cancelled_mid_hold",
    "full_past_the_wait",
    "connection_check",
    "acquire_and_release",
    "create_existing",
    "store_down",
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--permitd", required=True)
    parser.add_argument(
        "--client", action="append", required=True, help="NAME=ADAPTER COMMAND"
    )
    parser.add_argument("--stores", default="memory,redis")
    parser.add_argument("--only", help="run only the scenarios with this in the name")
    args = parser.parse_args()
    # Started in the background by a script, this process has SIGINT ignored,
    # and its adapters would inherit that: a Python adapter then never sees
    # the Ctrl-C the cancel scenario sends. A handled SIGINT is reset to the
    # default in every child, as in a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    clients = [Client(*spec.split("=", 1)) for spec in args.client]
    chosen = [s for s in SCENARIOS if not args.only or args.only in s]
    root = tempfile.mkdtemp(prefix="permitd-conformance-")
    results: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def report(label: str, work: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            line, ok = work(), True
        except Failed as e:
            line, ok = f"FAILED: {e}", False
        with lock:
            print(f"{label}: {line} ({time.monotonic() - started:.1f} s)", flush=True)
            results.append((label, ok))

    # The unreachable scenario needs no server and takes the wait: one per
    # client, all at once, beside the rest.
    background = []
    if not args.only or args.only in "unreachable":
        for client in clients:
            scenarios = Scenarios(client, None)
            label = f"{client.name} unreachable"
            thread = threading.Thread(
                target=report, args=(label, lambda s=scenarios: s.unreachable("u"))
            )
            thread.start()
            background.append(thread)
    for store in args.stores.split(","):
        for client in clients:
            servers = Servers(args.permitd, store, root)
            try:
                scenarios = Scenarios(client, servers)
                for n, scenario in enumerate(chosen):
                    step: Callable[[str], str] = getattr(scenarios, scenario)
                    name = f"{client.name}-{store}-{n}"
                    report(f"{client.name} {store} {scenario}", partial(step, name))
            finally:
                servers.stop()
    for thread in background:
        thread.join()
    failed = [label for label, ok in results if not ok]
    print(
        f"conformance: {len(results) - len(failed)} passed, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
