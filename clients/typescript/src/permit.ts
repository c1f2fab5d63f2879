// A held permit: its fencing token and lease, the background refresh that
// keeps the lease alive, how a loss is noticed and signalled, and the release.
//
// The refresh runs a third of the lease after each confirmed refresh (at once
// after an acquire that waited longer than that, or a replayed one); a failed
// refresh is retried, at least every tenth of the lease. The permit is lost
// when a refresh answers 404, or when a lease has passed since the last
// confirmed answer (the grant, or a refresh) without another one: a timer
// aimed at that instant says so even while a refresh hangs. Its timers do not
// keep Node's event loop alive: a process with nothing else to do exits, and
// the lease then runs out by itself on the server.

import { abortError, onAbort } from "./abort.js";
import type { Connection } from "./connection.js";
import { AttemptAborted, NoAnswer } from "./connection.js";
import { type Answer, errorFromAnswer, PermitLost, problemOf, retryAfterOf } from "./errors.js";
import { type Grant, parseGrant } from "./models.js";
import { checkPositive, LeaseSchedule, now, permitPath } from "./protocol.js";

/**
 * `Symbol.asyncDispose`, or the registered symbol polyfills use on runtimes
 * without it (Node before 18.18 / 20.4), so `await using` works where it can.
 */
export const asyncDispose: typeof Symbol.asyncDispose =
  (Symbol as { asyncDispose?: typeof Symbol.asyncDispose }).asyncDispose ??
  (Symbol.for("Symbol.asyncDispose") as typeof Symbol.asyncDispose);

/** How a permit came to be: made by the acquire, not by users. */
export interface PermitInit {
  readonly grant: Grant;
  /** The lease asked for; the server's default (read off the grant) when undefined. */
  readonly ttlMs: number | undefined;
  /** Monotonic times the granting attempt was sent and its answer read. */
  readonly sentAt: number;
  readonly answeredAt: number;
  /** Answered 200: an earlier request was granted it, its lease may be nearly over. */
  readonly replayed: boolean;
  /** The acquire's signal: aborting it while held releases the permit. */
  readonly signal: AbortSignal | undefined;
  readonly keepAlive: boolean;
}

/** The state of a permit, from this client's point of view. */
export type PermitState = "held" | "releasing" | "released" | "lost";

/** A held permit. Release it (`release()`, `await using`, or `withPermit`). */
export class Permit implements AsyncDisposable {
  readonly #connection: Connection;
  readonly #keepAlive: boolean;
  readonly #schedule: LeaseSchedule;
  readonly #lost = new AbortController();
  readonly #stop = new AbortController();
  readonly #unsubscribe: () => void;
  #grant: Grant;
  #ttlMs: number;
  #lostError: PermitLost | undefined;
  #lossReported = false;
  #resolveLost: (error: PermitLost) => void = () => {};
  #releasing: Promise<void> | undefined;
  #releaseSettled = false;
  #released = false;
  #ended = false;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #deadlineTimer: ReturnType<typeof setTimeout> | undefined;
  #inFlight: AbortController | undefined;
  #lastFailure = "";

  /**
   * Resolves with the `PermitLost` once the lease is lost; never rejects, and
   * stays pending for a permit that is released.
   */
  readonly lostPromise: Promise<PermitLost>;

  /** @internal Permits are made by `acquire`. */
  constructor(connection: Connection, init: PermitInit) {
    this.#connection = connection;
    this.#grant = init.grant;
    this.#keepAlive = init.keepAlive;
    const granted = init.grant.expiresAt.getTime() - init.grant.acquiredAt.getTime();
    this.#ttlMs = init.ttlMs ?? granted;
    this.#schedule = new LeaseSchedule(this.#ttlMs, init.sentAt, init.answeredAt);
    if (init.replayed) {
      this.#schedule.refreshSoon(init.answeredAt);
    }
    this.lostPromise = new Promise((resolve) => {
      this.#resolveLost = resolve;
    });
    if (this.#keepAlive) {
      this.#armDeadline();
      this.#scheduleRefresh(this.#schedule.refreshAt);
    }
    this.#unsubscribe = onAbort(init.signal, () => this.#abortedByCaller(init.signal));
  }

  /** The permit id: the capability to refresh and release it. */
  get id(): string {
    return this.#grant.id;
  }

  /** The name of the semaphore it belongs to. */
  get semaphore(): string {
    return this.#grant.semaphore;
  }

  get count(): number {
    return this.#grant.count;
  }

