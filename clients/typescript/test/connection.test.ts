// The connection check, tokens, long waits as several polls, retries with
// one Idempotency-Key, and what a caller sees while permitd or its store is
// down: an Unavailable within its time budget, never a hang.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Client, InvalidRequest, Unauthorized, Unavailable } from "permitd";
import { freePort, nameFor, now, serverStatus, sleep, startServer, onEachStore } from "./servers.js";

function isAcquire(init: RequestInit | undefined): boolean {
  return init?.method === "POST";
}

describe("an unreachable permitd", () => {
  test("ready() is false, and an acquire is Unavailable within wait + timeout", async () => {
    const url = `http://127.0.0.1:${await freePort()}`; // nobody listens there
    const client = new Client(url, { timeoutMs: 1000 });
    let started = now();
    assert.equal(await client.ready(), false);
    assert.ok(now() - started < 500);

    started = now();
    const error = await client
      .acquire(nameFor("down"), { limit: 1, waitMs: 500 })
      .then(() => assert.fail("granted by nobody"), (e: unknown) => e);
    const elapsed = now() - started;
    assert.ok(error instanceof Unavailable, String(error));
    assert.equal(error.status, undefined);
    assert.match(error.message, /cannot reach permitd \(ECONNREFUSED\)/);
    assert.doesNotMatch(error.message, /after 1 attempt /); // it was retried
    // The budget is wait + timeout = 1.5 s: no retry starts after it.
    assert.ok(elapsed <= 1500 + 300, `gave up after ${elapsed} ms`);

    // Try once (waitMs 0): bounded by the timeout alone.
    started = now();
    await assert.rejects(client.acquire(nameFor("down"), { limit: 1 }), Unavailable);
    assert.ok(now() - started <= 1000 + 300, `gave up after ${now() - started} ms`);
  });
});

onEachStore("connection", (store) => {
  test("ready() is true against a running permitd", async (t) => {
    const server = await startServer(t, store);
    assert.equal(await new Client(server.url).ready(), true);
  });

  test("tokens: none or a wrong one is Unauthorized, the right one works", async (t) => {
    const server = await startServer(t, store, { PERMITD_API_TOKENS: "s3cret-token" });
    const name = nameFor(t.name);
    const anonymous = new Client(server.url);
    assert.equal(await anonymous.ready(), true); // the probe needs no token
    await assert.rejects(anonymous.acquire(name, { limit: 1 }), (e: unknown) => e instanceof Unauthorized && e.status === 401);
    await assert.rejects(new Client(server.url, { token: "wrong" }).semaphore(name).status(), Unauthorized);
    const client = new Client(server.url, { token: "s3cret-token" });
    assert.ok(await client.withPermit(name, { limit: 1 }, (permit) => permit.fencingToken > 0));
  });

  test("a wait longer than the server's maximum is several polls", async (t) => {
    const server = await startServer(t, store, { PERMITD_MAX_WAIT_MS: "1000" });
    const polls: number[] = [];
    const counting: typeof fetch = (input, init) => {
      if (isAcquire(init) && typeof init?.body === "string") {
        polls.push((JSON.parse(init.body) as { wait_ms: number }).wait_ms);
      }
      return fetch(input, init);
    };
    const client = new Client(server.url, { maxWaitMs: 1000, fetch: counting });
    const name = nameFor(t.name);
    const sem = client.semaphore(name, { limit: 1 });
    const holder = await sem.acquire({ ttlMs: 10_000 });
    const releasing = sleep(1800).then(() => holder.release());
    polls.length = 0;
    const started = now();
    const permit = await sem.acquire({ waitMs: 2500, ttlMs: 10_000 });
    const waited = now() - started;
    await releasing;
    await permit.release();
    assert.ok(waited >= 1700 && waited < 2500, `waited ${waited} ms`);
    assert.ok(polls.length >= 2, `polls: ${polls.join(", ")}`);
    assert.ok(polls.every((ms) => ms > 0 && ms <= 1000), `polls: ${polls.join(", ")}`);

    // A client that sent the whole wait at once is refused by this server.
    await assert.rejects(
      new Client(server.url).semaphore(name).acquire({ waitMs: 2500 }),
      (e: unknown) => e instanceof InvalidRequest && /wait_ms/.test(e.message),
    );
  });

  test("a retry after a lost answer gets the same permit", async (t) => {
    const server = await startServer(t, store);
    const acquires: { key: string | null; status: number; id: string }[] = [];
    // Sends the first acquire to the server, then drops its answer: to the
    // client, a connection that broke after the request went out.
    const losing: typeof fetch = async (input, init) => {
      const response = await fetch(input, init);
      if (!isAcquire(init)) return response;
      const body = (await response.clone().json()) as { id: string };
      const key = new Headers(init?.headers).get("idempotency-key");
      acquires.push({ key, status: response.status, id: body.id });
      if (acquires.length === 1) throw new TypeError("fetch failed", { cause: Object.assign(new Error("socket hang up"), { code: "ECONNRESET" }) });
      return response;
    };
    const client = new Client(server.url, { fetch: losing });
    const name = nameFor(t.name);
    const permit = await client.acquire(name, { limit: 5, ttlMs: 10_000 });
    const status = await serverStatus(server.url, name);
    await permit.release();
    const [first, retry] = acquires;
    assert.equal(acquires.length, 2);
    assert.equal(first?.status, 201);
    assert.ok(first?.key);
    assert.equal(retry?.key, first.key);
    // The retry was answered with the permit the lost answer carried (a
    // replay), and only that one permit was ever held.
    assert.equal(retry?.status, 200);
    assert.equal(permit.id, first.id);
    assert.equal(status.held, 1);
  });
});

describe("a permitd whose Redis is down", () => {
  test("ready() is false, and calls are Unavailable (503) within the budget", async (t) => {
    const server = await startServer(t, "redis", { PERMITD_REDIS_TIMEOUT_MS: "500" });
    const client = new Client(server.url, { timeoutMs: 1500 });
    const sem = client.semaphore(nameFor(t.name), { limit: 1 });
    await sem.withPermit({}, () => undefined); // works while Redis is up
    await server.redis?.kill();
    assert.equal(await client.ready(), false);
    const started = now();
    const error = await sem.acquire().then(() => assert.fail("granted without a store"), (e: unknown) => e);
    const elapsed = now() - started;
    assert.ok(error instanceof Unavailable, String(error));
    assert.equal(error.status, 503);
    assert.equal(error.type, "urn:permitd:problem:store-unavailable");
    assert.equal(error.retryAfterMs, 1000);
    // Retry-After (1 s) was honoured between attempts, and the client gave up
    // rather than sleep past its 1.5 s budget.
    assert.match(error.message, /gave up after 2 attempts/);
    assert.ok(elapsed >= 1000 && elapsed <= 1500 + 500, `gave up after ${elapsed} ms`);
    await assert.rejects(sem.status(), Unavailable);
  });
});
