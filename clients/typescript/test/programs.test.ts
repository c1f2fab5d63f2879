// The programs shipped beside the library, run as users and the conformance
// harness run them: examples/fanout.mjs, and conformance-adapter.mjs with each
// operation of clients/conformance/PROTOCOL.md.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { describe, test } from "node:test";
import { Client } from "permitd";
import { freePort, nameFor, PACKAGE, REPO, serverStatus, startServer, until } from "./servers.js";

interface Run {
  readonly child: ChildProcess;
  readonly stdout: string[];
  readonly done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

function run(args: readonly string[]): Run {
  const child = spawn(process.execPath, args, { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
  const stdout: string[] = [];
  const stderr: string[] = [];
  child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.once("exit", (code) => resolve({ code, stdout: stdout.join(""), stderr: stderr.join("") })),
  );
  return { child, stdout, done };
}

type Event = { event: string; t: number } & Record<string, unknown>;

/** The adapter as the harness calls it, from the repository root; every line must be JSON. */
function adapter(args: readonly string[]): Run {
  return run(["clients/typescript/conformance-adapter.mjs", ...args]);
}

async function events(running: Run): Promise<Event[]> {
  const { code, stdout, stderr } = await running.done;
  assert.equal(code, 0, `adapter exited ${code}: ${stderr}`);
  return stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as Event);
}

describe("examples/fanout.mjs", () => {
  test("fans 5 calls out under limit 1, then 5", async (t) => {
    const server = await startServer(t, "memory");
    const { code, stdout, stderr } = await run([`${PACKAGE}/examples/fanout.mjs`, "--url", server.url]).done;
    assert.equal(code, 0, stderr);
    const handled = stdout.match(/^Handled api request №\d with status code 200$/gm) ?? [];
    assert.equal(handled.length, 10, stdout);
    const times = [...stdout.matchAll(/^takes ~(\d+\.\d{4}) seconds to handle 5 with (\d) bounded limit$/gm)];
    assert.deepEqual(times.map((m) => m[2]), ["1", "5"], stdout);
    const [one, five] = times.map((m) => Number(m[1]));
    // 5 calls of 100 ms one at a time take 5 calls; all at once about one.
    assert.ok(one !== undefined && one >= 0.5, stdout);
    assert.ok(five !== undefined && five >= 0.1 && five < one / 2, stdout);
  });
});

describe("conformance-adapter.mjs", () => {
  test("check: ready true against permitd, false against nothing", async (t) => {
    const server = await startServer(t, "memory");
    const [up] = await events(adapter(["check", "--url", server.url, "--semaphore", "x"]));
    assert.deepEqual([up?.event, up?.["ready"]], ["ready", true]);
    assert.equal(typeof up?.t, "number");
    const nowhere = `http://127.0.0.1:${await freePort()}`;
    const [down] = await events(adapter(["check", "--url", nowhere, "--semaphore", "x"]));
    assert.deepEqual([down?.event, down?.["ready"]], ["ready", false]);
  });

  test("create: created, shared at the same limit, LimitConflict at another", async (t) => {
    const server = await startServer(t, "memory");
    const name = nameFor(t.name);
    const base = ["create", "--url", server.url, "--semaphore", name];
    assert.equal((await events(adapter([...base, "--limit", "2"])))[0]?.event, "created");
    assert.equal((await events(adapter([...base, "--limit", "2"])))[0]?.event, "created");
    const [conflict] = await events(adapter([...base, "--limit", "3"]));
    assert.deepEqual([conflict?.event, conflict?.["kind"]], ["error", "LimitConflict"]);
  });

  test("hold: acquired, held past its lease, released", async (t) => {
    const server = await startServer(t, "memory");
    const name = nameFor(t.name);
    const [acquired, released, ...rest] = await events(
      adapter(["hold", "--url", server.url, "--semaphore", name, "--limit", "1", "--ttl-ms", "600", "--hold-ms", "1500"]),
    );
    assert.deepEqual(rest, []);
    assert.equal(acquired?.event, "acquired");
    assert.equal(typeof acquired["id"], "string");
    assert.equal(typeof acquired["token"], "number");
    assert.equal(released?.event, "released");
    assert.ok(released.t - acquired.t >= 1500, `held ${released.t - acquired.t} ms`);
    assert.equal((await serverStatus(server.url, name)).held, 0);
  });

  test("hold on a full semaphore: NoCapacity with retry_after_ms", async (t) => {
    const server = await startServer(t, "memory");
    const name = nameFor(t.name);
    await using _held = await new Client(server.url).acquire(name, { limit: 1, ttlMs: 20_000 });
    const [error] = await events(adapter(["hold", "--url", server.url, "--semaphore", name, "--limit", "1", "--hold-ms", "100"]));
    assert.deepEqual([error?.event, error?.["kind"]], ["error", "NoCapacity"]);
    const retryAfterMs = error?.["retry_after_ms"];
    assert.ok(typeof retryAfterMs === "number" && retryAfterMs >= 1000, JSON.stringify(error));
  });

  test("hold cancelled by SIGINT: cancelled, and the permit is gone", async (t) => {
    const server = await startServer(t, "memory");
    const name = nameFor(t.name);
    const holding = adapter(["hold", "--url", server.url, "--semaphore", name, "--limit", "1", "--ttl-ms", "30000", "--hold-ms", "60000"]);
    await until("the adapter to acquire", () => holding.stdout.join("").includes('"acquired"'), 10_000);
    holding.child.kill("SIGINT");
    const [acquired, cancelled, ...rest] = await events(holding);
    assert.deepEqual([acquired?.event, cancelled?.event, rest], ["acquired", "cancelled", []]);
    assert.equal((await serverStatus(server.url, name)).held, 0);
  });
});
