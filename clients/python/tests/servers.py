"""The real processes the tests run against: permitd and redis-server.

`Launcher` starts them on free ports and kills them all on `close`; `Redis`
and `Permitd` can pause (SIGSTOP) and resume them, to make them hang rather
than refuse. The binary is `$PERMITD_BIN` (relative paths are taken from the
repository root), by default `target/debug/permitd`; it is not built here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import permitd

REPO = Path(__file__).resolve().parents[3]
STORES = ["memory", "redis"]


def permitd_binary() -> Path:
    path = Path(os.environ.get("PERMITD_BIN", "target/debug/permitd"))
    return path if path.is_absolute() else REPO / path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(condition: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls `check()` until it is true; fails naming `condition` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.02)


async def until(condition: str, check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Awaits `check()` until it is true; fails naming `condition` after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {condition}")
        await asyncio.sleep(0.01)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGSTOP, returning once every thread has stopped.

    The signal is delivered asynchronously: a thread busy on another core
    can still answer a request sent right after kill() returns, which would
    make "a request to a stopped server" sometimes succeed.
    """
    process.send_signal(signal.SIGSTOP)

    def stopped() -> bool:
        tasks = Path(f"/proc/{process.pid}/task")
        # The state is the field after the parenthesised command name.
        states = [(t / "stat").read_text().rpartition(")")[2].split()[0] for t in tasks.iterdir()]
        return all(state in ("T", "t") for state in states)

    wait_until(f"process {process.pid} to stop", stopped, timeout=5.0)


@dataclass
class Redis:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def pause(self) -> None:
        """SIGSTOP: Redis stops answering but keeps its connections and data."""
        stop(self.process)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@dataclass
class Permitd:
    process: subprocess.Popen[bytes]
    url: str
    store: str
    log: Path

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, permitd answers nothing."""
        stop(self.process)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False


class Launcher:
    """Starts redis-server and permitd on free ports; `close` kills them all."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._stack = ExitStack()

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

        def stop() -> None:
            # SIGKILL works on a stopped (SIGSTOPped) process too, and nothing
            # these tests leave behind needs a clean shutdown.
            process.kill()
            process.wait()

        self._stack.callback(stop)
        return process

    def redis(self) -> Redis:
        port = free_port()
        process = self._spawn(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            dict(os.environ),
            self._directory / f"redis-{port}.log",
        )
        wait_until(f"redis-server on port {port}", lambda: _answers_ping(port))
        return Redis(process, port)

    def permitd(self, *, redis: Redis | None = None, **settings: str) -> Permitd:
        binary = permitd_binary()
        if not binary.exists():
            pytest.fail(f"no permitd binary at {binary}: build it, or set PERMITD_BIN")
        port = free_port()
        # Only the settings given here: an operator's PERMITD_* or REDIS_URL
        # in the environment must not change what the tests run against.
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("PERMITD_") and k != "REDIS_URL"
        }
        env.update({"PERMITD_LISTEN": f"127.0.0.1:{port}", "RUST_LOG": "permitd=warn,warn"})
        if redis is not None:
            env["REDIS_URL"] = redis.url
        env.update(settings)
        log = self._directory / f"permitd-{port}.log"
        process = self._spawn([str(binary)], env, log)
        url = f"http://127.0.0.1:{port}"
        server = Permitd(process, url, "redis" if redis else "memory", log)

        def up() -> bool:
            if process.poll() is not None:
                pytest.fail(f"permitd exited with {process.returncode}:\n{server.log_tail()}")
            return _ready(url)

        wait_until(f"permitd on {url} to be ready", up)
        return server

    def server(self, store: str, **settings: str) -> Permitd:
        """A permitd on `store`, with its own redis-server for "redis"."""
        redis = self.redis() if store == "redis" else None
        return self.permitd(redis=redis, **settings)

    def close(self) -> None:
        self._stack.close()


async def release_behind_its_back(url: str, permit: permitd.Permit | permitd.SyncPermit) -> None:
    """Ends a permit the way another party could: DELETE with its id, not via the client."""
    async with httpx.AsyncClient() as http:
        response = await http.delete(f"{url}/semaphores/{permit.semaphore}/permits/{permit.id}")
    assert response.status_code == 204, response.text


def release_behind_its_back_sync(url: str, permit: permitd.SyncPermit) -> None:
    response = httpx.delete(f"{url}/semaphores/{permit.semaphore}/permits/{permit.id}")
    assert response.status_code == 204, response.text
