// AbortSignal plumbing: the AbortError callers get, an abortable sleep, and a
// listener that can be taken off again (a caller's signal may outlive many
// permits, and must not collect a listener for each).

/**
 * The error an aborted call rejects with: a `DOMException` named
 * `AbortError`, as `fetch` uses, whatever the signal was aborted with; the
 * signal's reason is its `cause`, so a caller that aborted with a reason of
 * its own still finds it.
 */
export function abortError(signal: AbortSignal | undefined, what = "the operation"): DOMException {
  const error = new DOMException(`${what} was aborted`, "AbortError");
  if (signal?.reason !== undefined) {
    Object.defineProperty(error, "cause", { value: signal.reason, configurable: true, writable: true });
  }
  return error;
}

/** Whether `error` is an AbortError (ours, fetch's, or a timers one). */
export function isAbortError(error: unknown): boolean {
  return error instanceof Error || error instanceof DOMException
    ? error.name === "AbortError"
    : false;
}

/** Waits `ms`, or rejects with an AbortError as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal, what?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal, what));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError(signal, what));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Calls `listener` once `signal` aborts (at once if it has); returns the unsubscribe. */
export function onAbort(signal: AbortSignal | undefined, listener: () => void): () => void {
  if (signal === undefined) {
    return () => {};
  }
  if (signal.aborted) {
    listener();
    return () => {};
  }
  signal.addEventListener("abort", listener, { once: true });
  return () => signal.removeEventListener("abort", listener);
}
