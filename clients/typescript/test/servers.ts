// The real processes the tests run against, and small helpers around them.
//
// `startServer(t, store)` starts a permitd of its own for one test, on the
// memory store or on a redis-server it starts too, and stops both when the
// test ends. permitd listens on port 0 and its startup line says which port
// it got, so no two tests race for a port. The binary is $PERMITD_BIN
// (relative paths from the repository root), by default target/debug/permitd;
// it is not built here.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { dirname, isAbsolute, resolve } from "node:path";
import { describe } from "node:test";
import { fileURLToPath } from "node:url";

export const STORES = ["memory", "redis"] as const;
export type Store = (typeof STORES)[number];

/**
 * The suite `body` declares, once per store. The two stores' suites run at
 * the same time (each test has servers of its own, and the tests mostly
 * wait), while the tests of one store run one after another.
 */
export function onEachStore(title: string, body: (store: Store) => void): void {
  describe(title, { concurrency: true }, () => {
    for (const store of STORES) {
      describe(`on ${store}`, () => body(store));
    }
  });
}

/** What a test context offers that the helpers need (node:test's TestContext). */
export interface Cleanup {
  after(fn: () => unknown): void;
}

// build/test/servers.js → clients/typescript/build/test → the repository root.
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
export const PACKAGE = resolve(REPO, "clients/typescript");

export function permitdBinary(): string {
  const path = process.env["PERMITD_BIN"] ?? "target/debug/permitd";
  return isAbsolute(path) ? path : resolve(REPO, path);
}

/** A monotonic clock in ms, the one the client uses. */
export const now = (): number => performance.now();

export const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

/** Polls `check()` until it is true; throws naming `condition` after `withinMs`. */
export async function until(condition: string, check: () => boolean | Promise<boolean>, withinMs = 5000): Promise<void> {
  const deadline = now() + withinMs;
  while (!(await check())) {
    if (now() > deadline) {
      throw new Error(`timed out after ${withinMs} ms waiting for ${condition}`);
    }
    await sleep(10);
  }
}

/** Rejects if `promise` has not settled within `ms`, naming `what`. */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A port nobody listens on right now (for Redis, which cannot bind port 0 and say). */
export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => done(port));
    });
  });
}

/** A started process whose output is kept, for failure messages. */
class Child {
  readonly output: string[] = [];
  readonly exited: Promise<void>;

  constructor(readonly process: ChildProcess) {
    const keep = (chunk: Buffer): void => {
      this.output.push(chunk.toString());
    };
    process.stdout?.on("data", keep);
    process.stderr?.on("data", keep);
    this.exited = new Promise((done) => {
      if (process.exitCode !== null || process.signalCode !== null) done();
      process.once("exit", () => done());
    });
  }

  get running(): boolean {
    return this.process.exitCode === null && this.process.signalCode === null;
  }

  tail(lines = 30): string {
    return this.output.join("").split("\n").slice(-lines).join("\n");
  }

  /** SIGKILL (works on a stopped process too): nothing here needs a clean shutdown. */
  async kill(): Promise<void> {
    if (this.running) this.process.kill("SIGKILL");
    await this.exited;
  }
}

export interface Redis {
  readonly url: string;
  kill(): Promise<void>;
  /** SIGSTOP: Redis keeps its connections and data but answers nothing. */
  pause(): void;
  resume(): void;
}

function answersPing(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = createConnection({ host: "127.0.0.1", port }, () => socket.write("PING\r\n"));
    socket.setTimeout(500, () => socket.destroy());
    socket.once("data", (data) => {
      socket.destroy();
      done(data.toString().startsWith("+PONG"));
    });
    socket.once("error", () => done(false));
    socket.once("close", () => done(false));
  });
}

