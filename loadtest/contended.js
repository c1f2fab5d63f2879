// Contended loop: 64 clients on a limit of 4, each holding ~1 ms, waiting
// acquires. Run: k6 run -e BASE_URL=http://127.0.0.1:8080 loadtest/contended.js
// (TARGET=throttle for throttle-server, whose semaphore "bench" must have 4).
import { cycle } from './lib.js';

export const options = {
  vus: Number(__ENV.CLIENTS || 64),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['p(50)', 'p(99)', 'max', 'avg'],
};

export default function () {
  cycle(__ENV.SEMAPHORE || 'bench', Number(__ENV.LIMIT || 4), Number(__ENV.HOLD_MS || 1));
}
