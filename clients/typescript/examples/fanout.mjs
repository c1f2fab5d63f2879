#!/usr/bin/env node
// Fan out N calls to a slow API, at most `limit` at a time, through permitd.
//
// The scenario permitd grew out of: start all the calls at once, let each
// hold a permit of a shared semaphore while it calls the API, and see how
// long the lot takes with a limit of 1 against a limit of 5. The "API" is
// permitd's own slow upstream, GET /demo/upstream?delay_ms=100, so nothing
// else needs to run:
//
//   node examples/fanout.mjs --url http://127.0.0.1:8080
//
// prints a line per handled call, then for each limit a line like
// "takes ~0.5687 seconds to handle 5 with 1 bounded limit".

import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { Client } from "permitd";

/**
 * Runs `requests` calls under a fresh semaphore of `limit`; resolves with the seconds taken.
 * @param {Client} client
 * @param {string} apiUrl
 * @param {Record<string, string>} headers
 * @param {number} requests
 * @param {number} limit
 */
async function fanOut(client, apiUrl, headers, requests, limit) {
  const sem = client.semaphore(`fanout-${randomUUID()}`, { limit });
  /** @param {number} index */
  const call = async (index) => {
    // Waits as long as the whole run could take, so no call gives up.
    const status = await sem.withPermit({ waitMs: 60_000, ttlMs: 30_000, holder: `fanout-${index}` }, async (permit) => {
      const response = await fetch(apiUrl, { headers, signal: permit.signal });
      await response.arrayBuffer();
      return response.status;
    });
    console.log(`Handled api request №${index} with status code ${status}`);
  };
  const started = performance.now();
  try {
    await Promise.all(Array.from({ length: requests }, (_, i) => call(i + 1)));
  } finally {
    await sem.delete();
  }
  return (performance.now() - started) / 1000;
}

async function main() {
  const { values } = parseArgs({
    options: {
      url: { type: "string", default: "http://127.0.0.1:8080" },
      requests: { type: "string", default: "5" },
      limits: { type: "string", default: "1,5" },
      "api-url": { type: "string" },
      token: { type: "string" },
    },
  });
  const base = (values.url ?? "").replace(/\/+$/, "");
  const apiUrl = values["api-url"] ?? `${base}/demo/upstream?delay_ms=100`;
  const token = values.token ?? process.env["PERMITD_TOKEN"];
  // The built-in upstream is part of permitd's API, so it wants the token too.
  /** @type {Record<string, string>} */
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const requests = Number(values.requests);
  const client = new Client(base, { token });
  for (const limit of (values.limits ?? "").split(",").map(Number)) {
    const seconds = await fanOut(client, apiUrl, headers, requests, limit);
    console.log(`takes ~${seconds.toFixed(4)} seconds to handle ${requests} with ${limit} bounded limit`);
  }
}

await main();
