// The HTTP side of a client: one attempt (`send`), a call retried within the
// client's timeout (`call`), and the background work that outlives the call
// that started it (releases after an abort), which `close` waits for.
//
// Every attempt is bounded by its own timer; the caller's AbortSignal cancels
// an attempt only until the answer's headers have arrived. After that the
// body is read to the end, so an acquire whose grant races an abort still
// learns which permit to release.

import { onAbort, sleep } from "./abort.js";
import type { Answer } from "./errors.js";
import { CallPlan, type Failure, now } from "./protocol.js";

export const USER_AGENT = "permitd-typescript/0.1.0";

/** One attempt's request. */
export interface Attempt {
  readonly method: string;
  readonly path: string;
  readonly body?: unknown;
  readonly headers?: Readonly<Record<string, string>>;
  readonly timeoutMs: number;
  /** Cancels the attempt while no answer has arrived. */
  readonly signal?: AbortSignal | undefined;
}

/** An attempt that got no answer; `maybeSent` says whether the server may have acted on it. */
export class NoAnswer extends Error implements Failure {
  constructor(
    readonly description: string,
    readonly maybeSent: boolean,
    override readonly cause: unknown,
  ) {
    super(description, { cause });
    this.name = "NoAnswer";
  }
}

/**
 * An attempt the caller's signal cancelled. `status` and `location` are set
 * when the answer's headers had arrived (the abort came while its body was
 * read): a 201 there is a permit granted although nobody will hold it.
 */
export class AttemptAborted extends Error {
  constructor(
    readonly status: number | undefined,
    readonly location: string | undefined,
  ) {
    super("aborted");
    this.name = "AttemptAborted";
  }
}

// Connection errors that happen before any byte of the request left: the
// server cannot have acted on it, so even a non-idempotent call may be retried
// without doubt, and a release's 404 afterwards is not "already done".
const NOT_SENT_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EADDRNOTAVAIL",
  "UND_ERR_CONNECT_TIMEOUT",
]);

function errorCodes(error: unknown, depth = 0): string[] {
  if (typeof error !== "object" || error === null || depth > 4) {
    return [];
  }
  const codes: string[] = [];
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string") codes.push(code);
  // undici wraps the socket's error in `cause`; Happy Eyeballs in an AggregateError.
  if (error instanceof AggregateError) {
    for (const inner of error.errors) codes.push(...errorCodes(inner, depth + 1));
  }
  codes.push(...errorCodes((error as { cause?: unknown }).cause, depth + 1));
  return codes;
}

/** Words and doubt for an attempt that failed without an answer. */
export function noAnswerFrom(error: unknown): NoAnswer {
  const codes = errorCodes(error);
  const notSent = codes.length > 0 && codes.every((code) => NOT_SENT_CODES.has(code));
  const reason = codes.length > 0 ? codes.join(", ") : error instanceof Error ? error.message : String(error);
  return notSent
    ? new NoAnswer(`cannot reach permitd (${reason})`, false, error)
    : new NoAnswer(`no answer from permitd (${reason})`, true, error);
}

export interface ConnectionOptions {
  readonly token: string | undefined;
  readonly timeoutMs: number;
  readonly maxWaitMs: number;
  readonly fetch: typeof globalThis.fetch;
  readonly onWarning: (message: string) => void;
}

export class Connection {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  readonly maxWaitMs: number;
  readonly #headers: Readonly<Record<string, string>>;
  readonly #fetch: typeof globalThis.fetch;
  readonly #onWarning: (message: string) => void;
  readonly #background = new Set<Promise<void>>();

  constructor(baseUrl: string, options: ConnectionOptions) {
    this.baseUrl = baseUrl;
    this.timeoutMs = options.timeoutMs;
    this.maxWaitMs = options.maxWaitMs;
    this.#fetch = options.fetch;
    this.#onWarning = options.onWarning;
    this.#headers = {
      "user-agent": USER_AGENT,
      ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
    };
  }

  /** One attempt, read whole. Rejects with `NoAnswer` or `AttemptAborted`. */
  async send(attempt: Attempt): Promise<Answer> {
    const controller = new AbortController();
    let timedOut = false;
    let aborted = false;
    let answered = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, attempt.timeoutMs);
    const unsubscribe = onAbort(attempt.signal, () => {
      if (!answered) {
        aborted = true;
        controller.abort();
      }
    });
    let response: Response | undefined;
    try {
      if (aborted) {
        throw new AttemptAborted(undefined, undefined);
      }
      const headers: Record<string, string> = { ...this.#headers, ...attempt.headers };
      let body: string | undefined;
      if (attempt.body !== undefined) {
        body = JSON.stringify(attempt.body);
        headers["content-type"] = "application/json";
      }
      response = await this.#fetch(this.baseUrl + attempt.path, {
        method: attempt.method,
        headers,
        ...(body === undefined ? {} : { body }),
        signal: controller.signal,
      });
      answered = true;
      const text = await response.text();
      return { status: response.status, headers: response.headers, text };
    } catch (error) {
      if (error instanceof AttemptAborted) throw error;
      if (aborted) {
        // The abort cut the body short: keep what the headers said.
        throw new AttemptAborted(response?.status, response?.headers.get("location") ?? undefined);
      }
      if (timedOut) {
        throw new NoAnswer(`no answer from permitd within ${Math.round(attempt.timeoutMs)} ms`, true, error);
      }
      throw noAnswerFrom(error);
    } finally {
      clearTimeout(timer);
      unsubscribe();
    }
  }

  /**
   * A call retried on no answer and on 502/503/504 within the client's
   * timeout, deaf to any caller's signal (releases must get through). Returns
   * the final answer and whether an earlier attempt may have taken effect
   * unseen (so that a 404 may mean "already done").
   */
  async call(what: string, method: string, path: string, body?: unknown): Promise<{ answer: Answer; ambiguous: boolean }> {
    const plan = new CallPlan(what, this.timeoutMs, now());
    for (;;) {
      let delay: number;
      try {
        const answer = await this.send({ method, path, body, timeoutMs: plan.attemptTimeout(now()) });
        const result = plan.answered(answer, now());
        if (typeof result !== "number") {
          return { answer: result, ambiguous: plan.ambiguous };
        }
        delay = result;
      } catch (error) {
        if (!(error instanceof NoAnswer)) throw error;
        delay = plan.failed(error, now());
      }
      await sleep(delay);
    }
  }

  /** Keeps `work` until it ends, for `close` to wait for; a rejection becomes a warning. */
  track(work: Promise<void>, what: string): void {
    const kept = work
      .catch((error: unknown) => this.warn(`${what} failed: ${error instanceof Error ? error.message : String(error)}`))
      .finally(() => this.#background.delete(kept));
    this.#background.add(kept);
  }

  /** Waits for the background work still under way (each release bounded by the timeout). */
  async drain(): Promise<void> {
    while (this.#background.size > 0) {
      await Promise.all(this.#background);
    }
  }

  warn(message: string): void {
    this.#onWarning(message);
  }
}
