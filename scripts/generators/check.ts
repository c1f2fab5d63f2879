// Typed by the `paths` openapi-typescript generated from openapi.yaml, with
// default options: a body with only some fields, and no body, must compile
// (tsc --strict), and the calls must get the answers the document states.
import type { components, paths } from "./permitd.js";

type Acquire = paths["/semaphores/{name}/permits"]["post"];
type AcquireBody = NonNullable<Acquire["requestBody"]>["content"]["application/json"];
type Permit = components["schemas"]["PermitView"];

const base = process.argv[2];
const name = `generated-ts-${process.pid}`;

async function acquire(body?: AcquireBody): Promise<Response> {
  const init: RequestInit = { method: "POST" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "content-type": "application/json" };
  }
  return fetch(`${base}/semaphores/${name}/permits`, init);
}

function expect(what: string, status: number, wanted: number): void {
  if (status !== wanted) throw new Error(`${what}: ${status}, wanted ${wanted}`);
}

const some: AcquireBody = { limit: 1, ttl_ms: 5000, holder: "generated" };
const granted = await acquire(some);
expect("acquire with a body", granted.status, 201);
const permit = (await granted.json()) as Permit;
expect("a second acquire, no body, limit 1", (await acquire()).status, 429);
const released = await fetch(`${base}/semaphores/${name}/permits/${permit.id}`, {
  method: "DELETE",
});
expect("release", released.status, 204);
const again = await acquire();
expect("acquire with no body", again.status, 201);
console.log(`openapi-typescript: fencing token ${permit.fencing_token}, then 429, 204, 201`);
