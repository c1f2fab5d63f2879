// Drives Swagger UI's "Try it out" in headless Chromium, as a person would:
// acquire a permit through the acquire form, then release it through the
// release form, and check both answers as the page shows them.
//
// A manual check (not part of scripts/test, which only needs the Rust suite
// and the fuzzer): needs node 20+ and chromium, and a running permitd.
//   node --experimental-websocket scripts/try-it-out.mjs http://127.0.0.1:8080 [TOKEN]
// With a TOKEN (for a permitd run with API tokens), it first authorizes
// through Swagger UI's "Authorize" dialog, as a person would.
// Talks to Chromium over the DevTools protocol on a free local port.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

// Page-side helpers: wait for an element, set a React-controlled field, read
// the live response Swagger UI shows after Execute.
const HELPERS = `
  const until = async (f, ms = 10000) => {
    for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) {
      const v = f(); if (v) return v;
    }
    throw new Error("timed out waiting for " + f);
  };
  const tryOut = (block) => { block.querySelector("button.try-out__btn")?.click(); return null; };
  const set = (el, value) => {
    const proto = el.tagName === "TEXTAREA" ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
    Object.getOwnPropertyDescriptor(proto, "value").set.call(el, value);
    el.dispatchEvent(new Event("input", { bubbles: true }));
    el.dispatchEvent(new Event("change", { bubbles: true }));
  };
  // Swagger UI's text inputs are debounced (350 ms) before the form sees them.
  const settle = () => new Promise((r) => setTimeout(r, 800));
  const answer = async (block) => {
    const row = await until(() => block.querySelector(".live-responses-table .response .response-col_status"));
    const body = block.querySelector(".live-responses-table .response-col_description pre.microlight");
    const url = block.querySelector(".request-url pre");
    return { status: row.textContent.trim(), body: body ? body.textContent : "", url: url ? url.textContent : "" };
  };
`;

const base = process.argv[2] ?? "http://127.0.0.1:8080";
const token = process.argv[3];
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const port = 9200 + Math.floor(Math.random() * 700);
const profile = mkdtempSync(join(tmpdir(), "permitd-try-"));
const chromium = spawn("chromium", [
  "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
  "--disable-background-networking", `--user-data-dir=${profile}`,
  `--remote-debugging-port=${port}`, "about:blank",
], { stdio: "ignore" });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let exitCode = 1;
try {
  let target;
  for (let i = 0; i < 100 && !target; i++) {
    try {
      const list = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
      target = list.find((t) => t.type === "page");
    } catch { await sleep(100); }
  }
  const ws = new WebSocket(target.webSocketDebuggerUrl);
  await new Promise((r) => ws.addEventListener("open", r));
  let nextId = 0;
  const pending = new Map();
  ws.addEventListener("message", (e) => {
    const msg = JSON.parse(e.data);
    if (pending.has(msg.id)) { pending.get(msg.id)(msg); pending.delete(msg.id); }
  });
  const send = (method, params = {}) => new Promise((resolve) => {
    const id = ++nextId;
    pending.set(id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });
  // Runs `body` (an async function's source) in the page and returns its value.
  const run = async (body) => {
    const { result } = await send("Runtime.evaluate", {
      expression: `(async () => { ${HELPERS}\n${body} })()`,
      awaitPromise: true, returnByValue: true,
    });
    if (result.exceptionDetails) throw new Error(result.exceptionDetails.exception?.description);
    return result.result.value;
  };

  await send("Page.navigate", { url: `${base}/docs/` });
  const name = `try-it-out-${Date.now()}`;

  if (token) {
    await run(`
      (await until(() => document.querySelector("button.authorize"))).click();
      const dialog = await until(() => document.querySelector(".dialog-ux .modal-ux"));
      set(await until(() => dialog.querySelector(".auth-container input")), ${JSON.stringify(token)});
      await settle();
      dialog.querySelector(".auth-btn-wrapper button.authorize").click();
      (await until(() => dialog.querySelector(".auth-btn-wrapper button.btn-done"))).click();
      return null;`);
    console.log("authorized through Swagger UI's Authorize dialog");
  }

  const acquired = await run(`
    const block = await until(() => [...document.querySelectorAll(".opblock-post")]
      .find((b) => b.querySelector('[data-path="/semaphores/{name}/permits"]')));
    block.querySelector(".opblock-summary-control").click();
    await until(() => block.querySelector("button.execute") || tryOut(block));
    set(await until(() => block.querySelector('tr[data-param-name="name"] input')), ${JSON.stringify(name)});
    set(await until(() => block.querySelector("textarea.body-param__text")),
        JSON.stringify({ limit: 1, holder: "swagger-ui" }));
    await settle();
    block.querySelector("button.execute").click();
    return await answer(block);`);
  console.log("acquire through Swagger UI:", acquired.status, acquired.url);
  const permit = JSON.parse(acquired.body);
  if (acquired.status !== "201" || !permit.id) throw new Error(`acquire: ${JSON.stringify(acquired)}`);

  const released = await run(`
    const block = await until(() => [...document.querySelectorAll(".opblock-delete")]
      .find((b) => b.querySelector('[data-path="/semaphores/{name}/permits/{id}"]')));
    block.querySelector(".opblock-summary-control").click();
    await until(() => block.querySelector("button.execute") || tryOut(block));
    set(await until(() => block.querySelector('tr[data-param-name="name"] input')), ${JSON.stringify(name)});
    set(await until(() => block.querySelector('tr[data-param-name="id"] input')), ${JSON.stringify(permit.id)});
    await settle();
    block.querySelector("button.execute").click();
    return await answer(block);`);
  console.log("release through Swagger UI:", released.status, released.url);
  if (released.status !== "204") throw new Error(`release: ${JSON.stringify(released)}`);

  const status = await (await fetch(`${base}/semaphores/${name}`, { headers: auth })).json();
  if (status.held !== 0) throw new Error(`still held: ${JSON.stringify(status)}`);
  await fetch(`${base}/semaphores/${name}`, { method: "DELETE", headers: auth });
  console.log("Try it out works for acquire and release against", base);
  exitCode = 0;
  ws.close();
} catch (e) {
  console.error("try-it-out failed:", e.message);
} finally {
  chromium.kill();
  await sleep(200);
  rmSync(profile, { recursive: true, force: true });
  process.exit(exitCode);
}