  /** Strictly increasing per semaphore: pass it to systems that can refuse stale holders. */
  get fencingToken(): number {
    return this.#grant.fencingToken;
  }

  get acquiredAt(): Date {
    return this.#grant.acquiredAt;
  }

  /** When the lease runs out unless refreshed, as of the last confirmed refresh (store clock). */
  get expiresAt(): Date {
    return this.#grant.expiresAt;
  }

  get holder(): string | undefined {
    return this.#grant.holder;
  }

  /** The lease each refresh asks for, in ms. */
  get ttlMs(): number {
    return this.#ttlMs;
  }

  /** Aborts, with the `PermitLost` as its reason, when the lease is lost. */
  get lost(): AbortSignal {
    return this.#lost.signal;
  }

  /**
   * Aborts when the work under this permit should stop: the lease was lost
   * (reason: the `PermitLost`), or the acquire's signal aborted. Pass it on
   * to the work (`fetch(url, { signal: permit.signal })`).
   */
  get signal(): AbortSignal {
    return this.#stop.signal;
  }

  /** The `PermitLost` saying how the lease was lost, if it was. */
  get lostError(): PermitLost | undefined {
    return this.#lostError;
  }

  /** True once the server confirmed the release. */
  get released(): boolean {
    return this.#released;
  }

