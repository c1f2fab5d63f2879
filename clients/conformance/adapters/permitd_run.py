"""`permitd run`'s adapter for the conformance suite (PROTOCOL.md): each
operation is one `permitd run` (or `permitd healthcheck`) process, and what
it did is read from its exit status, its stderr, and the events its command
prints. The command is this file again (`child`), which reports the permit
`permitd run` put in its environment, holds it, and reports the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

# permitd run's exit statuses (permitd run --help).
REFUSED, UNAVAILABLE, LEASE_LOST, NO_CAPACITY, NO_PERMISSION = 65, 69, 70, 75, 77


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time() * 1000, **fields}), flush=True)


def child(hold_ms: int) -> None:
    """The command run under the permit."""
    emit(
        "acquired",
        id=os.environ["PERMITD_PERMIT_ID"],
        token=int(os.environ["PERMITD_FENCING_TOKEN"]),
    )
    try:
        time.sleep(hold_ms / 1000)
    except KeyboardInterrupt:
        # Ctrl-C passed on by permitd run: stop the work, say nothing; the
        # adapter reports the cancellation once permitd run has released.
        sys.exit(130)
    emit("released")


def run(permitd: str, op: str, args: argparse.Namespace) -> None:
    if op == "check":
        code = subprocess.run(
            [permitd, "healthcheck", "--ready", "--url", args.url],
            capture_output=True,
            check=False,
        ).returncode
        emit("ready", ready=code == 0)
        return
    command = [
        permitd,
        "run",
        "--url",
        args.url,
        "--semaphore",
        args.semaphore,
        "--wait-ms",
        str(args.wait_ms),
        # Stop at once when the lease is lost: the check times the report.
        "--kill-grace-ms",
        "0",
    ]
    if args.limit is not None:
        command += ["--limit", str(args.limit)]
    if args.ttl_ms is not None:
        command += ["--ttl-ms", str(args.ttl_ms)]
    if op == "create":
        command += ["--", "true"]
    else:
        command += ["--", sys.executable, __file__, "child", str(args.hold_ms)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    cancelled = False

    def cancel(_signum: int, _frame: Any) -> None:
        nonlocal cancelled
        cancelled = True
        process.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, cancel)
    _, stderr = process.communicate()
    code = process.returncode
    if cancelled:
        emit("cancelled")
    elif code == 0:
        if op == "create":
            emit("created")
    elif code == LEASE_LOST:
        emit("lost", detail=stderr.strip())
    else:
        kind = {
            REFUSED: "LimitConflict" if "another limit" in stderr else "Other",
            UNAVAILABLE: "Unavailable",
            NO_CAPACITY: "NoCapacity",
            NO_PERMISSION: "Unauthorized",
        }.get(code, "Other")
        after = re.search(r"retry after (\d+) ms", stderr)
        emit(
            "error",
            kind=kind,
            retry_after_ms=float(after.group(1)) if after else None,
            detail=f"exit {code}: {stderr.strip()}",
        )


def main() -> None:
    if sys.argv[1] == "child":
        child(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--permitd", required=True)
    parser.add_argument("op", choices=["check", "create", "hold"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--semaphore", required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--ttl-ms", type=int)
    parser.add_argument("--wait-ms", type=int, default=0)
    parser.add_argument("--hold-ms", type=int, default=0)
    args = parser.parse_args()
    run(args.permitd, args.op, args)


if __name__ == "__main__":
    main()
