"""Checks deploy/ against the real binary (scripts/test-deploy runs it).

Usage: deploy_check.py flags PERMITD_BINARY
       deploy_check.py metrics PERMITD_BINARY

flags: every environment variable the Kubernetes manifests set (ConfigMap
data, Secret stringData, a container's env) and every flag a container
passes is one that `permitd --help` lists.

metrics: every metric name the alerting rules and the Grafana dashboard use
is on a live /metrics: permitd on a Redis of its own, with a watched
semaphore, after a readiness check (so every series has appeared).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from local_redis import free_port, start_redis

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") != "Kustomization":
                documents.append(document)
    return documents


def check_flags(binary: str) -> list[str]:
    help_text = subprocess.run(
        [binary, "--help"], check=True, capture_output=True, text=True
    ).stdout
    known_env = set(re.findall(r"\[env: ([A-Z0-9_]+)", help_text))
    known_flags = set(re.findall(r"(--[a-z0-9-]+)", help_text))
    used_env: set[str] = set()
    used_flags: set[str] = set()
    for document in manifests():
        kind = document["kind"]
        if kind == "ConfigMap":
            used_env |= set(document.get("data", {}))
        elif kind == "Secret":
            used_env |= set(document.get("stringData", {})) | set(
                document.get("data", {})
            )
        elif kind == "Deployment":
            for container in document["spec"]["template"]["spec"]["containers"]:
                used_env |= {e["name"] for e in container.get("env", [])}
                for arg in container.get("args", []) + container.get("command", [])[1:]:
                    if arg.startswith("--"):
                        used_flags.add(arg.split("=", 1)[0])
    problems = [
        f"{name}: not an environment variable of permitd"
        for name in sorted(used_env - known_env)
    ]
    problems += [
        f"{flag}: not a flag of permitd" for flag in sorted(used_flags - known_flags)
    ]
    print(
        f"deploy: the manifests set {len(used_env)} variables and {len(used_flags)} flags"
    )
    return problems


def used_metrics() -> dict[str, set[str]]:
    pattern = re.compile(r"\bpermitd_[a-z_]+\b")
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    in_rules = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in pattern.findall(rule["expr"])
    }
    dashboard = json.loads((DEPLOY / "grafana" / "permitd.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v.get("query", "") for v in dashboard["templating"]["list"]]
    in_dashboard = {name for expr in exprs for name in pattern.findall(str(expr))}
    return {"alerts.yaml": in_rules, "permitd.json": in_dashboard}


def live_metrics(binary: str) -> set[str]:
    redis_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as work:
        redis = start_redis(redis_port, work)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERMITD_")}
        permitd = subprocess.Popen(
            [
                binary,
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-semaphores",
                "payments",
            ],
            env={
                **env,
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}",
                "RUST_LOG": "warn",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    urllib.request.urlopen(f"{base}/readyz", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            create = urllib.request.Request(
                f"{base}/semaphores/payments", data=b'{"limit": 2}', method="PUT"
            )
            urllib.request.urlopen(create, timeout=5).read()
            text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        finally:
            permitd.terminate()
            redis.terminate()
            permitd.wait()
            redis.wait()
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def check_metrics(binary: str) -> list[str]:
    live = live_metrics(binary)
    problems = []
    for source, names in used_metrics().items():
        missing = sorted(names - live)
        problems += [
            f"{source} uses {name}, which /metrics does not show" for name in missing
        ]
        print(
            f"deploy: {source} uses {len(names)} metrics, {len(missing)} not on /metrics"
        )
    return problems


def main() -> None:
    what, binary = sys.argv[1], sys.argv[2]
    problems = check_flags(binary) if what == "flags" else check_metrics(binary)
    for problem in problems:
        print(f"deploy: FAIL {problem}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
