"""What one permit cycle costs Redis, from `INFO commandstats`.

Usage: redis_cost.py snapshot PORT > before.json
       redis_cost.py diff PORT before.json LABEL [--release-command NAME]

`diff` prints one JSON line: the commands Redis ran per cycle inside the
scripts, and the microseconds per cycle spent in the script calls
(FCALL, EVALSHA and EVAL, inner commands included) and in the inner commands
alone. A cycle is one acquire and one release, so cycles are half the
script calls: run it around an uncontended loop, where every acquire is
granted at once.

With `--release-command NAME` (redis-semaphore: `zrem`) the client
releases with that command outside any script: a cycle is then one call of
it, it counts among the cycle's commands, and its time is reported apart
(`release_command_us_per_cycle`). `command_us_per_cycle` is the time of
everything the client sent per cycle: the scripts plus that command.
"""

import json
import subprocess
import sys

SCRIPT_CALLS = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"}
# What permitd or this probe run outside the scripts.
OUTSIDE = SCRIPT_CALLS | {
    "info",
    "ping",
    "client|setinfo",
    "client",
    "hello",
    "select",
    "subscribe",
    "unsubscribe",
    "config|get",
    "time",
    "role",
    "quit",
}


def commandstats(port: str) -> dict[str, dict[str, float]]:
    text = subprocess.run(
        ["redis-cli", "-p", port, "info", "commandstats"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    stats: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_") :].partition(":")
        values = dict(field.split("=") for field in fields.split(","))
        stats[name] = {"calls": float(values["calls"]), "usec": float(values["usec"])}
    return stats


def main() -> None:
    mode, port = sys.argv[1], sys.argv[2]
    if mode == "snapshot":
        print(json.dumps(commandstats(port)))
        return
    with open(sys.argv[3]) as file:
        before: dict[str, dict[str, float]] = json.load(file)
    release_command = None
    if len(sys.argv) > 6 and sys.argv[5] == "--release-command":
        release_command = sys.argv[6].lower()
    after = commandstats(port)

    def delta(name: str, field: str) -> float:
        now = after.get(name, {}).get(field, 0.0)
        then = before.get(name, {}).get(field, 0.0)
        return float(now - then)

    script_calls = sum(delta(n, "calls") for n in SCRIPT_CALLS)
    cycles = script_calls / 2
    if release_command is not None:
        cycles = delta(release_command, "calls")
    if cycles == 0:
        print(json.dumps({"label": sys.argv[4], "error": "no script calls"}))
        return
    # TIME inside a script is counted under `time` like one from outside;
    # permitd's own TIME (the readiness probe) is rare enough to ignore here.
    inner = {n: delta(n, "calls") for n in after if n not in OUTSIDE or n == "time"}
    inner = {n: c for n, c in inner.items() if c > 0}
    script_usec = sum(delta(n, "usec") for n in SCRIPT_CALLS)
    release_usec = delta(release_command, "usec") if release_command else 0.0
    inside = [n for n in inner if n != release_command]
    report = {
        "label": sys.argv[4],
        "cycles": int(cycles),
        "redis_commands_per_cycle": round(sum(inner.values()) / cycles, 2),
        "script_calls_per_cycle": round(script_calls / cycles, 2),
        "script_us_per_cycle": round(script_usec / cycles, 1),
        "inner_us_per_cycle": round(sum(delta(n, "usec") for n in inside) / cycles, 1),
    }
    if release_command is not None:
        report["release_command"] = release_command
        report["release_command_us_per_cycle"] = round(release_usec / cycles, 1)
    report["command_us_per_cycle"] = round((script_usec + release_usec) / cycles, 1)
    report["commands"] = {n: round(c / cycles, 2) for n, c in sorted(inner.items())}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
