#!/usr/bin/env node
// The conformance adapter of the TypeScript client (clients/conformance/PROTOCOL.md):
// does one operation with the client and reports it as JSON lines on stdout.
//
//   node clients/typescript/conformance-adapter.mjs <check|create|hold> --url URL --semaphore NAME
//        [--limit N] [--ttl-ms T] [--wait-ms W] [--hold-ms H]
//
// It holds through `withPermit`, the client's idiomatic form, and SIGINT
// aborts the hold through the AbortSignal given to it. It judges nothing:
// the harness counts holders from the events' times. It exits 0 whatever the
// outcome once its events are out; only a bad invocation exits 64. It needs
// the package built (npm run build in clients/typescript): it imports
// `permitd` the way users do. Warnings go to stderr, never to stdout.

import { parseArgs } from "node:util";
import { Client, LimitConflict, NoCapacity, NotFound, PermitLost, Unauthorized, Unavailable } from "permitd";

/** Wall-clock milliseconds since 1970, as a float (finer than Date.now()). */
const wallClock = () => performance.timeOrigin + performance.now();

/**
 * Writes one event line; resolves once it has been handed to the OS, so that
 * exiting afterwards cannot cut it off.
 * @param {string} event
 * @param {number} t
 * @param {Record<string, unknown>} [fields]
 * @returns {Promise<void>}
 */
function emit(event, t, fields = {}) {
  const line = JSON.stringify({ event, t, ...fields }) + "\n";
  return new Promise((resolve) => process.stdout.write(line, () => resolve()));
}

/**
 * The `error` event for what the client rejected with.
 * @param {unknown} error
 */
function emitError(error) {
  /** @type {Record<string, unknown>} */
  const fields = { kind: "Other", detail: error instanceof Error ? error.message : String(error) };
  if (error instanceof NoCapacity) {
    fields["kind"] = "NoCapacity";
    fields["retry_after_ms"] = error.retryAfterMs ?? 0;
  } else if (error instanceof LimitConflict) {
    fields["kind"] = "LimitConflict";
  } else if (error instanceof NotFound) {
    fields["kind"] = "NotFound";
  } else if (error instanceof Unavailable) {
    fields["kind"] = "Unavailable";
  } else if (error instanceof Unauthorized) {
    fields["kind"] = "Unauthorized";
  }
  return emit("error", wallClock(), fields);
}

/** @param {unknown} error */
const isAbortError = (error) => error instanceof Error && error.name === "AbortError";

/**
 * Resolves after `ms`, or as soon as `signal` aborts.
 * @param {number} ms
 * @param {AbortSignal} signal
 * @returns {Promise<void>}
 */
function holdFor(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/**
 * Acquires, holds for `holdMs` while the client keeps the lease alive, and
 * releases; SIGINT cancels through `signal`.
 * @param {Client} client
 * @param {Options} options
 */
async function hold(client, options) {
  const controller = new AbortController();
  process.on("SIGINT", () => controller.abort());
  /** @type {number | undefined} */
  let lostAt;
  /** @type {number | undefined} */
  let releasingAt;
  /** @type {import("permitd").Permit | undefined} */
  let held;
  try {
    await client.withPermit(
      options.semaphore,
      { limit: options.limit, ttlMs: options.ttlMs, waitMs: options.waitMs, signal: controller.signal },
      async (permit) => {
        held = permit;
        const acquiredAt = wallClock();
        permit.lost.addEventListener("abort", () => (lostAt = wallClock()), { once: true });
        await emit("acquired", acquiredAt, { id: permit.id, token: permit.fencingToken });
        await holdFor(options.holdMs, permit.signal);
        // withPermit releases once this returns: now is "right before".
        releasingAt = wallClock();
      },
    );
    if (held?.released) {
      await emit("released", releasingAt ?? wallClock());
    } else {
      await emit("error", wallClock(), { kind: "Unavailable", detail: "the release was not confirmed; the lease runs out by itself" });
    }
  } catch (error) {
    if (error instanceof PermitLost) {
      await emit("lost", lostAt ?? wallClock(), { detail: error.message });
    } else if (isAbortError(error) && controller.signal.aborted) {
      await emit("cancelled", wallClock());
    } else {
      await emitError(error);
    }
  }
}

/**
 * What the command line asks for.
 * @typedef {{ url: string, semaphore: string, limit: number | undefined, ttlMs: number | undefined, waitMs: number, holdMs: number }} Options
 */

/** @param {string | undefined} value @param {string} name */
function integer(value, name) {
  if (value === undefined) return undefined;
  const number = Number(value);
  if (!Number.isInteger(number) || number < 0) {
    throw new Error(`--${name} must be a non-negative integer, not ${value}`);
  }
  return number;
}

async function main() {
  /** @type {string | undefined} */
  let operation;
  /** @type {Options} */
  let options;
  try {
    const { values, positionals } = parseArgs({
      allowPositionals: true,
      options: {
        url: { type: "string" },
        semaphore: { type: "string" },
        limit: { type: "string" },
        "ttl-ms": { type: "string" },
        "wait-ms": { type: "string" },
        "hold-ms": { type: "string" },
      },
    });
    operation = positionals[0];
    if (positionals.length !== 1 || !["check", "create", "hold"].includes(operation ?? "")) {
      throw new Error("one operation: check, create or hold");
    }
    if (values.url === undefined || values.semaphore === undefined) {
      throw new Error("--url and --semaphore are required");
    }
    options = {
      url: values.url,
      semaphore: values.semaphore,
      limit: integer(values.limit, "limit"),
      ttlMs: integer(values["ttl-ms"], "ttl-ms"),
      waitMs: integer(values["wait-ms"], "wait-ms") ?? 0,
      holdMs: integer(values["hold-ms"], "hold-ms") ?? 0,
    };
  } catch (error) {
    process.stderr.write(`conformance-adapter: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(64);
  }
  // Short request timeouts, as the harness expects of every adapter: its
  // bounds are the wait plus about 2 s.
  const client = new Client(options.url, { timeoutMs: 2000, onWarning: (message) => process.stderr.write(`permitd: ${message}\n`) });
  try {
    if (operation === "check") {
      await emit("ready", wallClock(), { ready: await client.ready() });
    } else if (operation === "create") {
      await client.semaphore(options.semaphore, { limit: options.limit }).create();
      await emit("created", wallClock());
    } else {
      await hold(client, options);
    }
  } catch (error) {
    await emitError(error);
  }
  await client.close();
  // Whatever the client still has scheduled (nothing should hold a lease
  // now), the events are out: exit as the protocol says.
  process.exit(0);
}

await main();
