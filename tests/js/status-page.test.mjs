// The gateway's status page in a real browser (Debian's Chromium, driven by
// playwright-core), against real `stickyio-gateway` and `stickyio-node`
// processes: it asks for the admin token and keeps it out of the URL, shows
// the three nodes, shows a stopped node down within its health checks (with
// the check's error) and back up once restarted, shows fail-open while two
// of three are down, explains a route, and shows a refused reload with
// its file:line:column. The gateway's log lines for those events are checked
// too, and the counts of live websockets and request rates. A screenshot is
// kept in artifacts/ (docs/status-page.png is one).
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { io } from "socket.io-client";
import { gatewayToml, startGateway } from "./gateway-process.mjs";
import { startNode } from "./node-process.mjs";

const root = fileURLToPath(new URL("../..", import.meta.url));
const artifacts = join(root, "artifacts");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const TOKEN = "status-page-test-token-7f3a";
const INTERVAL_MS = 1000;
const FALL = 2;
const RISE = 2;
// A node is marked down after FALL failed checks, and the page polls at the
// check interval: the deadline to see a change, with one check of slack.
const DEADLINE_MS = (Math.max(FALL, RISE) + 2) * INTERVAL_MS;
const WAIT_MS = 15_000;
const NAMES = ["node-a", "node-b", "node-c"];
// Clients below are placed by X-Forwarded-For, as behind a load balancer.
const TRUST = 'trusted_proxies = ["127.0.0.1/32"]';

let nodes = {};
let gateway;
let context;
let profileDir;
let page;

/** The gateway's config: a token, trusted loopback, fast checks, `names`' nodes. */
function config(names) {
  const extra = `admin_token = "${TOKEN}"\n${TRUST}\n` +
    `[health]\ninterval = "${INTERVAL_MS}ms"\ntimeout = "500ms"\nrise = ${RISE}\nfall = ${FALL}\n`;
  return gatewayToml(names.map((n) => [n, nodes[n].addr]), extra);
}

function health(name) {
  return page.locator(`#nodes tr[data-node="${name}"] td.health`);
}

/** Resolves with the first gateway log event matching `test`, within `ms`. */
async function logged(test, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const hit = gateway.events.find((e) => test(e.fields ?? {}));
    if (hit) return hit.fields;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`no such gateway log line within ${ms} ms:\n${gateway.events.map((e) => JSON.stringify(e.fields)).join("\n")}`);
}

before(async () => {
  for (const name of NAMES) nodes[name] = await startNode({ name });
  gateway = await startGateway(config(NAMES));
  profileDir = mkdtempSync(join(tmpdir(), "stickyio-chromium-profile-"));
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: WAIT_MS,
    viewport: { width: 1280, height: 860 },
  });
  page = await context.newPage();
});

after(async () => {
  await context?.close();
  const exit = await gateway?.stop();
  for (const node of Object.values(nodes)) await node.stop();
  rmSync(profileDir, { recursive: true, force: true });
  assert.deepEqual(exit, { code: 0, signal: null });
});

