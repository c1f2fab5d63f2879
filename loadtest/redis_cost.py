"""What one permit cycle costs Redis, from `INFO commandstats`.

Usage: redis_cost.py snapshot PORT > before.json
       redis_cost.py diff PORT before.json LABEL

`diff` prints one JSON line: the commands Redis ran per cycle inside the
scripts, and the microseconds per cycle spent in the script calls
(EVALSHA and EVAL, inner commands included) and in the inner commands
alone. A cycle is one acquire and one release, so cycles are half the
script calls: run it around an uncontended loop, where every acquire is
granted at once.
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
    after = commandstats(port)

    def delta(name: str, field: str) -> float:
        now = after.get(name, {}).get(field, 0.0)
        then = before.get(name, {}).get(field, 0.0)
        return float(now - then)

    script_calls = sum(delta(n, "calls") for n in SCRIPT_CALLS)
    cycles = script_calls / 2
    if cycles == 0:
        print(json.dumps({"label": sys.argv[4], "error": "no script calls"}))
        return
    # TIME inside a script is counted under `time` like one from outside;
    # permitd's own TIME (the readiness probe) is rare enough to ignore here.
    inner = {n: delta(n, "calls") for n in after if n not in OUTSIDE or n == "time"}
    inner = {n: c for n, c in inner.items() if c > 0}
    print(
        json.dumps(
            {
                "label": sys.argv[4],
                "cycles": int(cycles),
                "redis_commands_per_cycle": round(sum(inner.values()) / cycles, 2),
                "script_us_per_cycle": round(
                    sum(delta(n, "usec") for n in SCRIPT_CALLS) / cycles, 1
                ),
                "inner_us_per_cycle": round(
                    sum(delta(n, "usec") for n in inner) / cycles, 1
                ),
                "commands": {n: round(c / cycles, 2) for n, c in sorted(inner.items())},
            }
        )
    )


if __name__ == "__main__":
    main()
