"""The speed targets' tables from one run of scripts/bench: the peers side by side,
then each target with the measured values, their ratio and whether it is met.

Usage: targets.py RESULTS.jsonl [--out TARGETS.jsonl] [--duration S]

Reads the JSON lines scripts/bench wrote (one per loop and run; a loop run
several times has a "run" field) and takes, per label, the median of each
value over its runs; peak RSS is the largest (`VmHWM` only grows). With
--out, writes one JSON line per target, so a reader can recompute.

W1 is the uncontended loop (16 clients, limit 16, acquire then release at
once), W2 the contended one (64 clients, limit 4, 1 ms hold).
"""

import argparse
import json
import statistics
from collections import defaultdict
from typing import Any

PEERS = [
    "permitd on Redis",
    "permitd memory",
    "throttle (HTTP, memory)",
    "redis-semaphore (npm, direct)",
    "redis-py + permitd's Lua (direct)",
]


def median_of(values: list[Any], largest: bool) -> Any:
    values = [v for v in values if v is not None]
    if not values:
        return None
    if all(isinstance(v, list) for v in values):
        width = max(len(v) for v in values)
        return [
            median_of([v[i] if i < len(v) else None for v in values], largest)
            for i in range(width)
        ]
    numbers = [v for v in values if isinstance(v, (int, float))]
    if len(numbers) != len(values):
        return values[-1]
    return max(numbers) if largest else statistics.median(numbers)


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    summary = {}
    for label, runs in by_label.items():
        keys = {k for r in runs for k in r} - {"label", "run"}
        summary[label] = {
            k: median_of([r.get(k) for r in runs], k == "peak_rss_mib") for k in keys
        }
        summary[label]["runs"] = len(runs)
    return summary


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def spread(value: float | None) -> str:
    return f"±{value * 100:.1f} %" if value is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--out")
    parser.add_argument("--duration", type=float)
    args = parser.parse_args()
    with open(args.results) as file:
        rows = [json.loads(line) for line in file if line.strip()]
    s = summarise(rows)

    def get(label: str, key: str, index: int | None = None) -> float | None:
        value = s.get(label, {}).get(key)
        if index is not None:
            if not isinstance(value, list) or len(value) <= index:
                return None
            value = value[index]
        return float(value) if isinstance(value, (int, float)) else None

    runs = max((r.get("run", 1) for r in rows), default=1)
    seconds = f" of {args.duration:g} s" if args.duration else ""
    how = f"medians of {runs} runs{seconds}" if runs > 1 else f"one run{seconds}"

    # The peers side by side, in the shape the speed targets were set in.
    def v(label: str, key: str, index: int | None = None) -> str:
        return fmt(get(label, key, index))

    R, M, T, S = "permitd-redis", "permitd-memory", "throttle", "redis-semaphore"
    http = (R, M, T)
    cost = f"{R}/uncontended/redis-cost", f"{S}/uncontended/redis-cost"
    no = "-"
    peer_rows = [
        (
            "W1 cycles/s",
            [v(f"{p}/uncontended", "cycles_per_s") for p in (R, M, T, S)]
            + [v("python-redis-py-scripts", "cycles_per_s")],
        ),
        (
            "W1 server CPU µs per cycle",
            [v(f"{p}/uncontended", "server_cpu_us_per_cycle", 0) for p in http]
            + [no, no],
        ),
        (
            "W1 Redis CPU µs per cycle (/proc)",
            [
                v(f"{R}/uncontended", "server_cpu_us_per_cycle", 1),
                no,
                no,
                v(f"{S}/uncontended", "redis_cpu_us_per_cycle"),
                no,
            ],
        ),
        (
            "W2 script calls per cycle (commandstats)",
            [v(f"{R}/contended", "script_calls_per_cycle"), no, no, no, no],
        ),
        (
            "W1 Redis commands per cycle (commandstats)",
            [v(cost[0], "redis_commands_per_cycle"), no, no]
            + [v(cost[1], "redis_commands_per_cycle"), no],
        ),
        (
            "W1 Redis µs per cycle in the calls sent (commandstats)",
            [v(cost[0], "command_us_per_cycle"), no, no]
            + [v(cost[1], "command_us_per_cycle"), no],
        ),
        (
            "W2 cycles/s",
            [v(f"{p}/contended", "cycles_per_s") for p in (R, M, T, S)] + [no],
        ),
        (
            "W2 server / Redis CPU µs per cycle",
            [
                v(f"{R}/contended", "server_cpu_us_per_cycle", 0)
                + " / "
                + v(f"{R}/contended", "server_cpu_us_per_cycle", 1),
                v(f"{M}/contended", "server_cpu_us_per_cycle", 0),
                v(f"{T}/contended", "server_cpu_us_per_cycle", 0),
                "- / " + v(f"{S}/contended", "redis_cpu_us_per_cycle"),
                no,
            ],
        ),
        (
            "W2 wait p50 / p99 ms",
            [
                v(f"{p}/contended", "wait_p50_ms")
                + " / "
                + v(f"{p}/contended", "wait_p99_ms")
                for p in (R, M, T, S)
            ]
            + [no],
        ),
        (
            "W2 client spread vs median",
            [
                spread(get(f"{p}/contended", "client_spread_vs_median"))
                for p in (R, M, T, S)
            ]
            + [no],
        ),
        (
            "W2 handoff p50 / p99 ms, clients",
            [
                v(f"{p}/contended", "handoff_p50_ms")
                + " / "
                + v(f"{p}/contended", "handoff_p99_ms")
                for p in (R, M, T, S)
            ]
            + [no],
        ),
        (
            "W2 handoff p50 / p99 ms, server",
            [
                v(f"{p}/contended", "server_handoff_p50_ms")
                + " / "
                + v(f"{p}/contended", "server_handoff_p99_ms")
                for p in (R, M)
            ]
            + [no, no, no],
        ),
        (
            "peak RSS MiB (after W2)",
            [v(f"{p}/contended", "peak_rss_mib", 0) for p in http] + [no, no],
        ),
    ]
    print(
        f"\nPeers ({how}; W1: 16 clients, limit 16, no hold; "
        "W2: 64 clients, limit 4, 1 ms hold)"
    )
    print("\n| | " + " | ".join(PEERS) + " |")
    print("|---" * (len(PEERS) + 1) + "|")
    for name, values in peer_rows:
        print(f"| {name} | " + " | ".join(values) + " |")

    targets: list[dict[str, Any]] = []

    def target(
        name: str,
        measured: str,
        value: float | None,
        bound: float,
        at_least: bool = False,
        ratio: bool = True,
        unit: str = "x",
        source: str = "",
        shown: str | None = None,
    ) -> None:
        if value is None:
            result = "not measured"
        elif at_least:
            result = "met" if value >= bound else "missed"
        else:
            result = "met" if value <= bound else "missed"
        sign = ">=" if at_least else "<="
        targets.append(
            {
                "target": name,
                "measured": measured,
                "ratio": (round(value, 3) if value is not None else None)
                if ratio
                else None,
                "value": value,
                "bound": shown or f"{sign} {bound:g}{unit}",
                "result": result,
                "source": source,
            }
        )

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    # The targets as restated with direct handoff: absolute figures where the
    # issue names them, ratios against the peers in this same run.
    calls = get("permitd-redis/contended", "script_calls_per_cycle")
    target(
        "Script calls per contended cycle (W2), permitd on Redis",
        fmt(calls),
        calls,
        2,
        ratio=False,
        unit="",
        source="Script calls: INFO commandstats (FCALL and EVALSHA) over W2's "
        "measured window, per cycle",
    )
    for loop, w, bound in (("contended", "W2", 70.0), ("uncontended", "W1", 40.0)):
        a = get(f"permitd-redis/{loop}", "server_cpu_us_per_cycle", 1)
        b = get(f"redis-semaphore/{loop}", "redis_cpu_us_per_cycle")
        target(
            f"{w} Redis CPU µs per cycle, permitd (redis-semaphore)",
            f"{fmt(a)} ({fmt(b)})",
            a,
            bound,
            ratio=False,
            unit=" µs",
            source="Redis CPU: the redis-server process's utime + stime from /proc "
            "over the measured window, per cycle",
        )
    a = get("permitd-redis/contended", "server_cpu_us_per_cycle", 0)
    t = get("throttle/contended", "server_cpu_us_per_cycle", 0)
    target(
        "W2 server CPU µs per cycle, permitd on Redis (throttle)",
        f"{fmt(a)} ({fmt(t)})",
        a,
        75,
        ratio=False,
        unit=" µs",
        source="Server CPU: the server process's utime + stime from /proc over the "
        "measured window, per cycle (permitd's own process, Redis not included)",
    )
    for q, bound in (("p50", 0.2), ("p99", 0.6)):
        a = get("permitd-redis/contended", f"handoff_{q}_ms")
        server = get("permitd-redis/contended", f"server_handoff_{q}_ms")
        target(
            f"W2 handoff {q} ms seen by the clients, permitd on Redis",
            f"clients {fmt(a)} (server {fmt(server)})",
            a,
            bound,
            ratio=False,
            unit=" ms",
            source="Handoff: as the clients see it, a release sent -> the grant of "
            "that unit to the next client received, both HTTP legs included (how "
            "the peers compare); in brackets permitd's own permitd_handoff_seconds, "
            "release -> grant on the store's clock (0 for a direct handoff)",
        )
    for name, a_label, b_label, bound in (
        (
            "W2 cycles/s, permitd on Redis / throttle",
            "permitd-redis/contended",
            "throttle/contended",
            1.0,
        ),
        (
            "W2 cycles/s, permitd on Redis / redis-semaphore",
            "permitd-redis/contended",
            "redis-semaphore/contended",
            0.85,
        ),
        (
            "W1 cycles/s, permitd memory / throttle",
            "permitd-memory/uncontended",
            "throttle/uncontended",
            1.0,
        ),
    ):
        a, b = get(a_label, "cycles_per_s"), get(b_label, "cycles_per_s")
        target(name, f"{fmt(a)} / {fmt(b)}", ratio(a, b), bound, at_least=True)

    # The same cycle on a 3+3 cluster (CPU summed over its six nodes).
    def nodes_cpu(label: str) -> float | None:
        values = s.get(label, {}).get("server_cpu_us_per_cycle")
        if not isinstance(values, list) or len(values) < 2:
            return None
        numbers = [float(x) for x in values[1:] if isinstance(x, (int, float))]
        return sum(numbers) if len(numbers) == len(values) - 1 else None

    a, b = nodes_cpu("cluster/uncontended"), nodes_cpu("standalone/uncontended")
    target(
        "W1 Redis CPU µs per cycle, 3+3 cluster / one Redis",
        f"{fmt(a)} / {fmt(b)}",
        ratio(a, b),
        1.2,
        source="Cluster: the deployments loop, Redis CPU from /proc summed over "
        "the six nodes (masters and replicas) against the one Redis's",
    )
    # Kept as they were: fairness, and waits far below a barging peer's.
    for store in ("redis", "memory"):
        a = get(f"permitd-{store}/contended", "client_spread_vs_median")
        target(
            f"W2 client spread vs median, permitd {store}",
            spread(a),
            a,
            0.25,
            ratio=False,
            shown="within ±25 %",
            source="Client spread: the largest |a client's cycles - the median| / the "
            "median, over the 64 clients",
        )
    a = get("permitd-redis/contended", "wait_p99_ms")
    b = get("redis-semaphore/contended", "wait_p99_ms")
    target(
        "W2 wait p99 ms, permitd on Redis / redis-semaphore",
        f"{fmt(a)} / {fmt(b)}",
        ratio(a, b),
        0.1,
    )

    met = sum(row["result"] == "met" for row in targets)
    print(f"\nSpeed targets ({how}): {met} of {len(targets)} met")
    print("\n| target | measured | ratio | target | result |")
    print("|---|---|---|---|---|")
    for row in targets:
        shown_ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        print(
            f"| {row['target']} | {row['measured']} | {shown_ratio} | {row['bound']} "
            f"| {row['result']} |"
        )
    print("\nHow the rows are measured:")
    for source in dict.fromkeys(row["source"] for row in targets if row["source"]):
        print(f"- {source}.")
    if args.out:
        with open(args.out, "w") as file:
            for row in targets:
                file.write(json.dumps({"label": "target", **row}) + "\n")


if __name__ == "__main__":
    main()
