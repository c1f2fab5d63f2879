// Uncontended loop: 16 clients on a limit of 16, acquire then release at once.
// Run: k6 run -e BASE_URL=http://127.0.0.1:8080 loadtest/uncontended.js
// (TARGET=throttle for throttle-server, whose semaphore "bench16" must have 16).
import { cycle } from './lib.js';

export const options = {
  vus: Number(__ENV.CLIENTS || 16),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['p(50)', 'p(99)', 'max', 'avg'],
};

export default function () {
  cycle(__ENV.SEMAPHORE || 'bench16', Number(__ENV.LIMIT || 16), Number(__ENV.HOLD_MS || 0));
}