it("the status page follows nodes going down and up, routes and reloads", async () => {
  // Without a token the page asks for one; data endpoints refuse.
  const seen = [];
  page.on("request", (r) => seen.push({ url: r.url(), auth: r.headers().authorization }));
  await page.goto(gateway.admin + "/", { timeout: WAIT_MS });
  await page.waitForSelector("#token-form:not([hidden])", { timeout: WAIT_MS });
  assert.match(await page.textContent("#token-message"), /needs its admin token/);
  await page.fill("#token", TOKEN);
  await page.click("#token-form button");

  for (const name of NAMES) await health(name).filter({ hasText: /^up$/ }).waitFor({ timeout: WAIT_MS });
  assert.equal(await page.locator("#nodes tbody tr").count(), 3);
  assert.ok(await page.locator("#token-form").isHidden());
  // The token travels in a header only: never in a URL, never in the gateway's logs.
  assert.ok(seen.some((r) => r.url.endsWith("/status") && r.auth === `Bearer ${TOKEN}`), JSON.stringify(seen));
  assert.ok(seen.every((r) => !r.url.includes(TOKEN)));
  assert.ok(!page.url().includes(TOKEN));
  assert.ok(gateway.events.every((e) => !JSON.stringify(e).includes(TOKEN)));
  assert.equal(await page.evaluate(() => sessionStorage.getItem("stickyio-admin-token")), TOKEN);

  // Stop node-b: down within its checks, with the check's error.
  await page.locator("#fail-open", { hasText: "inactive" }).waitFor({ timeout: WAIT_MS });
  const addrs = Object.fromEntries(NAMES.map((n) => [n, nodes[n].addr]));
  await nodes["node-b"].stop();
  let started = Date.now();
  await health("node-b").filter({ hasText: /^down$/ }).waitFor({ timeout: DEADLINE_MS });
  const downAfter = Date.now() - started;
  assert.equal(await health("node-a").textContent(), "up");
  assert.match(await page.textContent("#state"), /2 of 3 nodes up/);
  assert.match(await page.locator('#nodes tr[data-node="node-b"] td.check').getAttribute("class"), /error/);
  assert.ok((await page.textContent('#nodes tr[data-node="node-b"] td.check')).length > 10);
  const down = await logged((f) => f.message === "node is down: health checks fail" && f.node === "node-b");
  assert.equal(down.addr, addrs["node-b"]);
  assert.equal(typeof down.error, "string");
  assert.equal(await page.textContent("#fail-open").then((t) => t.startsWith("inactive")), true, "2 of 3 pass");

  // Stop node-c too: 1 of 3 pass, below the 50% threshold: the page shows fail-open.
  await nodes["node-c"].stop();
  await page.locator("#fail-open", { hasText: "ACTIVE: only 1 of 3 nodes" }).waitFor({ timeout: DEADLINE_MS });
  const open = await logged((f) => f.message?.startsWith("gateway fails open"));
  assert.deepEqual([open.healthy, open.total], [1, 3]);

  // Restart both on their addresses: up again, and fail-open ends.
  for (const name of ["node-b", "node-c"]) nodes[name] = await startNode({ name, listen: addrs[name] });
  started = Date.now();
  for (const name of ["node-b", "node-c"]) await health(name).filter({ hasText: /^up$/ }).waitFor({ timeout: DEADLINE_MS });
  const upAfter = Date.now() - started;
  assert.ok(downAfter <= DEADLINE_MS && upAfter <= DEADLINE_MS, `${downAfter} ${upAfter}`);
  await page.locator("#fail-open", { hasText: "inactive" }).waitFor({ timeout: DEADLINE_MS });
  await logged((f) => f.message?.startsWith("gateway stops failing open"));
  await logged((f) => f.message === "node is up: health checks pass" && f.node === "node-b");

  // The route explainer: the node /route names, and why.
  await page.fill("#route-input", "203.0.113.9");
  await page.click("#route-form button");
  await page.waitForSelector("#route-node", { timeout: WAIT_MS });
  const route = await (await fetch(gateway.admin + "/route?ip=203.0.113.9", { headers: { authorization: `Bearer ${TOKEN}` } })).json();
  assert.equal(await page.textContent("#route-node"), "→ " + route.node);
  assert.equal(await page.textContent("#route-reason"), route.reason);
  await page.fill("#route-input", "no-such-sid");
  await page.click("#route-form button");
  // A sid no gateway of this pool made: refused with the reason, as the proxy would.
  await page.locator("#route-result", { hasText: "the sid is not one this gateway gave out" }).waitFor({ timeout: WAIT_MS });

  // A bad edit: refused, shown with file:line:column, logged with the same fields.
  const bad = config(NAMES).replace(`fall = ${FALL}`, 'fall = "often"');
  const line = bad.split("\n").findIndex((l) => l.startsWith("fall")) + 1;
  gateway.rewrite(bad);
  const where = `gateway.toml:${line}:8`;
  await page.locator("#reload-error", { hasText: where }).waitFor({ timeout: WAIT_MS });
  assert.match(await page.textContent("#reload-verdict"), /refused/);
  const refused = await logged((f) => f.message === "config reload refused; the previous config keeps serving");
  assert.equal(refused.ok, false);
  assert.ok(refused.location.endsWith(where), refused.location);
  assert.ok(refused.error.includes(where), refused.error);
  assert.ok(refused.path.endsWith("gateway.toml"), refused.path);
  for (const name of NAMES) assert.equal(await health(name).textContent(), "up", "the old config keeps serving");

  // Live clients and traffic: the page counts websockets and shows rates.
  const sockets = [1, 2, 3, 4].map((i) => io(gateway.url, {
    transports: ["websocket"], extraHeaders: { "X-Forwarded-For": `198.51.100.${i}` }, reconnection: false,
  }));
  await Promise.all(sockets.map((s) => new Promise((resolve, reject) => s.on("connect", resolve).on("connect_error", reject))));
  const traffic = (async () => {
    for (let i = 0; i < 60; i++) {
      await fetch(gateway.url + "/healthz", { headers: { "X-Forwarded-For": `198.51.100.${i % 20}` } });
      await new Promise((r) => setTimeout(r, 40));
    }
  })();
  await page.waitForFunction(() => {
    const sum = (cls) => [...document.querySelectorAll(`#nodes td.${cls}`)].reduce((n, td) => n + Number(td.textContent), 0);
    return sum("websockets") === 4 && sum("requests") > 0;
  }, null, { timeout: WAIT_MS });
  await traffic;
  await page.fill("#route-input", "203.0.113.9");
  await page.click("#route-form button");
  await page.locator("#route-node", { hasText: route.node }).waitFor({ timeout: WAIT_MS });
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, "status-page.png"), fullPage: true });
  for (const s of sockets) s.disconnect();

  // A good edit that removes node-c: applied, logged, and node-c drains.
  gateway.rewrite(config(NAMES.filter((n) => n !== "node-c")));
  await page.locator("#reload", { hasText: "removed: node-c" }).waitFor({ timeout: WAIT_MS });
  const applied = await logged((f) => f.message === "config reloaded");
  assert.equal(applied.ok, true);
  assert.match(applied.removed, /node-c/);
  const draining = await logged((f) => f.message?.startsWith("node draining"));
  assert.equal(draining.node, "node-c");
  assert.equal(draining.addr, nodes["node-c"].addr);
  assert.equal(draining.draining, true);
  for (const field of ["weight", "sessions", "websockets"]) assert.equal(typeof draining[field], "number", field);
  const drained = await logged((f) => f.message?.startsWith("node drained"));
  assert.equal(drained.node, "node-c");
  await page.waitForFunction(() => document.querySelectorAll("#nodes tbody tr").length === 2, null, { timeout: WAIT_MS });
});