  get state(): PermitState {
    if (this.#lostError !== undefined) return "lost";
    if (this.#released) return "released";
    return this.#releasing === undefined ? "held" : "releasing";
  }

  /**
   * A new lease of `ttlMs` from now (default: the current lease length); a
   * new `ttlMs` also becomes the lease the background refresh renews.
   * Rejects with `PermitLost` when the server no longer has the permit.
   */
  async refresh(ttlMs?: number): Promise<void> {
    checkPositive("ttlMs", ttlMs);
    if (this.#lostError !== undefined) {
      throw this.#report(this.#lostError);
    }
    if (this.#releasing !== undefined) {
      throw new Error(`permit ${this.id} was released`);
    }
    const ttl = Math.round(ttlMs ?? this.#ttlMs);
    const sentAt = now();
    const { answer } = await this.#connection.call(`refresh of permit ${this.id}`, "PATCH", this.#path, {
      ttl_ms: ttl,
    });
    if (answer.status === 404) {
      throw this.#report(this.#lose("the server no longer has it (its lease ran out, or it was released)", answer));
    }
    if (answer.status !== 200) {
      throw errorFromAnswer(answer);
    }
    this.#renewed(answer, ttl, sentAt, now());
  }

  /**
   * Hands the units back and stops the refresh. Rejects with `PermitLost`
   * if the lease had already ended. Calls after the first share its outcome
   * while it runs and do nothing once it is over.
   */
  release(): Promise<void> {
    if (this.#releasing === undefined) {
      this.#releasing = this.#release().finally(() => {
        this.#releaseSettled = true;
      });
      return this.#releasing;
    }
    return this.#releaseSettled ? Promise.resolve() : this.#releasing;
  }

  /**
   * `await using permit = await sem.acquire(...)`: releases at the end of the
   * block, and throws `PermitLost` if the lease was lost and that was not
   * reported yet. A release that cannot get through is a warning, not an
   * error: the lease then runs out by itself.
   */
  async [asyncDispose](): Promise<void> {
    try {
      await this.release();
    } catch (error) {
      if (!(error instanceof PermitLost)) {
        this.#connection.warn(`could not release permit ${this.id} of "${this.semaphore}" (${String(error)}); its lease runs out by itself`);
      }
    }
    if (this.#lostError !== undefined && !this.#lossReported) {
      throw this.#report(this.#lostError);
    }
  }

  /** @internal Marks the loss as told to the caller (by a rejection), so dispose does not repeat it. */
  reportLoss(): PermitLost | undefined {
    return this.#lostError === undefined ? undefined : this.#report(this.#lostError);
  }

  get #path(): string {
    return permitPath(this.semaphore, this.id);
  }

  #report(error: PermitLost): PermitLost {
    this.#lossReported = true;
    return error;
  }

  async #release(): Promise<void> {
    this.#end();
    if (this.#lostError !== undefined) {
      throw this.#report(this.#lostError);
    }
    const { answer, ambiguous } = await this.#connection.call(`release of permit ${this.id}`, "DELETE", this.#path);
    if (answer.status === 204 || (answer.status === 404 && ambiguous)) {
      // A 404 after an attempt whose answer was lost: that attempt released it.
      this.#released = true;
      return;
    }
    if (answer.status === 404) {
      throw this.#report(this.#lose("its lease had run out before the release", answer));
    }
    throw errorFromAnswer(answer);
  }

  /** The caller's signal aborted while the permit is held: release it, whatever else happens. */
  #abortedByCaller(signal: AbortSignal | undefined): void {
    if (this.#ended) return;
    this.#stop.abort(abortError(signal, `holding permit ${this.id}`));
    // Tracked, so that Client.close() waits for it; not tied to the signal
    // that triggered it, or the release would be aborted as well.
    this.#connection.track(
      this.release().catch((error: unknown) => {
        if (!(error instanceof PermitLost)) throw error;
      }),
      `release of permit ${this.id} after an abort`,
    );
  }

  /** Stops every timer and the refresh in flight: the permit is being released, or lost. */
  #end(): void {
    this.#ended = true;
    clearTimeout(this.#refreshTimer);
    clearTimeout(this.#deadlineTimer);
    this.#inFlight?.abort();
    this.#unsubscribe?.();
  }

  #lose(reason: string, answer?: Answer): PermitLost {
    if (this.#lostError !== undefined) {
      return this.#lostError;
    }
    const error = new PermitLost(`permit ${this.id} of semaphore "${this.semaphore}" was lost: ${reason}`, {
      permitId: this.id,
      semaphore: this.semaphore,
      status: answer?.status,
      problem: answer === undefined ? undefined : problemOf(answer),
      requestId: answer?.headers.get("x-request-id") ?? undefined,
    });
    this.#lostError = error;
    this.#end();
    this.#resolveLost(error);
    this.#stop.abort(error);
    this.#lost.abort(error);
    return error;
  }

  #renewed(answer: Answer, ttlMs: number, sentAt: number, answeredAt: number): void {
    this.#grant = parseGrant(JSON.parse(answer.text));
    this.#ttlMs = ttlMs;
    this.#schedule.renewed(ttlMs, sentAt, answeredAt);
    this.#lastFailure = "";
    if (this.#keepAlive && !this.#ended) {
      this.#armDeadline();
      this.#scheduleRefresh(this.#schedule.refreshAt);
    }
  }

  #armDeadline(): void {
    clearTimeout(this.#deadlineTimer);
    const timer = setTimeout(() => {
      const last = this.#lastFailure === "" ? "no answer came in time" : `last attempt: ${this.#lastFailure}`;
      this.#lose(`no refresh got through before the lease ran out (${last})`);
    }, Math.max(0, this.#schedule.surelyOverAt - now()));
    timer.unref?.();
    this.#deadlineTimer = timer;
  }

  #scheduleRefresh(at: number): void {
    clearTimeout(this.#refreshTimer);
    const timer = setTimeout(() => void this.#refreshInBackground(), Math.max(0, at - now()));
    timer.unref?.();
    this.#refreshTimer = timer;
  }

  async #refreshInBackground(): Promise<void> {
    if (this.#ended) return;
    const sentAt = now();
    const overAt = this.#schedule.surelyOverAt;
    const ttl = this.#ttlMs;
    const inFlight = new AbortController();
    this.#inFlight = inFlight;
    let next: number;
    try {
      const answer = await this.#connection.send({
        method: "PATCH",
        path: this.#path,
        body: { ttl_ms: ttl },
        // No later than the lease's end: an answer after it could not save it.
        timeoutMs: Math.max(1, Math.min(this.#connection.timeoutMs, overAt - sentAt)),
        signal: inFlight.signal,
      });
      if (this.#ended) return;
      if (answer.status === 200) {
        this.#renewed(answer, ttl, sentAt, now());
        return;
      }
      if (answer.status === 404) {
        this.#lose("a refresh found it gone (its lease ran out, or it was released or its semaphore deleted)", answer);
        return;
      }
      // Others (503, or a 401 after a token was revoked) may pass; the
      // deadline timer bounds how long they may.
      this.#failed(errorFromAnswer(answer).message);
      next = this.#schedule.retryAt(now(), retryAfterOf(answer));
    } catch (error) {
      if (this.#ended || error instanceof AttemptAborted) return;
      this.#failed(error instanceof NoAnswer ? error.description : String(error));
      next = this.#schedule.retryAt(now());
    } finally {
      if (this.#inFlight === inFlight) this.#inFlight = undefined;
    }
    this.#scheduleRefresh(next);
  }

  #failed(failure: string): void {
    this.#lastFailure = failure;
    this.#connection.warn(`refresh of permit ${this.id} failed (${failure}); retrying`);
  }
}