export async function startRedis(t: Cleanup): Promise<Redis> {
  const port = await freePort();
  const child = new Child(
    spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  t.after(() => child.kill());
  child.process.once("error", (error) => child.output.push(`cannot start redis-server: ${error.message}\n`));
  await until(`redis-server on port ${port}\n${child.tail()}`, async () => {
    if (!child.running) throw new Error(`redis-server exited (is it installed?):\n${child.tail()}`);
    return answersPing(port);
  }, 10_000);
  return {
    url: `redis://127.0.0.1:${port}`,
    kill: () => child.kill(),
    pause: () => child.process.kill("SIGSTOP"),
    resume: () => child.process.kill("SIGCONT"),
  };
}

export interface Server {
  readonly url: string;
  readonly store: Store;
  readonly redis: Redis | undefined;
  kill(): Promise<void>;
  log(): string;
}

/** The address permitd's JSON startup line names, once it has printed it. */
function listeningAddress(output: readonly string[]): string | undefined {
  for (const line of output.join("").split("\n")) {
    if (!line.includes("permitd listening")) continue;
    try {
      const event = JSON.parse(line) as { address?: unknown };
      if (typeof event.address === "string") return event.address;
    } catch {
      // a partial line: read again with the next chunk
    }
  }
  return undefined;
}

async function ready(url: string): Promise<boolean> {
  try {
    const response = await fetch(url + "/readyz", { signal: AbortSignal.timeout(500) });
    await response.text();
    return response.status === 200;
  } catch {
    return false;
  }
}

/** A permitd with `settings` (PERMITD_* environment variables) and, on "redis", a Redis of its own. */
export async function startServer(t: Cleanup, store: Store, settings: Record<string, string> = {}): Promise<Server> {
  const binary = permitdBinary();
  if (!existsSync(binary)) {
    throw new Error(`no permitd binary at ${binary}: build it, or set PERMITD_BIN`);
  }
  const redis = store === "redis" ? await startRedis(t) : undefined;
  // Only the settings given here: an operator's PERMITD_* or REDIS_URL in the
  // environment must not change what the tests run against.
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith("PERMITD_") && key !== "REDIS_URL") env[key] = value;
  }
  Object.assign(env, {
    PERMITD_LISTEN: "127.0.0.1:0",
    PERMITD_LOG_FORMAT: "json",
    // The startup line (with the port) and warnings; not a line per request.
    RUST_LOG: "permitd::startup=info,warn",
    ...(redis === undefined ? {} : { REDIS_URL: redis.url }),
    ...settings,
  });
  const child = new Child(spawn(binary, [], { env, stdio: ["ignore", "pipe", "pipe"] }));
  t.after(() => child.kill());
  let address: string | undefined;
  await until(`permitd to listen\n${child.tail()}`, () => {
    if (!child.running) throw new Error(`permitd exited:\n${child.tail()}`);
    address = listeningAddress(child.output);
    return address !== undefined;
  }, 10_000);
  const url = `http://${address}`;
  await until(`permitd on ${url} to be ready\n${child.tail()}`, () => ready(url), 10_000);
  return { url, store, redis, kill: () => child.kill(), log: () => child.tail() };
}

/** Ends a permit the way another party could: DELETE with its id, not through the client. */
export async function revoke(url: string, semaphore: string, id: string): Promise<void> {
  const response = await fetch(`${url}/semaphores/${semaphore}/permits/${id}`, { method: "DELETE" });
  await response.text();
  if (response.status !== 204) throw new Error(`revoke answered ${response.status}`);
}

/** A semaphore's status read straight from the server (the client is what is tested). */
export async function serverStatus(url: string, semaphore: string): Promise<{
  held: number;
  waiting: number;
  holders: { fencing_token: number; expires_at: string; holder: string | null }[];
}> {
  const response = await fetch(`${url}/semaphores/${semaphore}`);
  const body = (await response.json()) as Awaited<ReturnType<typeof serverStatus>>;
  if (response.status !== 200) throw new Error(`status answered ${response.status}: ${JSON.stringify(body)}`);
  return body;
}

/** A unique semaphore name per test, from its title. */
export function nameFor(title: string): string {
  return `${title.replace(/[^A-Za-z0-9._:-]+/g, "-").slice(0, 80)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Warnings a client printed, kept for assertions instead of cluttering the output. */
export function warnings(): { messages: string[]; onWarning: (message: string) => void } {
  const messages: string[] = [];
  return { messages, onWarning: (message) => messages.push(message) };
}
