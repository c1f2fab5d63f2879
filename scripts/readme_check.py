"""Runs the README's runnable shell blocks against the real binary and checks
every answer they show, on the memory store and on Redis.

Usage: readme_check.py PERMITD_BINARY [README.md]

A block is runnable when the line before its ```sh fence is
`<!-- readme-test: NAME -->`. Its lines run in order in one bash session,
so a variable one step sets is there for the next, with
`http://127.0.0.1:8080` replaced by the address of a fresh permitd. A step
is a command (with its `\\` continuations); the `#` comment lines right
after it are the answer it shows, and are checked:
- `# HTTP/1.1 NNN Reason`: the status (the command must print headers,
  `curl -i`);
- `# name: value`: that header, with the value as shown (`…` matches
  anything);
- any other line: a line the command printed (`…` matches anything);
- `# {...}`, over one or more lines: the JSON body's shape: every key shown
  is there with a value of the same type, and the same value unless the
  shown one has `…` in it, or is a time, an id or a number over a million
  (these differ from run to run; `,…` stands for keys left out).
A step that shows no answer must still exit 0. Comment lines before a
command describe it and are not checked. A ```python block marked the same
way runs whole (with $README_PYTHON), and its last comment lines are what
it shows.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

from local_redis import free_port, start_redis

MARK = "__readme_step_done__"


def blocks(readme: str) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """Each runnable block's name and steps (see `steps`); a Python block
    is one step, run whole by $README_PYTHON (python3 by default), showing
    the comment lines it ends with."""
    found = []
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        match = re.fullmatch(r"<!-- readme-test: (\S+) -->", line.strip())
        fence = lines[i + 1].strip() if match and i + 1 < len(lines) else ""
        if match is None or fence not in ("```sh", "```python"):
            continue
        name = match.group(1)
        end = lines.index("```", i + 2)
        block = lines[i + 2 : end]
        if fence == "```sh":
            found.append((name, steps(block)))
            continue
        code = list(block)
        shown: list[str] = []
        while code and code[-1].startswith("#"):
            shown.insert(0, code.pop()[1:].strip())
        script = "\n".join(code)
        found.append(
            (
                name,
                [(f"\"${{README_PYTHON:-python3}}\" - <<'PY'\n{script}\nPY", shown)],
            )
        )
    return found


def steps(block: list[str]) -> list[tuple[str, list[str]]]:
    """(command, the comment lines shown right after it), in order; a blank
    line ends what a command shows."""
    found: list[tuple[list[str], list[str]]] = []
    after_command = False
    for line in block:
        stripped = line.strip()
        if after_command and found and found[-1][0][-1].endswith("\\"):
            found[-1][0].append(line)
        elif stripped.startswith("#"):
            if after_command:
                found[-1][1].append(stripped[1:].strip())
        elif not stripped:
            after_command = False
        else:
            found.append(([line], []))
            after_command = True
    return [("\n".join(command), shown) for command, shown in found]


VARYING_TEXT = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"  # a time
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # an id
)


def looks_varying(value: Any) -> bool:
    """Values that differ from run to run: only their type is checked."""
    if isinstance(value, str):
        return VARYING_TEXT.fullmatch(value) is not None
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1e6
    )


def same_shape(shown: Any, actual: Any, path: str = "") -> list[str]:
    """What differs between a shown JSON value and the actual one."""
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{path or 'body'}: expected an object, got {actual!r}"]
        problems = []
        for key, value in shown.items():
            if key not in actual:
                problems.append(f"{path}{key}: missing")
            else:
                problems += same_shape(value, actual[key], f"{path}{key}.")
        return problems
    if isinstance(shown, list):
        if not isinstance(actual, list) or len(actual) < len(shown):
            return [
                f"{path or 'body'}: expected a list of at least {len(shown)}, got {actual!r}"
            ]
        problems = []
        for i, value in enumerate(shown):
            problems += same_shape(value, actual[i], f"{path}{i}.")
        return problems
    if isinstance(shown, str) and "…" in shown:
        pattern = ".*".join(re.escape(part) for part in shown.split("…"))
        if isinstance(actual, str) and re.fullmatch(pattern, actual, re.DOTALL):
            return []
        return [f"{path.rstrip('.')}: {actual!r} does not match {shown!r}"]
    if type(shown) is not type(actual) and not (
        isinstance(shown, (int, float)) and isinstance(actual, (int, float))
    ):
        return [f"{path.rstrip('.')}: expected {shown!r}, got {actual!r}"]
    if looks_varying(shown) or shown == actual:
        return []
    return [f"{path.rstrip('.')}: expected {shown!r}, got {actual!r}"]


def shown_json(lines: list[str]) -> Any:
    """The JSON a step shows, with `…` for left-out keys made parseable."""
    text = " ".join(lines)
    text = re.sub(r",\s*…\s*(?=[,}\]])", "", text)  # ",…}", ",…," leave keys out
    text = re.sub(r"(?<=[{\[])\s*…\s*,?", "", text)
    return json.loads(text)


def check(command: str, shown: list[str], output: str, code: int) -> list[str]:
    if not shown:
        return [] if code == 0 else [f"exit status {code}"]
    head, _, body = output.replace("\r\n", "\n").partition("\n\n")
    if not head.startswith("HTTP/"):
        head, body = "", output
    headers = {}
    status = None
    for line in head.splitlines():
        if line.startswith("HTTP/"):
            status = line.split()[1]
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    problems = []
    json_lines: list[str] = []
    for line in shown:
        if line.startswith("HTTP/"):
            if status != line.split()[1]:
                problems.append(f"status {status}, the README shows {line}")
        elif line.startswith(("{", "[")) or json_lines:
            json_lines.append(line)
        elif re.match(r"^[a-z-]+: ", line) and head:
            name, _, value = line.partition(": ")
            actual = headers.get(name)
            pattern = ".*".join(re.escape(p) for p in value.split("…"))
            if actual is None or not re.fullmatch(pattern, actual):
                problems.append(
                    f"header {name}: {actual!r}, the README shows {value!r}"
                )
        else:
            # A line of plain output: some line printed must match it.
            pattern = ".*".join(re.escape(p) for p in line.split("…"))
            if not any(re.fullmatch(pattern, out) for out in output.splitlines()):
                problems.append(f"no line printed matches {line!r}")
    if json_lines:
        try:
            expected = shown_json(json_lines)
        except json.JSONDecodeError as e:
            return problems + [f"the README's JSON does not parse ({e}): {json_lines}"]
        try:
            actual_body = json.loads(
                body.strip().splitlines()[-1] if body.strip() else ""
            )
        except (json.JSONDecodeError, IndexError):
            return problems + [f"the answer is not JSON: {body!r}"]
        problems += same_shape(expected, actual_body)
    return problems


def run_block(
    name: str, block: list[tuple[str, list[str]]], base: str, binary: str
) -> tuple[int, list[str]]:
    # `permitd` on PATH is the binary under test (the blocks call it).
    path = f"{os.path.dirname(os.path.abspath(binary))}:{os.environ['PATH']}"
    shell = subprocess.Popen(
        ["bash", "--noprofile", "--norc"],
        env={**os.environ, "PATH": path},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert shell.stdin is not None and shell.stdout is not None
    failures = []
    ran = 0
    for command, shown in block:
        command = command.replace("http://127.0.0.1:8080", base)
        shell.stdin.write(f"{command}\necho; echo {MARK} $?\n")
        shell.stdin.flush()
        output = []
        while True:
            line = shell.stdout.readline()
            if not line:
                raise RuntimeError(f"{name}: the shell ended at {command!r}")
            if line.startswith(MARK):
                code = int(line.split()[1])
                break
            output.append(line)
        text = "".join(output).rstrip("\n")
        ran += 1
        for problem in check(command, shown, text, code):
            failures.append(
                f"{name}: `{command.splitlines()[0]}`: {problem}\n  got: {text[:400]}"
            )
    shell.stdin.close()
    shell.wait()
    return ran, failures


def start(
    binary: str, redis_port: int | None
) -> tuple[list[subprocess.Popen[bytes]], str]:
    processes: list[subprocess.Popen[bytes]] = []
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERMITD_") and k != "REDIS_URL"
    }
    if redis_port is not None:
        work = tempfile.mkdtemp()
        processes.append(start_redis(redis_port, work))
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
    port = free_port()
    processes.append(
        subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{port}"],
            env={**env, "RUST_LOG": "warn"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ready = subprocess.run(
            ["curl", "-sf", f"{base}/readyz"], check=False, capture_output=True
        )
        if ready.returncode == 0:
            return processes, base
        time.sleep(0.1)
    raise RuntimeError(f"permitd at {base} never got ready")


def main() -> None:
    binary = sys.argv[1]
    with open(sys.argv[2] if len(sys.argv) > 2 else "README.md") as file:
        readme = file.read()
    found = blocks(readme)
    if not found:
        sys.exit("readme: no runnable block found")
    passed = failed = 0
    for store in ("memory", "redis"):
        for name, block in found:
            processes, base = start(binary, free_port() if store == "redis" else None)
            try:
                ran, failures = run_block(f"{name} ({store})", block, base, binary)
            finally:
                for process in reversed(processes):
                    process.terminate()
                    process.wait()
            for failure in failures:
                print(f"readme: FAIL {failure}")
            print(f"readme: {name} on {store}: {ran} steps, {len(failures)} failed")
            passed += not failures
            failed += bool(failures)
    print(f"readme: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
