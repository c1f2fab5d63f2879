// The client's decisions, without I/O: paths, the acquire's body and its long
// polls, which failures are retried and after how long, and when a held lease
// is due for a refresh or surely over.
//
// Everything here is a plain object fed with the monotonic time (ms, from
// `performance.now()`) and each answer, so the sending code in `connection`,
// `acquire` and `permit` stays a thin loop around it, and the arithmetic can
// be read (and checked) on its own.

import {
  type Answer,
  errorFromAnswer,
  isIdempotencyInProgress,
  PermitdError,
  problemOf,
  retryAfterOf,
  TRANSIENT_STATUSES,
  Unavailable,
} from "./errors.js";
import { parseGrant, type Grant } from "./models.js";

/** Milliseconds on a clock that never jumps (unlike `Date.now()`). */
export const now = (): number => performance.now();

export function semaphorePath(name: string): string {
  return "/semaphores/" + encodeURIComponent(name);
}

export function permitPath(name: string, permitId: string): string {
  return `${semaphorePath(name)}/permits/${encodeURIComponent(permitId)}`;
}

/** Why an attempt got no answer; `maybeSent` says whether the server may have acted on it. */
export interface Failure {
  readonly description: string;
  readonly maybeSent: boolean;
  readonly cause: unknown;
}

/**
 * Delays between retries: exponential with jitter, never below the server's
 * `Retry-After`. Jitter keeps many clients that lost the same server from
 * retrying in lockstep when it returns.
 */
export class Backoff {
  #attempt = 0;

  constructor(
    private readonly firstMs = 50,
    private readonly capMs = 2000,
    private readonly random: () => number = Math.random,
  ) {}

  next(retryAfterMs?: number): number {
    const ceiling = Math.min(this.capMs, this.firstMs * 2 ** this.#attempt);
    this.#attempt += 1;
    const delay = ceiling * (0.5 + 0.5 * this.random());
    return Math.max(delay, retryAfterMs ?? 0);
  }

  reset(): void {
    this.#attempt = 0;
  }
}

/** The time one operation may take, retries included, and what it has seen. */
class Budget {
  attempts = 0;
  /** Some attempt may have been carried out although its answer was lost. */
  ambiguous = false;

  constructor(
    readonly what: string,
    readonly started: number,
    readonly deadline: number,
  ) {}

  /** Whether a retry after `delay` would still start before the deadline. */
  fits(delay: number, at: number): boolean {
    return at + delay < this.deadline;
  }

  /** `delay`, or the `Unavailable` to reject with when a retry would not fit. */
  retryIn(delay: number, at: number, reason: string, cause?: PermitdError | Failure): number {
    if (this.fits(delay, at)) {
      return delay;
    }
    throw this.giveUp(reason, at, cause);
  }

  giveUp(reason: string, at: number, cause?: PermitdError | Failure): Unavailable {
    const seconds = ((at - this.started) / 1000).toFixed(1);
    const plural = this.attempts === 1 ? "" : "s";
    const message = `${this.what}: ${reason}; gave up after ${this.attempts} attempt${plural} in ${seconds} s`;
    if (cause instanceof PermitdError) {
      return new Unavailable(message, {
        status: cause.status,
        problem: cause.problem,
        requestId: cause.requestId,
        retryAfterMs: cause instanceof Unavailable ? cause.retryAfterMs : undefined,
      });
    }
    return new Unavailable(message, { cause: cause?.cause });
  }
}

/**
 * One call other than an acquire, retried on transient failures (no answer,
 * 502/503/504) within `timeoutMs`. `answered` hands back the final answer for
 * the caller to read, or the delay before the next attempt; `failed` does the
 * same for an attempt without an answer. Both throw `Unavailable` once the
 * budget would run out.
 */
export class CallPlan {
  readonly #budget: Budget;
  readonly #backoff = new Backoff();

  constructor(what: string, timeoutMs: number, at: number) {
    this.#budget = new Budget(what, at, at + timeoutMs);
  }

