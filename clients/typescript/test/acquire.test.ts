// Acquiring and releasing permits, withPermit, `await using`, creating a
// semaphore, and each refusal an acquire can meet, on each store.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  Client,
  CountExceedsLimit,
  IdempotencyMismatch,
  InvalidRequest,
  LimitConflict,
  NoCapacity,
  NotFound,
  type Permit,
  PermitLost,
} from "permitd";
import { nameFor, now, serverStatus, startServer, onEachStore } from "./servers.js";

onEachStore("acquire", (store) => {
  test("acquire and release", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url, { timeoutMs: 5000 });
    const name = nameFor(t.name);
    const sem = client.semaphore(name, { limit: 2 });
    const first = await sem.acquire({ ttlMs: 10_000, holder: "a" });
    assert.deepEqual([first.semaphore, first.count, first.holder, first.state], [name, 1, "a", "held"]);
    assert.equal(first.expiresAt.getTime() - first.acquiredAt.getTime(), 10_000);
    const second = await sem.acquire({ holder: "b" });
    assert.ok(second.fencingToken > first.fencingToken);
    assert.notEqual(second.id, first.id);

    const status = await sem.status();
    assert.deepEqual([status.limit, status.held, status.available], [2, 2, 0]);
    assert.deepEqual(status.holders.map((h) => h.holder).sort(), ["a", "b"]);

    await first.release();
    await second.release();
    await second.release(); // a second release does nothing
    assert.ok(first.released && second.released);
    assert.equal(first.state, "released");
    assert.equal((await sem.status()).held, 0);
  });

  test("withPermit runs the callback under a permit and releases it", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    let seen: Permit | undefined;
    const result = await client.withPermit(name, { limit: 1, holder: "worker-7" }, async (permit) => {
      seen = permit;
      const status = await serverStatus(server.url, name);
      assert.equal(status.held, 1);
      assert.equal(status.holders[0]?.fencing_token, permit.fencingToken);
      assert.equal(status.holders[0]?.holder, "worker-7");
      return "done";
    });
    assert.equal(result, "done");
    assert.ok(seen?.released);
    assert.equal(seen.lostError, undefined);
    assert.equal((await serverStatus(server.url, name)).held, 0);

    // A callback that throws: its error, and the permit released all the same.
    await assert.rejects(
      client.withPermit(name, { limit: 1 }, () => {
        throw new RangeError("the work failed");
      }),
      RangeError,
    );
    assert.equal((await serverStatus(server.url, name)).held, 0);
  });

  test("await using releases at the end of the block", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    let kept: Permit | undefined;
    {
      await using permit = await client.acquire(name, { limit: 1, ttlMs: 10_000 });
      kept = permit;
      assert.equal((await serverStatus(server.url, name)).held, 1);
    }
    assert.ok(kept.released);
    assert.equal((await serverStatus(server.url, name)).held, 0);

    // Left by an exception: released too, and the exception is the block's.
    await assert.rejects(async () => {
      await using permit = await client.acquire(name, { limit: 1 });
      kept = permit;
      throw new TypeError("left early");
    }, TypeError);
    assert.ok(kept.released);
    assert.equal((await serverStatus(server.url, name)).held, 0);
  });

  test("a full semaphore is NoCapacity with retryAfterMs", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const sem = client.semaphore(nameFor(t.name), { limit: 1 });
    await using _held = await sem.acquire({ ttlMs: 20_000 });
    const error = await sem.acquire().then(
      () => assert.fail("granted a second permit of a limit of 1"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof NoCapacity, String(error));
    assert.equal(error.status, 429);
    assert.equal(error.type, "urn:permitd:problem:no-capacity");
    // permitd says when the soonest lease ends: within its 20 s, in ms.
    assert.ok(error.retryAfterMs !== undefined && error.retryAfterMs >= 1000 && error.retryAfterMs <= 20_000, String(error.retryAfterMs));
    assert.deepEqual([error.limit, error.held, error.available], [1, 1, 0]);
    assert.ok(error.requestId);

    // With a wait, the refusal comes when the wait is over, not before.
    const started = now();
    await assert.rejects(sem.acquire({ waitMs: 300 }), NoCapacity);
    assert.ok(now() - started >= 295, `refused after ${now() - started} ms`);
  });

  test("create on an existing semaphore: the same limit shares it, another is LimitConflict", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const mine = client.semaphore(name, { limit: 2 });
    assert.equal((await mine.create()).limit, 2);
    const theirs = client.semaphore(name, { limit: 2 });
    assert.equal((await theirs.create()).limit, 2);
    await mine.withPermit({}, async () => {
      assert.equal((await theirs.status()).held, 1);
    });

    const other = client.semaphore(name, { limit: 3 });
    await assert.rejects(other.create(), (error: unknown) => error instanceof LimitConflict && error.limit === 2);
    await assert.rejects(
      other.acquire(),
      (error: unknown) => error instanceof LimitConflict && error.status === 409 && error.limit === 2,
    );
    assert.equal((await mine.status()).limit, 2); // never silently changed
    assert.equal((await other.setLimit(3)).limit, 3);
    await other.withPermit({}, () => undefined);
  });

  test("other refusals: unknown semaphore, count above the limit, a lease too short", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const unknown = client.semaphore(name);
    await assert.rejects(unknown.acquire(), NotFound);
    await assert.rejects(unknown.status(), NotFound);

    const sem = client.semaphore(name, { limit: 2 });
    await sem.create();
    await assert.rejects(sem.acquire({ count: 3 }), (error: unknown) => error instanceof CountExceedsLimit && error.limit === 2);
    await assert.rejects(sem.acquire({ ttlMs: 10 }), (error: unknown) => error instanceof InvalidRequest && /ttl_ms/.test(error.message));
    await sem.delete();
    await assert.rejects(sem.delete(), NotFound);
  });

  test("an Idempotency-Key replays the same permit", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const sem = client.semaphore(name, { limit: 5 });
    const first = await sem.acquire({ ttlMs: 10_000, idempotencyKey: `order-42-${name}` });
    const again = await sem.acquire({ ttlMs: 10_000, idempotencyKey: `order-42-${name}` });
    assert.equal(again.id, first.id);
    assert.equal((await sem.status()).held, 1);
    // The same key with another body is a client bug, not a retry.
    await assert.rejects(sem.acquire({ ttlMs: 20_000, idempotencyKey: `order-42-${name}` }), IdempotencyMismatch);
    await first.release();
    // The same permit, so its release finds it gone.
    await assert.rejects(again.release(), PermitLost);
  });
});
