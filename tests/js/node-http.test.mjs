// What a browser gets from stickyio-node over plain HTTP: the demo page, the
// client script it loads and a bare health check; and what the admin
// listener serves operators: health, readiness and metrics.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { startNode } from "./node-process.mjs";

const WAIT_MS = 5_000;

async function get(node, path, base = node.url) {
  const response = await fetch(`${base}${path}`, { signal: AbortSignal.timeout(WAIT_MS) });
  return { status: response.status, type: response.headers.get("content-type"), body: await response.text() };
}

describe("stickyio-node HTTP", () => {
  let node;
  before(async () => {
    node = await startNode({ name: "node-http" });
  });
  after(async () => {
    if (node) await node.stop();
  });

  it("serves the demo page naming the node, with relative URLs", async () => {
    const page = await get(node, "/");
    assert.equal(page.status, 200);
    assert.equal(page.type, "text/html; charset=utf-8");
    assert.match(page.body, /<strong id="node">node-http<\/strong>/);
    assert.match(page.body, /<script src="socket.io.min.js"><\/script>/);
    assert.doesNotMatch(page.body, /(src|href)="(https?:)?\/\//, "no absolute or CDN URLs");
  });

  it("serves the official client script outside the Engine.IO path", async () => {
    const script = await get(node, "/socket.io.min.js");
    assert.equal(script.status, 200);
    assert.equal(script.type, "text/javascript; charset=utf-8");
    const { version } = JSON.parse(
      await (await import("node:fs/promises")).readFile(new URL("./node_modules/socket.io-client/package.json", import.meta.url)),
    );
    assert.ok(script.body.startsWith(`/*!\n * Socket.IO v${version}\n`), "the vendored client is the npm version under test");
  });

  it("answers a bare /healthz on the client port, and nothing about its internals", async () => {
    assert.deepEqual(await get(node, "/healthz"), { status: 200, type: "text/plain; charset=utf-8", body: "ok\n" });
    for (const path of ["/readyz", "/metrics"]) assert.equal((await get(node, path)).status, 404, path);
  });

  it("answers /healthz, /readyz and /metrics on the admin listener", async () => {
    assert.deepEqual(await get(node, "/healthz", node.adminUrl), { status: 200, type: "text/plain; charset=utf-8", body: "ok\n" });
    const ready = await get(node, "/readyz", node.adminUrl);
    assert.equal(ready.status, 200);
    assert.deepEqual(JSON.parse(ready.body), { ready: true, node: "node-http", checks: { listening: { ready: true } } });
    const metrics = await get(node, "/metrics", node.adminUrl);
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /^stickyio_node_connected_sockets\{node="node-http"\} \d+$/m);
  });

  it("exits 0 on SIGTERM", async () => {
    const { code, signal } = await node.stop();
    node = undefined;
    assert.deepEqual({ code, signal }, { code: 0, signal: null });
  });
});
