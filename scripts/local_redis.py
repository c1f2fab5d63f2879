"""A throwaway redis-server for the README and deploy checks: on a free
port of 127.0.0.1, nothing persisted, in a directory of the caller's."""

import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, work: str) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL,
    )
