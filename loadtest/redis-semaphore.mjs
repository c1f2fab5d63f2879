// The peer on Redis: the npm redis-semaphore library's Semaphore, default
// options, doing permitd's loops directly against Redis (contended by
// default; CLIENTS=16 LIMIT=16 HOLD_MS=0 for the uncontended one). Measured
// like permitd's loadgen: cycles/s, acquire wait, handoff (release -> next
// grant, oldest unpaired release first), holders, per-client fairness, and,
// given REDIS_PID, the redis-server process's CPU (utime + stime from /proc)
// per cycle over the same window.
//
// Run: REDIS_URL=redis://127.0.0.1:6379 node loadtest/redis-semaphore.mjs
import { readFileSync } from 'node:fs';
import Redis from 'ioredis';
import { Semaphore } from 'redis-semaphore';

const env = (name, fallback) => process.env[name] ?? fallback;
const CLIENTS = Number(env('CLIENTS', 64));
const LIMIT = Number(env('LIMIT', 4));
const HOLD_MS = Number(env('HOLD_MS', 1));
const DURATION_S = Number(env('DURATION_S', 10));
const WARMUP_S = Number(env('WARMUP_S', 1));
const REDIS_PID = env('REDIS_PID', '');
// USER_HZ: what /proc/<pid>/stat counts utime and stime in (100 on Linux).
const TICKS_PER_S = Number(env('CLK_TCK', 100));
const redis = new Redis(env('REDIS_URL', 'redis://127.0.0.1:6379'));
const key = `bench-rs-${process.pid}`;

const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
const start = now();
const windowStart = start + WARMUP_S * 1000;
const windowEnd = windowStart + DURATION_S * 1000;
let holders = 0;
let maxHolders = 0;
let errors = 0;
let stop = false;
const waits = [];
const grants = [];
const releases = [];
const perClient = new Array(CLIENTS).fill(0);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function client(index) {
  while (!stop) {
    const semaphore = new Semaphore(redis, key, LIMIT);
    const sent = now();
    try {
      await semaphore.acquire();
    } catch (e) {
      errors += 1; // acquireTimeout (10 s by default) ran out
      continue;
    }
    const granted = now();
    holders += 1;
    maxHolders = Math.max(maxHolders, holders);
    if (HOLD_MS > 0) await sleep(HOLD_MS);
    holders -= 1;
    const releaseSent = now();
    await semaphore.release();
    if (sent >= windowStart && sent < windowEnd) {
      perClient[index] += 1;
      waits.push(granted - sent);
      grants.push(granted);
      releases.push(releaseSent);
    }
  }
}

// utime + stime of a process, in ticks; null when it cannot be read.
function cpuTicks(pid) {
  if (!pid) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return null;
  }
}

const q = (sorted, p) => (sorted.length ? sorted[Math.round((sorted.length - 1) * p)] : null);
const cpuBefore = { value: null };
const redisTicks = { before: null, after: null };
setTimeout(() => {
  cpuBefore.value = process.cpuUsage();
  redisTicks.before = cpuTicks(REDIS_PID);
}, WARMUP_S * 1000);
setTimeout(() => {
  stop = true;
  redisTicks.after = cpuTicks(REDIS_PID);
}, (WARMUP_S + DURATION_S) * 1000);
const clientCpu = await (async () => {
  await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i)));
  const used = process.cpuUsage(cpuBefore.value);
  return used.user + used.system;
})();

waits.sort((a, b) => a - b);
// How long the clients really held (see loadgen.rs), before the sorts below
// unpair grants from releases.
const holds = grants.map((g, i) => releases[i] - g).sort((a, b) => a - b);
grants.sort((a, b) => a - b);
releases.sort((a, b) => a - b);
const handoffs = [];
const pending = [];
let next = 0;
for (const grant of grants) {
  while (next < releases.length && releases[next] < grant) pending.push(releases[next++]);
  if (pending.length) handoffs.push(grant - pending.shift());
}
handoffs.sort((a, b) => a - b);
const cycles = perClient.reduce((a, b) => a + b, 0);
const sortedClients = [...perClient].sort((a, b) => a - b);
const median = sortedClients[Math.floor(CLIENTS / 2)];
const spread = Math.max(...perClient.map((c) => Math.abs(c - median) / Math.max(median, 1)));
console.log(JSON.stringify({
  label: env('LABEL', 'redis-semaphore'),
  clients: CLIENTS,
  limit: LIMIT,
  hold_ms: HOLD_MS,
  cycles,
  cycles_per_s: Math.round(cycles / DURATION_S),
  hold_p50_ms: q(holds, 0.5),
  wait_p50_ms: q(waits, 0.5),
  wait_p99_ms: q(waits, 0.99),
  wait_max_ms: q(waits, 1),
  handoff_p50_ms: q(handoffs, 0.5),
  handoff_p99_ms: q(handoffs, 0.99),
  max_holders: maxHolders,
  client_cycles_min: sortedClients[0],
  client_cycles_median: median,
  client_cycles_max: sortedClients[CLIENTS - 1],
  client_spread_vs_median: Math.round(spread * 1000) / 1000,
  client_cpu_us_per_cycle: cycles ? Math.round(clientCpu / cycles) : null,
  redis_cpu_us_per_cycle: cycles && redisTicks.before !== null && redisTicks.after !== null
    ? Math.round(((redisTicks.after - redisTicks.before) / TICKS_PER_S) * 1e6 / cycles)
    : null,
  errors,
}));
await redis.quit();
