// One semaphore of a client: acquire its permits, hold one for a callback,
// and read, create, change or delete it.

import { acquirePermit, type AcquireOptions, holdPermit, type PermitWork } from "./acquire.js";
import type { Connection } from "./connection.js";
import { errorFromAnswer, LimitConflict, NotFound, PROBLEM_PREFIX } from "./errors.js";
import { parseStatus, type SemaphoreStatus } from "./models.js";
import type { Permit } from "./permit.js";
import { semaphorePath } from "./protocol.js";

/** Options of a semaphore handle. */
export interface SemaphoreOptions {
  /**
   * With a limit, acquires create the semaphore when it does not exist and
   * refuse (`LimitConflict`) when it exists with another limit.
   */
  limit?: number | undefined;
}

/** Options of a status read. */
export interface StatusOptions {
  /** Ask for the holders' permit ids too (admin tokens only, or no tokens configured). */
  includeIds?: boolean | undefined;
}

export class Semaphore {
  readonly #connection: Connection;
  readonly name: string;
  #limit: number | undefined;

  /** @internal Made by `Client.semaphore`. */
  constructor(connection: Connection, name: string, options: SemaphoreOptions = {}) {
    if (options.limit !== undefined && !(Number.isInteger(options.limit) && options.limit > 0)) {
      throw new RangeError(`limit must be a positive integer, not ${options.limit}`);
    }
    this.#connection = connection;
    this.name = name;
    this.#limit = options.limit;
  }

  /** The limit acquires create the semaphore with (and insist on), if any. */
  get limit(): number | undefined {
    return this.#limit;
  }

  /**
   * Asks for a permit (see `AcquireOptions`). The permit refreshes its lease
   * in the background until released: release it with `permit.release()`,
   * or hold it with `await using` or `withPermit`.
   *
   * Rejects with `NoCapacity` when the wait ends, `LimitConflict`,
   * `CountExceedsLimit`, `NotFound` (no such semaphore and no limit),
   * `Unavailable`, `PermitEnded`, `IdempotencyMismatch`, `Unauthorized`,
   * `Forbidden`, `InvalidRequest`, or an AbortError.
   */
  acquire(options: AcquireOptions = {}): Promise<Permit> {
    return acquirePermit(this.#connection, this.name, this.#limit, options);
  }

  /**
   * Acquires, runs `work(permit)`, and releases the permit at the end,
   * whatever happens. Resolves with what `work` resolved with; rejects with
   * `PermitLost` if the lease was lost meanwhile (watch `permit.signal` to
   * stop early), with what `work` threw, or with an AbortError when
   * `options.signal` aborts (then the permit is released at once).
   */
  withPermit<T>(options: AcquireOptions, work: PermitWork<T>): Promise<T> {
    return holdPermit(this.#connection, () => this.acquire(options), options.signal, work);
  }

  /** Limit, held, available, waiting and the live holders. `NotFound` if there is none. */
  async status(options: StatusOptions = {}): Promise<SemaphoreStatus> {
    const query = options.includeIds ? "?include=ids" : "";
    const { answer } = await this.#connection.call(
      `status of semaphore "${this.name}"`,
      "GET",
      semaphorePath(this.name) + query,
    );
    if (answer.status !== 200) {
      throw errorFromAnswer(answer);
    }
    return parseStatus(JSON.parse(answer.text));
  }

  /**
   * Makes sure the semaphore exists with this handle's limit: an existing one
   * with the same limit is shared as it is, one with another limit is a
   * `LimitConflict` naming the current limit (never silently changed; use
   * `setLimit` for that). permitd has no create-only call, so this reads,
   * then creates: two creators racing with different limits in that gap
   * leave the later one's limit. An acquire with a limit checks atomically.
   */
  async create(): Promise<SemaphoreStatus> {
    const limit = this.#limit;
    if (limit === undefined) {
      throw new TypeError(`create() needs a limit: client.semaphore("${this.name}", { limit })`);
    }
    let current: SemaphoreStatus;
    try {
      current = await this.status();
    } catch (error) {
      if (error instanceof NotFound) {
        return this.setLimit(limit);
      }
      throw error;
    }
    if (current.limit !== limit) {
      throw new LimitConflict(`semaphore "${this.name}" exists with limit ${current.limit}, not ${limit}`, {
        problem: {
          type: PROBLEM_PREFIX + "limit-conflict",
          title: "Semaphore exists with another limit",
          limit: current.limit,
        },
      });
    }
    return current;
  }

  /**
   * Creates the semaphore with `limit`, or changes its limit to it. Lowering
   * never revokes held permits. This handle's later acquires use the new limit.
   */
  async setLimit(limit: number): Promise<SemaphoreStatus> {
    const { answer } = await this.#connection.call(
      `set limit of semaphore "${this.name}"`,
      "PUT",
      semaphorePath(this.name),
      { limit },
    );
    if (answer.status !== 200 && answer.status !== 201) {
      throw errorFromAnswer(answer);
    }
    this.#limit = limit;
    return parseStatus(JSON.parse(answer.text));
  }

  /** Removes the semaphore and every permit of it. `NotFound` if there is none. */
  async delete(): Promise<void> {
    const { answer, ambiguous } = await this.#connection.call(
      `delete of semaphore "${this.name}"`,
      "DELETE",
      semaphorePath(this.name),
    );
    // A 404 after an attempt whose answer was lost: that attempt deleted it.
    if (answer.status !== 204 && !(answer.status === 404 && ambiguous)) {
      throw errorFromAnswer(answer);
    }
  }
}
