// The errors this client rejects with, and the mapping from permitd's answers to them.
//
// Every class extends `PermitdError`, so one `instanceof` catches them all; each
// names one thing that happened, so callers catch what they can act on. The
// server refuses with `application/problem+json` (RFC 9457): `errorFromAnswer`
// picks the class by status and problem `type`, and every error keeps the
// problem body and the `x-request-id` the server logged the request under.
// Aborting through an `AbortSignal` is not one of these: it rejects with the
// platform's `AbortError`, as `fetch` does.

export const PROBLEM_PREFIX = "urn:permitd:problem:";

/** A problem+json body (RFC 9457): `type`, `title`, `status`, `detail`, plus extra members. */
export type Problem = Readonly<Record<string, unknown>>;

/** What every error carries besides its message. */
export interface ErrorDetails {
  /** The HTTP status, when the server answered. */
  status?: number | undefined;
  /** The problem body the server sent (empty when there was none). */
  problem?: Problem | undefined;
  /** The server's `x-request-id` of the request, to quote in bug reports. */
  requestId?: string | undefined;
  /** What caused this error (a connection error, say). */
  cause?: unknown;
}

/** Base of every error this client rejects with. */
export class PermitdError extends Error {
  /** The HTTP status, or undefined when permitd could not be reached. */
  readonly status: number | undefined;
  /** The problem+json body; `{}` when there was none. */
  readonly problem: Problem;
  /** The server's id of the request (`x-request-id`), if it answered. */
  readonly requestId: string | undefined;

  constructor(message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.status = details.status;
    this.problem = details.problem ?? {};
    this.requestId = details.requestId;
  }

  /** The problem `type`, e.g. `urn:permitd:problem:no-capacity`. */
  get type(): string | undefined {
    return stringMember(this.problem, "type");
  }

  /** The server's explanation of this occurrence, if it gave one. */
  get detail(): string | undefined {
    return stringMember(this.problem, "detail");
  }

  protected intMember(name: string): number | undefined {
    const value = this.problem[name];
    return typeof value === "number" && Number.isInteger(value) ? value : undefined;
  }
}

/** 400: a value is outside its bound (a `waitMs` above the server's maximum, say). */
export class InvalidRequest extends PermitdError {}

/** 401: the server wants a bearer token, and none or a wrong one was sent. */
export class Unauthorized extends PermitdError {}

/** 403: the token is valid but lacks the scope this call needs. */
export class Forbidden extends PermitdError {}

/** 404: no such semaphore (an acquire without a limit, status, delete). */
export class NotFound extends PermitdError {}

/** 409: the request conflicts with the semaphore's state. */
export class Conflict extends PermitdError {}

/**
 * 409: the semaphore exists with another limit; `limit` is the current one.
 * Two clients that disagree about a limit never silently share a semaphore.
 */
export class LimitConflict extends Conflict {
  get limit(): number | undefined {
    return this.intMember("limit");
  }
}

/** 409: `count` is above the limit, so the acquire could never succeed. */
export class CountExceedsLimit extends Conflict {
  get limit(): number | undefined {
    return this.intMember("limit");
  }
}

/** 422 (or 409 `idempotency-key-reused`): the key was used with another body; a bug, not a retry. */
export class IdempotencyMismatch extends PermitdError {}

/**
 * 410: a retried acquire whose permit was granted and has ended since. The
 * server never grants a second permit for one key; acquire anew if you want one.
 */
export class PermitEnded extends PermitdError {}

/** Details of the refusals that may say when to try again. */
export interface RetryDetails extends ErrorDetails {
  retryAfterMs?: number | undefined;
}

/**
 * 429: not enough units came free within the wait. `retryAfterMs` is the
 * server's hint (when the soonest lease runs out); `limit`, `held`,
 * `available` describe the semaphore when it refused.
 */
export class NoCapacity extends PermitdError {
  /** Milliseconds, from the problem body's `retry_after_ms` or else `Retry-After`. */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, details: RetryDetails = {}) {
    super(message, details);
    this.retryAfterMs = details.retryAfterMs;
  }

  get limit(): number | undefined {
    return this.intMember("limit");
  }

  get held(): number | undefined {
    return this.intMember("held");
  }

  get available(): number | undefined {
    return this.intMember("available");
  }
}

/**
 * permitd could not serve the call within the time allowed, after the retries:
 * it answered 503 (its store is unreachable; 502 and 504 from a proxy count
 * too), or it could not be reached at all (`status` undefined, `cause` the
 * connection error).
 */
export class Unavailable extends PermitdError {
  /** Milliseconds, from the last answer's `Retry-After`, if it had one. */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, details: RetryDetails = {}) {
    super(message, details);
    this.retryAfterMs = details.retryAfterMs;
  }
}

/** Details of a lost permit. */
export interface LostDetails extends ErrorDetails {
  permitId: string;
  semaphore: string;
}

