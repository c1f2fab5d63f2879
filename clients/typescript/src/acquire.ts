// Acquiring a permit, and holding one for the length of a callback.
//
// `acquirePermit` is the acquire loop: long polls of at most the server's
// maximum wait, retries of transient failures with one Idempotency-Key, and
// the AbortSignal, which cancels the wait and makes sure that no permit stays
// held: a grant that races the abort is released before the acquire rejects.
// `holdPermit` runs a callback under a permit and releases it at the end,
// whatever happens.

import { randomUUID } from "node:crypto";
import { abortError, isAbortError, onAbort, sleep } from "./abort.js";
import { AttemptAborted, type Connection, NoAnswer } from "./connection.js";
import { PermitLost } from "./errors.js";
import { Permit } from "./permit.js";
import { acquireBody, AcquirePlan, checkPositive, now, permitPath, semaphorePath } from "./protocol.js";

/** How to acquire a permit. Every duration is in milliseconds. */
export interface AcquireOptions {
  /** The lease; the server's default (30 s unless configured) when not given. */
  ttlMs?: number | undefined;
  /** How long to wait for capacity; 0 (the default) tries once. */
  waitMs?: number | undefined;
  /** A label shown in the semaphore's status and in permitd's logs. */
  holder?: string | undefined;
  /** Units to take at once, all or nothing (default 1). */
  count?: number | undefined;
  /** Sent with every attempt of this acquire; a fresh UUID when not given. */
  idempotencyKey?: string | undefined;
  /**
   * Bound on retrying transient failures, on top of `waitMs` (default: the
   * client's `timeoutMs`): the acquire settles within `waitMs + timeoutMs`.
   */
  timeoutMs?: number | undefined;
  /**
   * Aborting it while waiting rejects the acquire with an AbortError (no
   * permit stays held); aborting it while the permit is held releases it.
   */
  signal?: AbortSignal | undefined;
  /** Refresh the lease in the background until released (default true). */
  keepAlive?: boolean | undefined;
}

/** Acquires a permit of semaphore `name` (created with `limit` if given and missing). */
export async function acquirePermit(
  connection: Connection,
  name: string,
  limit: number | undefined,
  options: AcquireOptions,
): Promise<Permit> {
  const { signal } = options;
  const waitMs = options.waitMs ?? 0;
  if (!(Number.isFinite(waitMs) && waitMs >= 0)) {
    throw new RangeError(`waitMs must not be negative, not ${waitMs}`);
  }
  checkPositive("timeoutMs", options.timeoutMs);
  const ttlMs = options.ttlMs;
  const body = acquireBody({ limit, count: options.count, ttlMs, holder: options.holder });
  const key = options.idempotencyKey ?? randomUUID();
  const what = `acquire on semaphore "${name}"`;
  if (signal?.aborted) {
    throw abortError(signal, what);
  }
  const plan = new AcquirePlan({
    semaphore: name,
    body,
    waitMs,
    timeoutMs: options.timeoutMs ?? connection.timeoutMs,
    maxWaitMs: connection.maxWaitMs,
    at: now(),
  });
  const path = semaphorePath(name) + "/permits";
  for (;;) {
    const sentAt = now();
    const attempt = plan.nextRequest(sentAt);
    let delay: number;
    try {
      const answer = await connection.send({
        method: "POST",
        path,
        body: attempt.body,
        headers: { "idempotency-key": key },
        timeoutMs: attempt.timeoutMs,
        signal,
      });
      const answeredAt = now();
      const result = plan.answered(answer, answeredAt);
      if (typeof result !== "number") {
        const permit = new Permit(connection, {
          grant: result,
          ttlMs: ttlMs === undefined ? undefined : Math.round(ttlMs),
          sentAt,
          answeredAt,
          replayed: answer.status === 200,
          signal,
          keepAlive: options.keepAlive ?? true,
        });
        if (signal?.aborted) {
          // Granted as the caller gave up: the permit saw the aborted signal
          // and is releasing itself; wait for that, so nothing stays held.
          await permit.release().catch(() => {});
          throw abortError(signal, what);
        }
        return permit;
      }
      delay = result;
    } catch (error) {
      if (error instanceof AttemptAborted) {
        await releaseAbandoned(connection, name, error);
        throw abortError(signal, what);
      }
      if (signal?.aborted && !isAbortError(error)) {
        throw abortError(signal, what);
      }
      if (!(error instanceof NoAnswer)) throw error;
      delay = plan.failed(error, now());
    }
    await sleep(delay, signal, what);
  }
}

/**
 * An acquire aborted while its answer's body was read: if the headers said
 * granted, the permit is named by `Location` and is released here (shielded
 * from the abort), since nobody will hold it.
 */
async function releaseAbandoned(connection: Connection, name: string, aborted: AttemptAborted): Promise<void> {
  if ((aborted.status !== 200 && aborted.status !== 201) || aborted.location === undefined) {
    return;
  }
  const id = decodeURIComponent(aborted.location.split("/").pop() ?? "");
  try {
    await connection.call(`release of abandoned permit ${id}`, "DELETE", permitPath(name, id));
  } catch (error) {
    connection.warn(`could not release permit ${id} granted as its acquire was aborted (${String(error)}); its lease runs out by itself`);
  }
}

/** The callback `withPermit` runs while holding the permit. */
export type PermitWork<T> = (permit: Permit) => T | PromiseLike<T>;

type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

/**
 * Runs `work` under a permit from `acquire`, and releases it at the end.
 *
 * Resolves with what `work` resolved with. Rejects with `PermitLost` if the
 * lease was lost before the release (what `work` threw as well, if anything
 * else, is its `workError`), else with what `work` threw. If `signal` aborts
 * while `work` runs, the permit is released at once and this rejects with an
 * AbortError without waiting for `work`, which should watch `permit.signal`.
 */
export async function holdPermit<T>(
  connection: Connection,
  acquire: () => Promise<Permit>,
  signal: AbortSignal | undefined,
  work: PermitWork<T>,
): Promise<T> {
  const permit = await acquire();
  let settled: Promise<Outcome<T>>;
  try {
    settled = Promise.resolve(work(permit)).then(
      (value): Outcome<T> => ({ ok: true, value }),
      (error: unknown): Outcome<T> => ({ ok: false, error }),
    );
  } catch (error) {
    settled = Promise.resolve({ ok: false, error });
  }
  let unsubscribe = (): void => {};
  const aborted = new Promise<"aborted">((resolve) => {
    unsubscribe = onAbort(signal, () => resolve("aborted"));
  });
  const first = await Promise.race([settled, aborted]);
  unsubscribe();
  if (first === "aborted") {
    // The permit's own listener has started the release; wait for it.
    await permit.release().catch(() => {});
    throw abortError(signal, `withPermit on semaphore "${permit.semaphore}"`);
  }
  try {
    await permit.release();
  } catch (error) {
    if (!(error instanceof PermitLost)) {
      connection.warn(`could not release permit ${permit.id} of "${permit.semaphore}" (${String(error)}); its lease runs out by itself`);
    }
  }
  const lost = permit.reportLoss();
  if (lost !== undefined) {
    if (!first.ok && !isTheLoss(first.error, lost)) {
      lost.workError = first.error;
    }
    throw lost;
  }
  if (!first.ok) {
    throw first.error;
  }
  return first.value;
}

/** Whether `error` is the loss itself, or an abort caused by it (work that watched `permit.signal`). */
function isTheLoss(error: unknown, lost: PermitLost): boolean {
  return error === lost || (isAbortError(error) && (error as { cause?: unknown }).cause === lost);
}
