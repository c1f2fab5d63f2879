// The values permitd answers with, as typed, frozen objects.
//
// `Grant` is a permit as the acquire and refresh answers show it,
// `SemaphoreStatus` (with its `Holder`s) a semaphore's status. Times are
// `Date`s on the store's clock. The parsers here are the only place that
// knows the JSON field names; an answer that does not have them is a
// `PermitdError` rather than a value with holes.

import { PermitdError } from "./errors.js";

/** A permit as the server last described it. */
export interface Grant {
  readonly id: string;
  readonly semaphore: string;
  readonly count: number;
  readonly fencingToken: number;
  readonly acquiredAt: Date;
  readonly expiresAt: Date;
  readonly holder: string | undefined;
}

/** One live permit in a semaphore's status; `id` only for admin tokens asking for ids. */
export interface Holder {
  readonly id: string | undefined;
  readonly holder: string | undefined;
  readonly count: number;
  readonly fencingToken: number;
  readonly acquiredAt: Date;
  readonly expiresAt: Date;
}

/** A semaphore's status; `held` may exceed `limit` after the limit was lowered. */
export interface SemaphoreStatus {
  readonly name: string;
  readonly limit: number;
  readonly held: number;
  readonly available: number;
  readonly waiting: number;
  /** Its idle TTL in ms (forgotten after that long unused); null: never. */
  readonly idleTtlMs: number | null | undefined;
  readonly holders: readonly Holder[];
}

type Json = Readonly<Record<string, unknown>>;

function object(value: unknown, what: string): Json {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new PermitdError(`permitd sent an unexpected ${what}: not a JSON object`);
  }
  return value as Json;
}

function member<T>(body: Json, name: string, what: string, check: (value: unknown) => value is T): T {
  const value = body[name];
  if (!check(value)) {
    throw new PermitdError(`permitd sent an unexpected ${what}: bad or missing "${name}"`);
  }
  return value;
}

const isString = (value: unknown): value is string => typeof value === "string";
// Fencing tokens stay below 2^53 (the server promises it), so they are exact here.
const isInteger = (value: unknown): value is number => Number.isSafeInteger(value);

function time(body: Json, name: string, what: string): Date {
  const date = new Date(member(body, name, what, isString));
  if (Number.isNaN(date.getTime())) {
    throw new PermitdError(`permitd sent an unexpected ${what}: "${name}" is not a time`);
  }
  return date;
}

function label(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" ? value : undefined;
}

/** A permit from an acquire's or a refresh's answer body. */
export function parseGrant(value: unknown): Grant {
  const what = "permit";
  const body = object(value, what);
  return Object.freeze({
    id: member(body, "id", what, isString),
    semaphore: member(body, "semaphore", what, isString),
    count: member(body, "count", what, isInteger),
    fencingToken: member(body, "fencing_token", what, isInteger),
    acquiredAt: time(body, "acquired_at", what),
    expiresAt: time(body, "expires_at", what),
    holder: label(body["holder"]),
  });
}

function parseHolder(value: unknown): Holder {
  const what = "holder";
  const body = object(value, what);
  return Object.freeze({
    id: label(body["id"]),
    holder: label(body["holder"]),
    count: member(body, "count", what, isInteger),
    fencingToken: member(body, "fencing_token", what, isInteger),
    acquiredAt: time(body, "acquired_at", what),
    expiresAt: time(body, "expires_at", what),
  });
}

/** A semaphore's status from `GET` or `PUT /semaphores/{name}`. */
export function parseStatus(value: unknown): SemaphoreStatus {
  const what = "semaphore status";
  const body = object(value, what);
  const holders = body["holders"] ?? [];
  if (!Array.isArray(holders)) {
    throw new PermitdError(`permitd sent an unexpected ${what}: "holders" is not a list`);
  }
  const idle = body["idle_ttl_ms"];
  return Object.freeze({
    name: member(body, "name", what, isString),
    limit: member(body, "limit", what, isInteger),
    held: member(body, "held", what, isInteger),
    available: member(body, "available", what, isInteger),
    waiting: member(body, "waiting", what, isInteger),
    idleTtlMs: isInteger(idle) || idle === null ? idle : undefined,
    holders: Object.freeze(holders.map(parseHolder)),
  });
}
