// AbortSignal: aborting a wait rejects with an AbortError and leaves nothing
// held, even when the grant races the abort; aborting while holding releases
// the permit, shielded from the abort that asked for it.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Client, type Permit } from "permitd";
import { nameFor, now, serverStatus, startServer, until, within, onEachStore } from "./servers.js";

function isAbortError(error: unknown): boolean {
  return error instanceof Error && error.name === "AbortError";
}

onEachStore("abort", (store) => {
  test("abort while waiting rejects with an AbortError and leaves the queue", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const sem = client.semaphore(name, { limit: 1 });
    const holder = await sem.acquire({ ttlMs: 30_000 });
    const controller = new AbortController();
    const waiter = sem.acquire({ waitMs: 20_000, signal: controller.signal });
    await until("the waiter to queue", async () => (await serverStatus(server.url, name)).waiting === 1);
    const abortedAt = now();
    controller.abort(new Error("shutting down"));
    const error = await within(1000, "the aborted acquire", waiter.then(() => assert.fail("granted"), (e: unknown) => e));
    assert.ok(isAbortError(error), String(error));
    const cause = (error as Error).cause;
    assert.ok(cause instanceof Error && cause.message === "shutting down", String(cause));
    assert.ok(now() - abortedAt < 500);
    await until("the aborted waiter to leave the queue", async () => (await serverStatus(server.url, name)).waiting === 0);
    await holder.release();
    // Nobody waits any more, so the released unit went to no one.
    assert.equal((await serverStatus(server.url, name)).held, 0);

    // A signal aborted before the call: rejected at once, nothing sent.
    await assert.rejects(sem.acquire({ signal: AbortSignal.abort() }), isAbortError);
    assert.equal((await serverStatus(server.url, name)).held, 0);
  });

  test("a grant that races the abort is released before the acquire rejects", async (t) => {
    const server = await startServer(t, store);
    const controller = new AbortController();
    const granted: string[] = [];
    // The grant arrives, and in that instant the caller aborts: the
    // answer is in hand, so it is the client's to release.
    const racing: typeof fetch = async (input, init) => {
      const response = await fetch(input, init);
      if (init?.method === "POST" && response.status === 201) {
        granted.push(response.headers.get("location") ?? "");
        controller.abort();
      }
      return response;
    };
    const client = new Client(server.url, { fetch: racing });
    const name = nameFor(t.name);
    await assert.rejects(client.acquire(name, { limit: 1, ttlMs: 30_000, signal: controller.signal }), isAbortError);
    assert.equal(granted.length, 1);
    assert.equal((await serverStatus(server.url, name)).held, 0);
  });

  test("abort while holding in withPermit releases the permit at once", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const controller = new AbortController();
    let seen: Permit | undefined;
    const holding = client.withPermit(name, { limit: 1, ttlMs: 30_000, signal: controller.signal }, async (permit) => {
      seen = permit;
      // Work that watches the permit's signal, as work should.
      await new Promise((resolve) => permit.signal.addEventListener("abort", resolve));
    });
    await until("the permit to be held", async () => seen !== undefined);
    assert.equal((await serverStatus(server.url, name)).held, 1);
    controller.abort();
    await assert.rejects(within(2000, "withPermit after the abort", holding), isAbortError);
    // Released before withPermit rejected: nothing left to wait for.
    assert.equal((await serverStatus(server.url, name)).held, 0);
    assert.ok(seen?.released);
    assert.ok(seen.signal.aborted);
    assert.equal(seen.lost.aborted, false);
  });

  test("abort while holding an acquired permit releases it in the background", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const controller = new AbortController();
    const permit = await client.acquire(name, { limit: 1, ttlMs: 30_000, signal: controller.signal });
    assert.equal((await serverStatus(server.url, name)).held, 1);
    controller.abort();
    assert.ok(permit.signal.aborted);
    await client.close(); // waits for the release the abort started
    assert.ok(permit.released);
    assert.equal((await serverStatus(server.url, name)).held, 0);
  });
});
