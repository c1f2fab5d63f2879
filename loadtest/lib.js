// Shared by the k6 scripts: one acquire -> hold -> release cycle against
// permitd or throttle-server, with the acquire wait recorded as a Trend.
import http from 'k6/http';
import { sleep } from 'k6';
import { Trend, Counter } from 'k6/metrics';

export const acquireWait = new Trend('acquire_wait', true);
export const cycles = new Counter('cycles');
export const failures = new Counter('failures');

const TARGET = __ENV.TARGET || 'permitd';
const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const JSON_HEADERS = { headers: { 'Content-Type': 'application/json' } };

// throttle-server identifies a client by a peer made once per VU.
let peer = null;

function sleepMs(ms) {
  if (ms > 0) sleep(ms / 1000);
}

export function cycle(semaphore, limit, holdMs) {
  const started = Date.now();
  if (TARGET === 'throttle') {
    if (peer === null) {
      // The id is a 64-bit integer: keep its text, JSON numbers would round it.
      peer = http.post(`${BASE}/new_peer`, JSON.stringify({ expires_in: '5m' }), JSON_HEADERS).body.trim();
    }
    const url = `${BASE}/peers/${peer}/${semaphore}`;
    let res;
    do {
      res = http.put(`${url}?block_for=60s`, '1', JSON_HEADERS);
    } while (res.status === 202);
    if (res.status !== 200) { failures.add(1); return; }
    acquireWait.add(Date.now() - started);
    sleepMs(holdMs);
    http.del(url);
  } else {
    const body = JSON.stringify({ limit, wait_ms: 60000, ttl_ms: 60000 });
    const res = http.post(`${BASE}/semaphores/${semaphore}/permits`, body, JSON_HEADERS);
    if (res.status !== 201) { failures.add(1); return; }
    acquireWait.add(Date.now() - started);
    sleepMs(holdMs);
    const released = http.del(`${BASE}${res.headers['Location']}`);
    if (released.status !== 204) { failures.add(1); return; }
  }
  cycles.add(1);
}