  /** An earlier attempt may have taken effect although its answer was lost. */
  get ambiguous(): boolean {
    return this.#budget.ambiguous;
  }

  /** How long the next attempt may take (the rest of the budget). */
  attemptTimeout(at: number): number {
    this.#budget.attempts += 1;
    return Math.max(this.#budget.deadline - at, 1);
  }

  answered(answer: Answer, at: number): Answer | number {
    if (!TRANSIENT_STATUSES.has(answer.status)) {
      return answer;
    }
    this.#budget.ambiguous = true;
    const error = errorFromAnswer(answer);
    return this.#budget.retryIn(this.#backoff.next(retryAfterOf(answer)), at, error.message, error);
  }

  failed(failure: Failure, at: number): number {
    this.#budget.ambiguous ||= failure.maybeSent;
    return this.#budget.retryIn(this.#backoff.next(), at, failure.description, failure);
  }
}

// A long poll that came back this much sooner than it asked to wait was not
// a wait that ran out (the server refused early); polling again at once could
// spin, so such a poll is followed by a backoff delay instead.
const EARLY_POLL_FRACTION = 0.5;

/** The body of an acquire, fixed for all its attempts but `wait_ms`. */
export type AcquireBody = Readonly<Record<string, number | string>>;

/**
 * One acquire: its long polls, its retries, and the key that makes them safe.
 *
 * The body is the same for every attempt except `wait_ms`, because the server
 * replays a permit for a retried Idempotency-Key only when the rest is the
 * same. The caller's wait is served by polls of at most `maxWaitMs` each (the
 * server refuses longer ones); between polls the acquire loses its place in
 * the server's first-come-first-served queue. Transient failures (no answer,
 * 502/503/504, a 409 for a key whose first request still runs) are retried
 * with the same key until `wait + timeout` has passed, so a retry never takes
 * a second permit.
 */
export class AcquirePlan {
  readonly #body: AcquireBody;
  readonly #timeoutMs: number;
  readonly #maxWaitMs: number;
  readonly #waitUntil: number;
  readonly #budget: Budget;
  readonly #backoff = new Backoff();
  #pollStarted: number;
  #pollWaitMs = 0;

  constructor(options: {
    semaphore: string;
    body: AcquireBody;
    waitMs: number;
    timeoutMs: number;
    maxWaitMs: number;
    at: number;
  }) {
    this.#body = options.body;
    this.#timeoutMs = options.timeoutMs;
    this.#maxWaitMs = options.maxWaitMs;
    this.#waitUntil = options.at + options.waitMs;
    this.#budget = new Budget(
      `acquire on semaphore ${JSON.stringify(options.semaphore)}`,
      options.at,
      this.#waitUntil + options.timeoutMs,
    );
    this.#pollStarted = options.at;
  }

