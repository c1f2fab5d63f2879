// permitd: the TypeScript client of permitd, the distributed counting
// semaphore served over HTTP. Node 18 or later; no dependencies.
//
//   const client = new Client("http://127.0.0.1:8080");
//   await client.withPermit("payments", { limit: 5, ttlMs: 30_000, waitMs: 10_000 }, async (permit) => {
//     await callApi({ fencingToken: permit.fencingToken, signal: permit.signal });
//   });
//
// The layers, each using only those below it:
//   client.ts      Client: settings, semaphore handles, ready(), close()
//   semaphore.ts   Semaphore: acquire, withPermit, status, create, setLimit, delete
//   acquire.ts     the acquire loop (polls, retries, aborts) and withPermit's hold
//   permit.ts      Permit: background refresh, loss, release, await using
//   connection.ts  one HTTP attempt and retried calls, background releases
//   protocol.ts    the decisions without I/O: polls, backoff, budgets, lease times
//   models.ts      the answers as typed values; errors.ts the error classes

export { Client, type ClientOptions, type AcquireByNameOptions } from "./client.js";
export { Semaphore, type SemaphoreOptions, type StatusOptions } from "./semaphore.js";
export { Permit, type PermitState, asyncDispose } from "./permit.js";
export type { AcquireOptions, PermitWork } from "./acquire.js";
export type { Grant, Holder, SemaphoreStatus } from "./models.js";
export {
  PermitdError,
  InvalidRequest,
  Unauthorized,
  Forbidden,
  NotFound,
  Conflict,
  LimitConflict,
  CountExceedsLimit,
  IdempotencyMismatch,
  PermitEnded,
  NoCapacity,
  Unavailable,
  PermitLost,
  ProblemError,
  PROBLEM_PREFIX,
  type ErrorDetails,
  type Problem,
} from "./errors.js";
