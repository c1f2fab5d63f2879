// Leases: a permit granted after a wait longer than its lease is held and
// refreshed for several leases; a permit revoked behind the client's back, or
// whose permitd died, is reported lost in time; explicit refresh and release.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Client, NoCapacity, PermitLost } from "permitd";
import { nameFor, now, revoke, serverStatus, sleep, startServer, warnings, within, onEachStore } from "./servers.js";

onEachStore("leases", (store) => {
  test("a wait longer than the lease, then a hold of several leases", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const sem = client.semaphore(name, { limit: 1 });
    const lease = 900;
    const blocker = await sem.acquire({ ttlMs: 10_000 });
    const started = now();
    const waiting = sem.acquire({ waitMs: 5000, ttlMs: lease, holder: "waiter" });
    await sleep(1500); // longer than the waiter's lease
    await blocker.release();
    const permit = await within(3000, "the waiter's grant", waiting);
    const grantedAfter = now() - started;
    assert.ok(grantedAfter >= 1450, `granted after ${grantedAfter} ms`);

    // Held for more than three leases: only refreshes keep it, and the
    // server's expires_at moves on with each.
    const expiries = new Set<string>();
    const holdUntil = now() + 3.2 * lease;
    while (now() < holdUntil) {
      assert.equal(permit.lostError, undefined, `lost while held: ${permit.lostError?.message}`);
      const status = await serverStatus(server.url, name);
      assert.equal(status.held, 1);
      assert.equal(status.holders[0]?.fencing_token, permit.fencingToken);
      expiries.add(status.holders[0]?.expires_at ?? "");
      await sleep(lease / 4);
    }
    assert.ok(expiries.size >= 3, `expires_at took ${expiries.size} values: ${[...expiries].join(", ")}`);
    assert.ok(permit.expiresAt.getTime() - permit.acquiredAt.getTime() > 2 * lease);
    await assert.rejects(sem.acquire(), NoCapacity); // still held, by the server's count too
    await permit.release();
    assert.ok(permit.released);
    assert.equal(permit.lost.aborted, false);
    assert.equal((await serverStatus(server.url, name)).held, 0);
  });

  test("a permit revoked by an admin is lost within one refresh interval", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const lease = 900; // a refresh every 300 ms
    let revokedAt = 0;
    const error = await client
      .withPermit(name, { limit: 1, ttlMs: lease }, async (permit) => {
        await sleep(100);
        revokedAt = now();
        await revoke(server.url, name, permit.id);
        const lost = await within(2000, "the loss", permit.lostPromise);
        const after = now() - revokedAt;
        assert.ok(after <= lease / 3 + 250, `lost ${after} ms after the revoke`);
        assert.ok(permit.lost.aborted && permit.signal.aborted);
        assert.equal(permit.lost.reason, lost);
        return "finished anyway";
      })
      .then(
        () => assert.fail("withPermit resolved although the lease was lost"),
        (e: unknown) => e,
      );
    assert.ok(error instanceof PermitLost, String(error));
    // The callback's own assertions would have failed into workError.
    assert.equal(error.workError, undefined, String(error.workError));
    assert.equal(error.status, 404);
    assert.equal(error.semaphore, name);
    assert.match(error.message, /refresh found it gone/);
  });

  test("a permit whose permitd was killed is lost by the lease's end", async (t) => {
    const server = await startServer(t, store);
    const { messages, onWarning } = warnings();
    const client = new Client(server.url, { timeoutMs: 1000, onWarning });
    const lease = 1200; // a refresh every 400 ms
    const permit = await client.acquire(nameFor(t.name), { limit: 1, ttlMs: lease });
    await sleep(600); // one refresh confirmed
    const killedAt = now();
    await server.kill();
    const lost = await within(3000, "the loss", permit.lostPromise);
    const after = now() - killedAt;
    // The last confirmed refresh came at most a refresh interval before the
    // kill, so the lease surely ended between 2/3 of a lease and a lease later:
    // not at the first failed refresh, and not long after the lease.
    assert.ok(after >= (2 * lease) / 3 - 50, `lost ${after} ms after the kill: too early`);
    assert.ok(after <= lease + 200, `lost ${after} ms after the kill: too late`);
    assert.match(lost.message, /no refresh got through before the lease ran out/);
    assert.equal(lost.status, undefined);
    assert.ok(messages.some((m) => m.includes("refresh of permit")), messages.join("\n"));
    await assert.rejects(permit.release(), PermitLost);
  });

  test("explicit refresh and release, and a refresh of a revoked permit", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const sem = client.semaphore(name, { limit: 2 });
    const permit = await sem.acquire({ ttlMs: 500, keepAlive: false });
    await permit.refresh(20_000);
    assert.ok(permit.expiresAt.getTime() - permit.acquiredAt.getTime() >= 20_000);
    assert.equal((await sem.status()).holders[0]?.expiresAt.getTime(), permit.expiresAt.getTime());
    await permit.release();
    await assert.rejects(permit.refresh(), /was released/);

    const gone = await sem.acquire({ ttlMs: 20_000, keepAlive: false });
    await revoke(server.url, name, gone.id);
    await assert.rejects(gone.refresh(), (e: unknown) => e instanceof PermitLost && e.status === 404);
    assert.ok(gone.lost.aborted);
  });

  test("a release after the lease ran out is PermitLost", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const permit = await client.acquire(name, { limit: 1, ttlMs: 200, keepAlive: false });
    await sleep(400);
    assert.equal((await serverStatus(server.url, name)).held, 0);
    await assert.rejects(permit.release(), (e: unknown) => e instanceof PermitLost && e.status === 404);
    assert.equal(permit.state, "lost");
  });

  test("a replayed permit is refreshed at once", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const sem = client.semaphore(name, { limit: 1 });
    const key = `restart-${name}`;
    const earlier = await sem.acquire({ ttlMs: 1500, idempotencyKey: key, keepAlive: false }); // say, before a restart
    await sleep(1200); // most of its lease is gone
    const permit = await sem.acquire({ ttlMs: 1500, idempotencyKey: key });
    assert.equal(permit.id, earlier.id);
    // A first refresh a third of a lease from now (0.5 s) would come after
    // the lease's end (0.3 s from now); it must come at once.
    await sleep(600);
    assert.equal(permit.lostError, undefined);
    assert.equal((await sem.status()).held, 1);
    await permit.release();
  });
});
