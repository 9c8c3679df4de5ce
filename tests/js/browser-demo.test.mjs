// The demo page in a real browser (Debian's Chromium, driven by
// playwright-core) through the gateway: two tabs served by two different
// nodes chat with each other; then, against node processes, the node of one
// tab is killed and its chat carries on through the gateway with nothing
// missing (the page resumes from its last cursor). A screenshot of each tab
// is kept as a test artifact in artifacts/.
//
// A browser on this machine always connects from 127.0.0.1, so the gateway
// would send both tabs to one node. As behind a real load balancer, the
// gateway here trusts the proxy at 127.0.0.1 and each tab carries its own
// X-Forwarded-For address; the tabs are placed by those addresses.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startGateway } from "./gateway-process.mjs";
import { freePortFlags, startLauncher } from "./launcher-process.mjs";
import { startMesh } from "./node-process.mjs";

const WAIT_MS = 15_000;
const root = fileURLToPath(new URL("../..", import.meta.url));
const artifacts = join(root, "artifacts");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
// The flags Chromium needs on these machines (no network beyond loopback).
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let launcher;
let context;
let configDir;
let profileDir;

before(async () => {
  configDir = mkdtempSync(join(tmpdir(), "stickyio-browser-config-"));
  const local = join(root, "deploy/local");
  for (const f of ["node-a.toml", "node-b.toml", "node-c.toml", "mesh.secret"]) copyFileSync(join(local, f), join(configDir, f));
  const gateway = readFileSync(join(local, "gateway.toml"), "utf8").replace(/^trusted_proxies = \[\]$/m, 'trusted_proxies = ["127.0.0.1/32"]');
  assert.match(gateway, /127\.0\.0\.1\/32/);
  writeFileSync(join(configDir, "gateway.toml"), gateway);
  launcher = await startLauncher(["--config-dir", configDir, ...(await freePortFlags())]);

  profileDir = mkdtempSync(join(tmpdir(), "stickyio-chromium-profile-"));
  // A persistent context is how Playwright takes a fresh --user-data-dir.
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: WAIT_MS,
  });
});

after(async () => {
  await context?.close();
  const exit = await launcher?.stop();
  rmSync(configDir, { recursive: true, force: true });
  rmSync(profileDir, { recursive: true, force: true });
  assert.deepEqual(exit, { code: 0, signal: null });
});

/** Opens the demo as a client at `ip`; resolves once its socket is connected. */
async function openTab(ip, url = launcher.url) {
  const page = await context.newPage();
  await page.setExtraHTTPHeaders({ "X-Forwarded-For": ip });
  await page.goto(url + "/", { timeout: WAIT_MS });
  await page.waitForSelector("#status:has-text('connected as')", { timeout: WAIT_MS });
  await page.waitForSelector("#log li.info:has-text('joined chat.lobby')", { timeout: WAIT_MS });
  return { page, ip, node: (await page.textContent("#node")).trim() };
}

async function send(tab, name, text) {
  await tab.page.fill("#name", name);
  await tab.page.fill("#text", text);
  await tab.page.click("#send button");
}

it("two tabs on different nodes chat through the gateway", async () => {
  const first = await openTab("127.0.60.1");
  let second;
  // The page names the node that served it; find an address placed elsewhere.
  for (let i = 2; i <= 20 && !second; i++) {
    const tab = await openTab(`127.0.60.${i}`);
    if (tab.node !== first.node) second = tab;
    else await tab.page.close();
  }
  assert.ok(second, `every address landed on ${first.node}`);
  assert.match(first.node, /^node-[abc]$/);
  assert.match(second.node, /^node-[abc]$/);

  await send(first, "alice", "hello from " + first.node);
  await second.page.waitForSelector(`#log li:has-text('alice: hello from ${first.node}')`, { timeout: WAIT_MS });
  const seen = await second.page.textContent(`#log li:has-text('alice: hello from ${first.node}')`);
  assert.match(seen, new RegExp(`via ${first.node}`));

  await send(second, "bob", "hi back from " + second.node);
  await first.page.waitForSelector(`#log li:has-text('bob: hi back from ${second.node}')`, { timeout: WAIT_MS });

  // Each message shows once in each tab.
  for (const tab of [first, second]) {
    const texts = await tab.page.$$eval("#log li", (lis) => lis.map((li) => li.textContent));
    assert.equal(texts.filter((t) => t.startsWith("alice: hello")).length, 1, texts.join("\n"));
    assert.equal(texts.filter((t) => t.startsWith("bob: hi back")).length, 1, texts.join("\n"));
  }

  mkdirSync(artifacts, { recursive: true });
  await first.page.screenshot({ path: join(artifacts, "demo-tab-1.png") });
  await second.page.screenshot({ path: join(artifacts, "demo-tab-2.png") });
});

it("the chat of a tab whose node is killed carries on through the gateway, nothing missing", async () => {
  const nodes = await startMesh();
  const gatewayToml =
    'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\ntrusted_proxies = ["127.0.0.1/32"]\n' +
    '[health]\ninterval = "200ms"\ntimeout = "200ms"\nrise = 1\nfall = 1\n' +
    nodes.map((n) => `[[nodes]]\nname = "${n.name}"\naddr = "127.0.0.1:${n.port}"\n`).join("");
  const gateway = await startGateway(gatewayToml);
  try {
    const first = await openTab("127.0.61.1", gateway.url);
    let second;
    for (let i = 2; i <= 20 && !second; i++) {
      const tab = await openTab(`127.0.61.${i}`, gateway.url);
      if (tab.node !== first.node) second = tab;
      else await tab.page.close();
    }
    assert.ok(second, `every address landed on ${first.node}`);
    await send(second, "bob", "before");
    await first.page.waitForSelector("#log li:has-text('bob: before')", { timeout: WAIT_MS });

    const doomed = nodes.find((n) => n.name === first.node);
    assert.equal((await doomed.kill()).signal, "SIGKILL");
    await first.page.waitForSelector("#status:has-text('disconnected')", { timeout: WAIT_MS });
    for (let i = 1; i <= 5; i++) await send(second, "bob", `while down ${i}`);
    await first.page.waitForSelector("#log li.info:has-text('missed message(s) replayed')", { timeout: WAIT_MS });
    await send(second, "bob", "after");
    await first.page.waitForSelector("#log li:has-text('bob: after')", { timeout: WAIT_MS });

    const texts = await first.page.$$eval("#log li", (lis) => lis.map((li) => li.textContent));
    const chat = texts.filter((t) => t.startsWith("bob: "));
    assert.deepEqual(
      chat.map((t) => t.split(" (")[0]),
      ["bob: before", ...[1, 2, 3, 4, 5].map((i) => `bob: while down ${i}`), "bob: after"],
      texts.join("\n"),
    );
    assert.ok(chat.some((t) => t.includes("replayed")), texts.join("\n"));
    mkdirSync(artifacts, { recursive: true });
    await first.page.screenshot({ path: join(artifacts, "demo-resumed-tab.png") });
    await first.page.close();
    await second.page.close();
  } finally {
    await gateway.stop();
    for (const node of nodes) await node.stop();
  }
});
