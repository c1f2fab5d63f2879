// Many holders on one semaphore never exceed its limit: counted by the test
// from the times each worker held its permit, while leases shorter than the
// holds are kept alive by the refresh.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Client } from "permitd";
import { nameFor, now, serverStatus, sleep, startServer, onEachStore } from "./servers.js";

/** The most intervals open at once; an interval that ends as another starts does not overlap it. */
function peak(intervals: readonly { start: number; end: number }[]): number {
  const events = intervals.flatMap(({ start, end }) => [
    { at: start, delta: 1 },
    { at: end, delta: -1 },
  ]);
  events.sort((a, b) => a.at - b.at || a.delta - b.delta);
  let open = 0;
  let most = 0;
  for (const { delta } of events) {
    open += delta;
    most = Math.max(most, open);
  }
  return most;
}

onEachStore("concurrency", (store) => {
  test("limit 3, 9 workers, lease 1 s, hold 1.5 s: at most 3 at once, 3 rounds", async (t) => {
    const server = await startServer(t, store);
    const client = new Client(server.url);
    const name = nameFor(t.name);
    const limit = 3;
    const lease = 1000;
    const hold = 1500;
    const held: { start: number; end: number; token: number }[] = [];
    const started = now();
    await Promise.all(
      Array.from({ length: 9 }, (_, index) =>
        client.withPermit(name, { limit, ttlMs: lease, waitMs: 20_000, holder: `worker-${index}` }, async (permit) => {
          const start = now(); // right after the grant arrived
          await sleep(hold);
          assert.equal(permit.lostError, undefined, `worker ${index} lost its lease`);
          held.push({ start, end: now(), token: permit.fencingToken }); // right before the release
        }),
      ),
    );
    const wall = now() - started;

    assert.equal(held.length, 9);
    assert.equal(new Set(held.map((h) => h.token)).size, 9);
    // Never above the limit, and the limit was used: one at a time would fail too.
    assert.equal(peak(held), limit);
    // 9 holds of 1.5 s, 3 at a time, cannot take less than 3 holds.
    assert.ok(wall >= 3 * hold, `all done in ${wall} ms`);
    assert.ok(wall < 3 * hold + 3000, `all done in ${wall} ms`);
    const status = await serverStatus(server.url, name);
    assert.deepEqual([status.held, status.waiting], [0, 0]);
  });
});