  /** The body of the next attempt and how long to let it take. */
  nextRequest(at: number): { body: AcquireBody; timeoutMs: number } {
    // Rounded down, so a poll never asks for more than the server allows.
    const waitMs = Math.floor(Math.max(0, Math.min(this.#waitUntil - at, this.#maxWaitMs)));
    this.#budget.attempts += 1;
    this.#pollStarted = at;
    this.#pollWaitMs = waitMs;
    const timeoutMs = Math.min(waitMs + this.#timeoutMs, this.#budget.deadline - at);
    return { body: { ...this.#body, wait_ms: waitMs }, timeoutMs: Math.max(timeoutMs, 1) };
  }

  /** The permit, or the delay before the next attempt; throws for a final refusal. */
  answered(answer: Answer, at: number): Grant | number {
    const status = answer.status;
    if (status === 200 || status === 201) {
      // 200 is a replay: an earlier attempt of this acquire got the permit.
      return parseGrant(JSON.parse(answer.text));
    }
    const problem = problemOf(answer);
    if (status === 429) {
      const error = errorFromAnswer(answer);
      if (this.#waitUntil - at < 1) {
        throw error;
      }
      if (at - this.#pollStarted >= this.#pollWaitMs * EARLY_POLL_FRACTION) {
        return 0; // the poll ran its course: poll again for the rest of the wait
      }
      const delay = this.#backoff.next();
      if (!this.#budget.fits(delay, at)) {
        // Out of time while the server kept refusing for capacity: the
        // caller learns that (NoCapacity), not of an outage.
        throw error;
      }
      return delay;
    }
    if (TRANSIENT_STATUSES.has(status) || isIdempotencyInProgress(answer, problem)) {
      const error = errorFromAnswer(answer);
      const delay = this.#backoff.next(retryAfterOf(answer, problem));
      return this.#budget.retryIn(delay, at, error.message, error);
    }
    throw errorFromAnswer(answer);
  }

  /** The delay before retrying after an attempt without an answer. */
  failed(failure: Failure, at: number): number {
    return this.#budget.retryIn(this.#backoff.next(), at, failure.description, failure);
  }
}

/**
 * When a held lease is due for a refresh, and when it is surely over.
 *
 * Times are on the local monotonic clock, so they do not depend on the
 * server's clock agreeing with ours. The server starts a lease somewhere
 * between our sending the request and our reading its answer. A refresh is
 * due a third of the lease after the request was *sent* (the earliest the
 * lease can have started), which leaves two thirds for retries when one
 * fails; after an acquire that waited longer than that, it is due at once.
 * The lease is surely over a lease after the answer *arrived*, the latest it
 * can have started: counting from the sending of a long poll instead would
 * report a permit granted after a long wait as lost the moment it arrives.
 */
export class LeaseSchedule {
  #leaseMs: number;
  #sentAt: number;
  #answeredAt: number;
  #dueAt: number | undefined;
  readonly #backoff = new Backoff();

  constructor(leaseMs: number, sentAt: number, answeredAt: number) {
    this.#leaseMs = leaseMs;
    this.#sentAt = sentAt;
    this.#answeredAt = answeredAt;
  }

  get leaseMs(): number {
    return this.#leaseMs;
  }

  /** A refresh was confirmed: the lease `leaseMs` runs again. */
  renewed(leaseMs: number, sentAt: number, answeredAt: number): void {
    this.#leaseMs = leaseMs;
    this.#sentAt = sentAt;
    this.#answeredAt = answeredAt;
    this.#dueAt = undefined;
    this.#backoff.reset();
  }

  /** Makes a refresh due at `at`: for a lease whose start is unknown (a replayed permit). */
  refreshSoon(at: number): void {
    this.#dueAt = at;
  }

  get refreshAt(): number {
    return this.#dueAt ?? this.#sentAt + this.#leaseMs / 3;
  }

  get surelyOverAt(): number {
    return this.#answeredAt + this.#leaseMs;
  }

  /** When to try again after a failed refresh: backoff, at least every tenth of the lease. */
  retryAt(at: number, retryAfterMs?: number): number {
    return at + Math.min(this.#backoff.next(retryAfterMs), this.#leaseMs / 10);
  }
}

/** Checks the positive integer options in milliseconds or counts. */
export function checkPositive(name: string, value: number | undefined): void {
  if (value !== undefined && !(Number.isFinite(value) && value > 0)) {
    throw new RangeError(`${name} must be a positive number, not ${value}`);
  }
}

/** The acquire body (without `wait_ms`, which each poll sets). */
export function acquireBody(options: {
  limit: number | undefined;
  count: number | undefined;
  ttlMs: number | undefined;
  holder: string | undefined;
}): AcquireBody {
  checkPositive("count", options.count);
  checkPositive("ttlMs", options.ttlMs);
  const body: Record<string, number | string> = { count: options.count ?? 1 };
  if (options.limit !== undefined) body["limit"] = options.limit;
  if (options.ttlMs !== undefined) body["ttl_ms"] = Math.round(options.ttlMs);
  if (options.holder) body["holder"] = options.holder;
  return body;
}
