#!/usr/bin/env python3
"""A history-checking fault run of permitd, in the spirit of Jepsen's lock
tests: real redis-servers and permitd instances, clients that acquire, hold,
refresh, release and abandon permits, faults injected while they do, every
request recorded with its send and answer times, and the history checked.

It starts (all on 127.0.0.1, free ports, a temporary directory):
- standalone: one Redis; sentinel: a master, a replica and three sentinels;
  cluster: 3 masters + 3 replicas;
- K permitd instances on it (`--permitd`, the binary to run).

Faults, chosen by the seed, one every few seconds:
- every mode: `kill -9` of a permitd instance (started again a second later);
- standalone: `CLIENT KILL TYPE normal`, `DEBUG SLEEP`, a restart of Redis
  from a snapshot taken a moment earlier (a rollback), a deleted `meta` key;
- sentinel: `SENTINEL FAILOVER`; cluster: `CLUSTER FAILOVER`.

Checks on the history:
- at most `limit` holders of a semaphore at every instant, a holder counted
  from the answer that granted its permit to the request that released it
  or its lease end; more only inside a lost-write window (a rollback), and
  then reported with its size;
- fencing tokens unique per semaphore, and increasing in grant order
  (`acquired_at`) outside lost-write windows;
- no 5xx but 503, each with Retry-After, and a 503 or a refused connection
  only inside a fault window;
- no request longer than its bound (its wait plus twice the Redis timeout);
- at the end every lease has ended and nothing is held, and every permitd
  instance is alive.

It prints a summary and exits 1 on a violation. Example, a long run:
    loadtest/faultcheck.py --permitd target/release/permitd --mode cluster \\
        --seconds 600 --seed 7
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REDIS_TIMEOUT_MS = 1000
LIMIT = 2
# How long after a fault ends answers may still show it (a failover's last
# 503s, a restarted instance's first refusals, waiters retrying).
SETTLE_S = 3.0


def free_port(below: int = 55000) -> int:
    """A free port whose +10000 (a cluster node's bus) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= below:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def redis_cli(port: int, *args: str, timeout: float = 5.0) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return out.stdout.strip()


def wait_until(what: str, check: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Redis:
    """One redis-server in a directory of its own."""

    def __init__(
        self, root: str, extra: list[str] | None = None, sentinel: bool = False
    ):
        self.port = free_port()
        self.dir = os.path.join(root, f"redis-{self.port}")
        os.makedirs(self.dir)
        self.extra = extra or []
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = ["redis-server"]
        if self.sentinel:
            conf = os.path.join(self.dir, "sentinel.conf")
            if not os.path.exists(conf):
                with open(conf, "w") as f:
                    f.write("\n".join(self.extra) + "\n")
            args = ["redis-server", conf, "--sentinel"]
        args += [
            "--port",
            str(self.port),
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "no",
            # Kept with a failed run: what Redis and Sentinel did meanwhile.
            "--logfile",
            os.path.join(self.dir, "redis.log"),
        ]
        if not self.sentinel:
            args += self.extra
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(
            f"redis :{self.port}", lambda: redis_cli(self.port, "PING") == "PONG", 10
        )

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def info(self, field_name: str) -> str:
        for line in redis_cli(self.port, "INFO", "replication").splitlines():
            if line.startswith(field_name + ":"):
                return line.split(":", 1)[1].strip()
        return ""


class Permitd:
    def __init__(self, binary: str, args: list[str], log: str):
        self.binary, self.args, self.log = binary, args, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS")}
        # Warnings and the store's own steps (handovers, slot refreshes), with
        # the access log left out: what a violation is read against.
        env["RUST_LOG"] = "warn,permitd=info,permitd::access=warn"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--listen", f"127.0.0.1:{self.port}", *self.args],
                stdout=log,
                stderr=log,
                env=env,
            )
        wait_until(
            f"permitd :{self.port}",
            lambda: request(self.port, "GET", "/readyz")[0] == 200,
        )

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def request(
    port: int, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers); status 0 when the connection failed."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        payload = json.dumps(body) if body is not None else None
        headers = {"content-type": "application/json"} if payload else {}
        conn.request(method, path, payload, headers)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        return response.status, parsed, {k.lower(): v for k, v in response.getheaders()}
    except OSError:
        return 0, {}, {}


def epoch_ms(rfc3339: str) -> float:
    """`2026-12-07T05:44:50.919Z` as ms since the epoch."""
    from datetime import datetime

    return datetime.fromisoformat(rfc3339).timestamp() * 1000


@dataclass
class Event:
    client: int
    kind: str
    name: str
    instance: int
    sent: float  # wall ms
    answered: float
    status: int
    retry_after: bool
    bound_ms: float
    permit: dict[str, Any] = field(default_factory=dict)
    # The permit a refresh or release was for, or the one granted.
    permit_id: str = ""
    # A problem's detail: what an error answer said went wrong.
    detail: str = ""


@dataclass
class Fault:
    kind: str
    start: float  # wall ms
    end: float
    lost_writes: bool = False
    instance: int | None = None


def now_ms() -> float:
    return time.time() * 1000


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.root = tempfile.mkdtemp(prefix="permitd-faultcheck-")
        self.events: list[Event] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.redis: list[Redis] = []
        self.sentinels: list[Redis] = []
        self.watchers: list[subprocess.Popen[str]] = []
        self.instances: list[Permitd] = []
        self.names = [f"fc-{i}" for i in range(6 if args.mode == "cluster" else 3)]
        self.began = now_ms()
        self.excess: dict[str, int] = {}
        self.failed = False
        # Set by the Sentinel watch when a failover ends (see inject).
        self.failover_over = threading.Event()
        self.failover_aborted = False

    # --- set-up -------------------------------------------------------

    def start_store(self) -> list[str]:
        mode = self.args.mode
        if mode == "standalone":
            self.redis = [Redis(self.root)]
            return ["--redis-url", f"redis://127.0.0.1:{self.redis[0].port}"]
        if mode == "sentinel":
            master = Redis(self.root)
            replica = Redis(self.root, ["--replicaof", "127.0.0.1", str(master.port)])
            self.redis = [master, replica]
            wait_until(
                "replica sync", lambda: replica.info("master_link_status") == "up"
            )
            lines = [
                f"sentinel monitor fc 127.0.0.1 {master.port} 2",
                "sentinel down-after-milliseconds fc 1000",
                "sentinel failover-timeout fc 5000",
            ]
            self.sentinels = [Redis(self.root, lines, sentinel=True) for _ in range(3)]
            wait_until(
                "sentinels see the replica",
                lambda: all(
                    "num-slaves"
                    in (out := redis_cli(s.port, "SENTINEL", "MASTER", "fc"))
                    and out.split("num-slaves")[1].split()[0] == "1"
                    and out.split("num-other-sentinels")[1].split()[0] == "2"
                    for s in self.sentinels
                ),
            )
            urls = ",".join(f"redis://127.0.0.1:{s.port}" for s in self.sentinels)
            return ["--redis-sentinels", urls, "--redis-sentinel-master", "fc"]
        nodes = [
            Redis(
                self.root,
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for _ in range(6)
        ]
        self.redis = nodes
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
            timeout=30,
        )
        wait_until(
            "cluster ok",
            lambda: all(
                "cluster_state:ok" in redis_cli(n.port, "CLUSTER", "INFO")
                for n in nodes
            ),
        )
        return [
            "--redis-cluster",
            ",".join(f"redis://127.0.0.1:{n.port}" for n in nodes),
        ]

    def start(self) -> None:
        store_args = self.start_store()
        args = [
            *store_args,
            "--redis-timeout-ms",
            str(REDIS_TIMEOUT_MS),
            "--wait-recheck-ms",
            "500",
        ]
        self.instances = [
            Permitd(
                self.args.permitd, args, os.path.join(self.root, f"permitd-{i}.log")
            )
            for i in range(self.args.instances)
        ]
        for name in self.names:
            status, _, _ = request(
                self.instances[0].port, "PUT", f"/semaphores/{name}", {"limit": LIMIT}
            )
            if status not in (200, 201):
                raise RuntimeError(f"PUT {name}: {status}")

    # --- clients ------------------------------------------------------

    def record(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def call(
        self,
        client: int,
        instance: int,
        kind: str,
        name: str,
        method: str,
        path: str,
        body: Any,
        bound_ms: float,
        permit_id: str = "",
    ) -> tuple[int, dict[str, Any]]:
        sent = now_ms()
        status, parsed, headers = request(
            self.instances[instance].port,
            method,
            path,
            body,
            timeout=bound_ms / 1000 + 5,
        )
        permit = parsed if status in (200, 201) and "id" in parsed else {}
        self.record(
            Event(
                client,
                kind,
                name,
                instance,
                sent,
                now_ms(),
                status,
                "retry-after" in headers,
                bound_ms,
                permit,
                permit_id or permit.get("id", ""),
                str(parsed.get("detail", "")) if status >= 400 else "",
            )
        )
        return status, parsed

    def client(self, client: int) -> None:
        rng = random.Random(self.args.seed * 1000 + client)
        while not self.stop.is_set():
            instance = rng.randrange(len(self.instances))
            name = rng.choice(self.names)
            wait_ms = rng.choice([0, 0, 1000, 2000])
            ttl_ms = rng.choice([1000, 2000, 3000])
            bound = wait_ms + 2 * REDIS_TIMEOUT_MS + 1000
            status, permit = self.call(
                client,
                instance,
                "acquire",
                name,
                "POST",
                f"/semaphores/{name}/permits",
                {"limit": LIMIT, "ttl_ms": ttl_ms, "wait_ms": wait_ms},
                bound,
            )
            if status != 201:
                time.sleep(rng.uniform(0.01, 0.05))
                continue
            path = f"/semaphores/{name}/permits/{permit['id']}"
            time.sleep(rng.uniform(0.02, 0.3))
            if rng.random() < 0.3:
                self.call(
                    client,
                    instance,
                    "refresh",
                    name,
                    "PATCH",
                    path,
                    {"ttl_ms": ttl_ms},
                    2 * REDIS_TIMEOUT_MS + 1000,
                    permit["id"],
                )
                time.sleep(rng.uniform(0.02, 0.2))
            if rng.random() < 0.1:
                # Abandoned: the holder crashed; the lease ends by itself.
                self.record(
                    Event(
                        client,
                        "abandon",
                        name,
                        instance,
                        now_ms(),
                        now_ms(),
                        0,
                        False,
                        0,
                        permit,
                    )
                )
                continue
            self.call(
                client,
                instance,
                "release",
                name,
                "DELETE",
                path,
                None,
                2 * REDIS_TIMEOUT_MS + 1000,
                permit["id"],
            )

    # --- faults -------------------------------------------------------

    def fault_kinds(self) -> list[str]:
        kinds = ["kill-permitd"]
        if self.args.mode == "standalone":
            kinds += ["client-kill", "debug-sleep", "rollback", "delete-meta"]
        elif self.args.mode == "sentinel":
            kinds += ["sentinel-failover", "sentinel-failover", "kill-master"]
            kinds += ["kill-replica"]
        else:
            kinds += ["cluster-failover", "cluster-failover", "kill-master"]
            kinds += ["kill-replica"]
        return kinds

    def inject(self, kind: str) -> Fault:
        start = now_ms()
        fault = Fault(kind, start, start)
        if kind == "kill-permitd":
            victim = self.rng.randrange(len(self.instances))
            fault.instance = victim
            self.instances[victim].kill()
            time.sleep(1.0)
            self.instances[victim].start()
        elif kind == "client-kill":
            redis_cli(self.redis[0].port, "CLIENT", "KILL", "TYPE", "normal")
        elif kind == "debug-sleep":
            redis_cli(self.redis[0].port, "DEBUG", "SLEEP", "0.5")
        elif kind == "delete-meta":
            name = self.rng.choice(self.names)
            for key in redis_cli(
                self.redis[0].port, "KEYS", f"*{{{name}}}:meta"
            ).split():
                redis_cli(self.redis[0].port, "DEL", key)
        elif kind == "rollback":
            # A snapshot now, more grants, then a crash and a restart from it:
            # the grants since are forgotten while their holders work on.
            fault.lost_writes = True
            redis = self.redis[0]
            redis_cli(redis.port, "SAVE")
            time.sleep(0.5)
            redis.kill()
            redis.extra = ["--dbfilename", "dump.rdb"]
            redis.start()
        elif kind == "sentinel-failover":
            # As an operator would: only once the last failover is over, its
            # old master demoted and following the new one, in sync. Earlier,
            # Sentinel may promote that old master while it still runs as a
            # master of its own, and every write since the last failover is
            # lost (seen here: permits granted before the command came back
            # 404).
            if self.replica_in_sync():
                # The fault lasts until the failover is over, switched or
                # given up (a sentinel that lost its link to the replica
                # gives up after the failover timeout, 5 s here: calls answer
                # 503 meanwhile, as writes to the old master could be lost).
                self.failover_over.clear()
                self.failover_aborted = False
                redis_cli(self.sentinels[0].port, "SENTINEL", "FAILOVER", "fc")
                if not self.failover_over.wait(10.0):
                    fault.kind += " (not over within 10 s)"
                elif self.failover_aborted:
                    fault.kind += " (given up by Sentinel)"
                time.sleep(0.5)
            else:
                fault.kind = "sentinel-failover skipped (replica not in sync)"
        elif kind == "cluster-failover":
            replicas = [
                n
                for n in self.redis
                if n.proc and redis_cli(n.port, "ROLE").splitlines()[:1] == ["slave"]
            ]
            if replicas:
                redis_cli(self.rng.choice(replicas).port, "CLUSTER", "FAILOVER")
            time.sleep(1.0)
        elif kind in ("kill-master", "kill-replica"):
            self.kill_data_node(fault, master=kind == "kill-master")
        fault.end = now_ms()
        return fault

    def role(self, node: Redis) -> str:
        """`master`, `slave`, or "" for a node that is down."""
        lines = redis_cli(node.port, "ROLE").splitlines() if node.proc else []
        return lines[0] if lines else ""

    def kill_data_node(self, fault: Fault, master: bool) -> None:
        """kill -9 of a Redis master or replica, started again as an
        operator's supervisor would: a replica after a second; a master (no
        persistence here) only once its replica has taken over, so that it
        comes back as a replica and resyncs, instead of as an empty master.
        A master's writes its replica never got are lost: a lost-write
        window."""
        if self.args.mode == "sentinel" and not self.replica_in_sync():
            fault.kind += " skipped (replica not in sync)"
            return
        role = "master" if master else "slave"
        nodes = [n for n in self.redis if self.role(n) == role]
        if not nodes:
            fault.kind += " skipped (none up)"
            return
        victim = self.rng.choice(nodes)
        fault.lost_writes = master
        follows = [n for n in self.redis if n is not victim and n.proc]
        if master and self.args.mode == "cluster":
            follows = [
                n
                for n in follows
                if redis_cli(n.port, "INFO", "replication").count(
                    f"master_port:{victim.port}"
                )
            ]
        if master and not follows:
            fault.kind += " skipped (no replica follows it)"
            return
        victim.kill()
        if master:
            # Promoted within the node timeout (cluster) or down-after plus
            # the failover (Sentinel): a few seconds.
            try:
                wait_until(
                    "a replica promoted",
                    lambda: any(self.role(n) == "master" for n in follows),
                    30,
                )
            except RuntimeError:
                # Reported by its kind; the node comes back as the master.
                fault.kind += " (no replica promoted within 30 s)"
        else:
            time.sleep(1.0)
        current = next((n for n in self.redis if self.role(n) == "master"), None)
        if self.args.mode == "sentinel" and current:
            victim.extra = ["--replicaof", "127.0.0.1", str(current.port)]
        # A cluster node rejoins from its nodes.conf, as a replica.
        victim.start()

    def replica_in_sync(self) -> bool:
        """Whether the data node that is not the master follows it, link up,
        with every write the master had."""
        masters = [r for r in self.redis if r.info("role") == "master"]
        replicas = [r for r in self.redis if r.info("role") == "slave"]
        if len(masters) != 1 or len(replicas) != 1:
            return False
        replica = replicas[0]
        if replica.info("master_link_status") != "up":
            return False
        if replica.info("master_port") != str(masters[0].port):
            return False
        wanted = int(masters[0].info("master_repl_offset") or 0)
        return int(replica.info("slave_repl_offset") or -1) >= wanted

    def watch_sentinel(self) -> None:
        """Records the failovers Sentinel starts on its own (a master that
        stopped answering its pings for down-after-milliseconds: on 2 busy
        cores, a stall), each a fault window from the master's +sdown to the
        +switch-master or -sdown that ends it. Their writes the replica never
        got are lost, as with a kill -9 of the master."""
        watcher = subprocess.Popen(
            ["redis-cli", "-p", str(self.sentinels[0].port), "SUBSCRIBE"]
            + ["+sdown", "-sdown", "+switch-master", "-failover-abort-slave-timeout"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.watchers.append(watcher)
        assert watcher.stdout
        lines = iter(watcher.stdout)
        opened: Fault | None = None
        for line in lines:
            if line.strip() != "message":
                continue
            channel = next(lines, "").strip()
            payload = next(lines, "").strip()
            if channel in ("+switch-master", "-failover-abort-slave-timeout"):
                self.failover_aborted = channel != "+switch-master"
                self.failover_over.set()
            if channel == "+sdown" and payload.startswith("master fc "):
                opened = Fault("sentinel-sdown", now_ms(), now_ms(), lost_writes=True)
                with self.lock:
                    self.faults.append(opened)
            elif opened and (
                channel == "+switch-master"
                or (channel == "-sdown" and payload.startswith("master fc "))
            ):
                opened.end = now_ms()
                opened = None
        if opened:
            opened.end = now_ms()

    def faulting(self) -> None:
        kinds = self.fault_kinds()
        while not self.stop.wait(self.rng.uniform(2.0, 4.0)):
            fault = self.inject(self.rng.choice(kinds))
            with self.lock:
                self.faults.append(fault)

    # --- the run and its checks --------------------------------------

    def run(self) -> int:
        self.start()
        began = self.began = now_ms()
        clients = [
            threading.Thread(target=self.client, args=(i,))
            for i in range(self.args.clients)
        ]
        faulter = threading.Thread(target=self.faulting)
        if self.sentinels:
            threading.Thread(target=self.watch_sentinel, daemon=True).start()
        for t in [*clients, faulter]:
            t.start()
        time.sleep(self.args.seconds)
        self.stop.set()
        for t in [*clients, faulter]:
            t.join()
        # Every lease ends within 3 s of its last refresh.
        time.sleep(3.5)
        ended = now_ms()
        held = {}
        live = [p for p in self.instances if p.alive()]
        for name in self.names:
            status, body, _ = (
                request(live[0].port, "GET", f"/semaphores/{name}")
                if live
                else (0, {}, {})
            )
            # 404: its meta was deleted (a fault) and nobody acquired since:
            # the semaphore holds nothing.
            held[name] = (
                body.get("held")
                if status == 200
                else 0
                if status == 404
                else f"status {status}"
            )
        violations = self.check(held)
        self.summary(began, ended, violations)
        self.failed = bool(violations)
        return 1 if violations else 0

    def since_start(self, at: float) -> str:
        return f"{(at - self.began) / 1000:.3f} s into the run"

    def fault_before(self, at: float) -> str:
        before = [f for f in self.faults if f.start <= at]
        if not before:
            return "no fault before it"
        f = before[-1]
        return (
            f"the last fault before it: {f.kind} from {self.since_start(f.start)} "
            f"to {self.since_start(f.end)}"
        )

    def in_fault(
        self, at: float, lost_writes: bool = False, instance: int | None = None
    ) -> bool:
        for f in self.faults:
            if lost_writes and not f.lost_writes:
                continue
            if (
                instance is not None
                and f.kind == "kill-permitd"
                and f.instance != instance
            ):
                continue
            # A rollback's lost writes last as long as their leases: 3 s.
            settle = SETTLE_S + (3.0 if f.lost_writes else 0.0)
            if (
                f.start - 1000 * (3.0 if f.lost_writes else 0.0)
                <= at
                <= f.end + settle * 1000
            ):
                return True
        return False

    def check(self, held: dict[str, Any]) -> list[str]:
        violations: list[str] = []
        excess: dict[str, int] = {}
        # Answers.
        for e in self.events:
            if e.kind == "abandon":
                continue
            if e.status == 0 or e.status >= 500:
                # In flight when the fault began, or sent during it.
                allowed = e.status in (0, 503) and any(
                    self.in_fault(at, instance=e.instance)
                    for at in (e.sent, e.answered)
                )
                if e.status == 503 and not e.retry_after:
                    violations.append(f"503 without Retry-After: {e}")
                elif not allowed:
                    violations.append(
                        f"{e.kind} via instance {e.instance} answered {e.status} outside a "
                        f"fault, sent {self.since_start(e.sent)}, after "
                        f"{e.answered - e.sent:.0f} ms ({e.detail or 'no detail'}); "
                        f"{self.fault_before(e.sent)}"
                    )
            if e.answered - e.sent > e.bound_ms:
                violations.append(
                    f"{e.kind} took {e.answered - e.sent:.0f} ms > {e.bound_ms}: {e}"
                )
        # Holders: from the granting answer to the release's sending, or the
        # lease's end (moved by each refresh answered).
        intervals: dict[str, list[tuple[float, float]]] = {n: [] for n in self.names}
        by_permit: dict[str, list[Event]] = {}
        spans_of: dict[str, list[tuple[Event, float, str]]] = {}
        for e in self.events:
            if e.kind in ("refresh", "release") and e.permit_id:
                by_permit.setdefault(e.permit_id, []).append(e)
        for e in self.events:
            if e.kind != "acquire" or e.status != 201:
                continue
            end = epoch_ms(e.permit["expires_at"])
            released = "never"
            for later in by_permit.get(e.permit_id, []):
                if later.kind == "refresh" and later.status == 200:
                    end = max(end, epoch_ms(later.permit["expires_at"]))
                if later.kind == "release":
                    end = min(end, later.sent)
                    released = str(later.status)
            intervals[e.name].append((e.answered, end))
            spans_of.setdefault(e.name, []).append((e, end, released))
        for name, spans in intervals.items():
            points = sorted(
                [(s, 1) for s, _ in spans] + [(t, -1) for _, t in spans],
                key=lambda p: (p[0], p[1]),
            )
            # One violation per stretch of time over the limit, with the
            # fault that came last before it.
            holding, over_since, most = 0, 0.0, 0
            for at, step in points:
                holding += step
                if holding > LIMIT and self.in_fault(at, lost_writes=True):
                    excess[name] = max(excess.get(name, 0), holding - LIMIT)
                elif holding > LIMIT:
                    over_since = over_since or at
                    most = max(most, holding)
                elif over_since:
                    if not violations and os.environ.get("FAULTCHECK_EXPLAIN"):
                        for e, end, released in spans_of.get(name, []):
                            if e.answered <= over_since < end:
                                print(
                                    f"    holder client {e.client} via instance {e.instance}: "
                                    f"token {e.permit['fencing_token']}, granted "
                                    f"{self.since_start(e.answered)}, until "
                                    f"{self.since_start(end)}, release answered {released}"
                                )
                    violations.append(
                        f"{name}: {most} holders (limit {LIMIT}) for {at - over_since:.0f} ms "
                        f"from {self.since_start(over_since)}; {self.fault_before(over_since)}"
                    )
                    over_since, most = 0.0, 0
        self.excess = excess
        # Tokens: unique, and increasing in grant order.
        for name in self.names:
            grants = sorted(
                (
                    epoch_ms(e.permit["acquired_at"]),
                    e.permit["fencing_token"],
                    e.answered,
                )
                for e in self.events
                if e.kind == "acquire" and e.status == 201 and e.name == name
            )
            tokens = [g[1] for g in grants]
            if len(set(tokens)) != len(tokens):
                violations.append(f"{name}: a fencing token handed out twice")
            for before, after in itertools.pairwise(grants):
                if (
                    after[0] > before[0]
                    and after[1] <= before[1]
                    and not self.in_fault(after[2], lost_writes=True)
                ):
                    violations.append(
                        f"{name}: token {after[1]} granted after {before[1]}"
                    )
        for name, value in held.items():
            if value != 0:
                violations.append(f"{name}: held {value} after every lease ended")
        for i, p in enumerate(self.instances):
            if not p.alive():
                violations.append(f"permitd instance {i} died")
        return violations

    def summary(self, began: float, ended: float, violations: list[str]) -> None:
        def count(pred: Callable[[Event], bool]) -> int:
            return sum(1 for e in self.events if pred(e))

        granted = count(lambda e: e.kind == "acquire" and e.status == 201)
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        print(
            f"faultcheck {self.args.mode} seed {self.args.seed}: {(ended - began) / 1000:.0f} s, "
            f"{len(self.events)} requests, {granted} granted, "
            f"{count(lambda e: e.status == 429)} 429, {count(lambda e: e.status == 503)} 503, "
            f"{count(lambda e: e.status == 0 and e.kind != 'abandon')} refused connections, "
            f"{count(lambda e: e.kind == 'abandon')} abandoned"
        )
        print(f"  faults: {kinds}")
        longest = max(
            (e.answered - e.sent for e in self.events if e.kind != "abandon"), default=0
        )
        print(
            f"  longest request {longest:.0f} ms; excess holders in lost-write windows: "
            f"{self.excess or 'none'}"
        )
        for v in violations[:20]:
            print(f"  VIOLATION {v}")
        print(f"  {'FAIL' if violations else 'ok'}: {len(violations)} violations")

    def close(self) -> None:
        for w in self.watchers:
            w.kill()
        for p in self.instances:
            p.kill()
        for r in [*self.sentinels, *self.redis]:
            r.kill()
        # A failed run keeps its servers' files and permitd's logs: what the
        # violations are read against.
        if self.failed or self.args.keep:
            print(f"  logs and data kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--permitd", required=True, help="the permitd binary")
    parser.add_argument(
        "--mode", choices=["standalone", "sentinel", "cluster"], required=True
    )
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--keep", action="store_true", help="keep logs and data even when it passes"
    )
    run = Run(parser.parse_args())

    # A SIGTERM (a CI timeout, kill) still stops the servers this run started.
    def stop(*_: object) -> None:
        run.stop.set()
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop)
    try:
        return run.run()
    finally:
        run.close()


if __name__ == "__main__":
    sys.exit(main())
