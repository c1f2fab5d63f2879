// The entry point: `Client`, a connection to one permitd (or to a load
// balancer in front of several), and its shortcuts for the common case of
// acquiring from a semaphore by name.

import type { AcquireOptions, PermitWork } from "./acquire.js";
import { Connection, NoAnswer } from "./connection.js";
import { errorFromAnswer } from "./errors.js";
import { asyncDispose, type Permit } from "./permit.js";
import { checkPositive } from "./protocol.js";
import { Semaphore, type SemaphoreOptions } from "./semaphore.js";

/** Settings of a client. Every duration is in milliseconds. */
export interface ClientOptions {
  /** Sent as `Authorization: Bearer <token>`. */
  token?: string | undefined;
  /**
   * Bound on every call, retries of an unreachable server and of 503
   * answers included (default 10,000); an acquire may take its `waitMs` on top.
   */
  timeoutMs?: number | undefined;
  /**
   * The server's `--max-wait-ms` (default 60,000 on both sides): longer waits
   * are sent as several long polls of at most this.
   */
  maxWaitMs?: number | undefined;
  /** Where warnings go (a refresh that failed and is retried, a release that could not get through); default `console.warn`. */
  onWarning?: ((message: string) => void) | undefined;
  /** The `fetch` to send with (default: the global one), for proxies, tracing or tests. */
  fetch?: typeof globalThis.fetch | undefined;
}

/** Acquire options plus the limit to create the semaphore with. */
export type AcquireByNameOptions = AcquireOptions & SemaphoreOptions;

export class Client implements AsyncDisposable {
  readonly #connection: Connection;

  constructor(url: string, options: ClientOptions = {}) {
    if (!/^https?:\/\//.test(url)) {
      throw new TypeError(`permitd URL must start with http:// or https://, not ${JSON.stringify(url)}`);
    }
    checkPositive("timeoutMs", options.timeoutMs);
    checkPositive("maxWaitMs", options.maxWaitMs);
    const fetch = options.fetch ?? globalThis.fetch;
    if (typeof fetch !== "function") {
      throw new TypeError("no fetch: permitd needs Node 18 or later, or a fetch passed in the options");
    }
    this.#connection = new Connection(url.replace(/\/+$/, ""), {
      token: options.token,
      timeoutMs: options.timeoutMs ?? 10_000,
      maxWaitMs: options.maxWaitMs ?? 60_000,
      fetch,
      onWarning: options.onWarning ?? ((message) => console.warn(`permitd: ${message}`)),
    });
  }

  /** The base URL, without a trailing slash. */
  get url(): string {
    return this.#connection.baseUrl;
  }

  get timeoutMs(): number {
    return this.#connection.timeoutMs;
  }

  get maxWaitMs(): number {
    return this.#connection.maxWaitMs;
  }

  /** A handle on semaphore `name`; nothing is sent until it is used. */
  semaphore(name: string, options: SemaphoreOptions = {}): Semaphore {
    return new Semaphore(this.#connection, name, options);
  }

  /** `client.semaphore(name, { limit }).acquire(options)`. */
  acquire(name: string, options: AcquireByNameOptions = {}): Promise<Permit> {
    return this.semaphore(name, { limit: options.limit }).acquire(options);
  }

  /** `client.semaphore(name, { limit }).withPermit(options, work)`. */
  withPermit<T>(name: string, options: AcquireByNameOptions, work: PermitWork<T>): Promise<T> {
    return this.semaphore(name, { limit: options.limit }).withPermit(options, work);
  }

  /**
   * The connection check: true when permitd answers and its store does;
   * false when permitd cannot be reached in time or says its store cannot
   * (503). One attempt, bounded by `timeoutMs`. Other answers (a URL that is
   * not a permitd, say) reject with their error.
   */
  async ready(): Promise<boolean> {
    let answer;
    try {
      answer = await this.#connection.send({ method: "GET", path: "/readyz", timeoutMs: this.timeoutMs });
    } catch (error) {
      if (error instanceof NoAnswer) return false;
      throw error;
    }
    if (answer.status === 200) return true;
    if (answer.status === 503) return false;
    throw errorFromAnswer(answer);
  }

  /** Waits for releases still under way in the background (after an abort), each bounded by `timeoutMs`. */
  close(): Promise<void> {
    return this.#connection.drain();
  }

  /** `await using client = new Client(...)`: `close()` at the end of the block. */
  [asyncDispose](): Promise<void> {
    return this.close();
  }
}