/**
 * The permit's lease ended while it was meant to be held: a refresh or the
 * release found it gone (404: it expired, or someone released it or deleted
 * the semaphore), or no refresh got through before the lease surely ran out.
 * Work done after that was not protected by the semaphore.
 */
export class PermitLost extends PermitdError {
  readonly permitId: string;
  readonly semaphore: string;
  /**
   * What the `withPermit` callback rejected with, when it rejected too: the
   * loss is reported first, since the work may have run unprotected.
   */
  workError?: unknown;

  constructor(message: string, details: LostDetails) {
    super(message, details);
    this.permitId = details.permitId;
    this.semaphore = details.semaphore;
  }
}

/** Any other refusal (405, 413, 500, ...), with the problem body as sent. */
export class ProblemError extends PermitdError {}

// Statuses that mean "try again shortly": permitd's own 503, and what a proxy
// or load balancer in front of it answers while it restarts.
export const TRANSIENT_STATUSES: ReadonlySet<number> = new Set([502, 503, 504]);

/** An answer as the mapping needs it: read whole, so no stream is left open. */
export interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
}

function stringMember(problem: Problem, name: string): string | undefined {
  const value = problem[name];
  return typeof value === "string" ? value : undefined;
}

/** The problem body of an answer, or a stand-in keeping some of its text (proxies send HTML). */
export function problemOf(answer: Answer): Problem {
  try {
    const body: unknown = JSON.parse(answer.text);
    if (typeof body === "object" && body !== null && !Array.isArray(body)) {
      return body as Problem;
    }
  } catch {
    // not JSON: fall through to the stand-in
  }
  return { status: answer.status, detail: answer.text.slice(0, 200) };
}

/**
 * How long the server asks us to wait, in milliseconds: a `retry_after_ms`
 * member of the problem if there is one (finer), else `Retry-After`, which
 * permitd sends in whole seconds and RFC 9110 also allows as a date.
 */
export function retryAfterOf(answer: Answer, problem: Problem = problemOf(answer)): number | undefined {
  const member = problem["retry_after_ms"];
  if (typeof member === "number" && Number.isFinite(member) && member >= 0) {
    return member;
  }
  const header = answer.headers.get("retry-after")?.trim();
  if (header === undefined || header === "") {
    return undefined;
  }
  if (/^\d+$/.test(header)) {
    return Number(header) * 1000;
  }
  const when = Date.parse(header);
  return Number.isNaN(when) ? undefined : Math.max(0, when - Date.now());
}

/**
 * A 409 about an Idempotency-Key whose first request is still being handled:
 * retried like a 503. The other idempotency 409, `idempotency-key-reused`
 * (another body), is a client bug and is not.
 */
export function isIdempotencyInProgress(answer: Answer, problem: Problem): boolean {
  const kind = problem["type"];
  return (
    answer.status === 409 &&
    typeof kind === "string" &&
    kind.includes("idempotency") &&
    kind !== PROBLEM_PREFIX + "idempotency-key-reused"
  );
}

type ErrorClass = new (message: string, details: ErrorDetails) => PermitdError;

const BY_STATUS: ReadonlyMap<number, ErrorClass> = new Map<number, ErrorClass>([
  [400, InvalidRequest],
  [401, Unauthorized],
  [403, Forbidden],
  [404, NotFound],
  [410, PermitEnded],
  [422, IdempotencyMismatch],
]);

const CONFLICTS: ReadonlyMap<string, ErrorClass> = new Map<string, ErrorClass>([
  [PROBLEM_PREFIX + "limit-conflict", LimitConflict],
  [PROBLEM_PREFIX + "count-exceeds-limit", CountExceedsLimit],
  [PROBLEM_PREFIX + "idempotency-key-reused", IdempotencyMismatch],
]);

/** The error for a refusal: by status, and by problem `type` for a 409. */
export function errorFromAnswer(answer: Answer): PermitdError {
  const problem = problemOf(answer);
  const status = answer.status;
  const parts = [problem["title"], problem["detail"]].filter(
    (part): part is string => typeof part === "string" && part !== "",
  );
  let message = parts.length > 0 ? parts.join(": ") : `permitd answered ${status}`;
  const details: ErrorDetails = {
    status,
    problem,
    requestId: answer.headers.get("x-request-id") ?? undefined,
  };
  if (status === 429) {
    const retryAfterMs = retryAfterOf(answer, problem);
    if (retryAfterMs !== undefined) {
      message += ` (retry after ${retryAfterMs} ms)`;
    }
    return new NoCapacity(message, { ...details, retryAfterMs });
  }
  if (TRANSIENT_STATUSES.has(status)) {
    return new Unavailable(message, { ...details, retryAfterMs: retryAfterOf(answer, problem) });
  }
  if (status === 409) {
    const kind = problem["type"];
    const Class = (typeof kind === "string" && CONFLICTS.get(kind)) || Conflict;
    return new Class(message, details);
  }
  const Class = BY_STATUS.get(status) ?? ProblemError;
  return new Class(message, details);
}
