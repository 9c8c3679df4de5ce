// The gateway in front of stock Socket.IO servers, with the default config:
// three plain Node.js `socket.io` 4 apps (no /healthz, 404 elsewhere), the
// official socket.io-client over polling, websocket and the default upgrade,
// a room broadcast, and a node added live by editing gateway.toml.
//
// A server wrongly marked down shows as `503 no_healthy_node`; a mis-routed
// request of a session as `400 Session ID unknown` (a connect_error or a
// lost ack).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { io } from "socket.io-client";
import { connected } from "./connected.mjs";
import { gatewayToml, startGateway } from "./gateway-process.mjs";
import { startStock } from "./stock-process.mjs";

const WAIT_MS = 10_000;
async function adminJson(gateway, path) {
  const res = await fetch(`${gateway.admin}${path}`);
  assert.equal(res.status, 200, path);
  return res.json();
}

/** Polls `check` every 100 ms until it returns true, for at most `ms`. */
async function eventually(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not within ${ms} ms${last ? `: ${last.message}` : ""}`);
}

/** A connected client whose every connection comes from `source`. */
async function connect(gateway, source, transports) {
  const agent = new http.Agent({ keepAlive: true, localAddress: source });
  const socket = io(gateway.url, { transports, agent, forceNew: true, reconnection: false });
  await connected(socket, source, WAIT_MS);
  return socket;
}

const whoami = (socket) => socket.timeout(WAIT_MS).emitWithAck("whoami");

/** Several acked round trips, so a long-polling session makes many requests. */
async function roundTrips(socket, n = 5) {
  const names = new Set();
  for (let i = 0; i < n; i++) names.add(await whoami(socket));
  assert.equal(names.size, 1, `one session, one server: ${[...names]}`);
  return [...names][0];
}

describe("stock socket.io servers behind the gateway, default config", () => {
  const servers = [];
  let gateway;

  before(async () => {
    for (const name of ["stock-a", "stock-b", "stock-c"]) servers.push(await startStock(name));
    gateway = await startGateway(gatewayToml(servers.map((s) => [s.name, s.addr])));
  });

  after(async () => {
    await gateway?.stop();
    for (const s of servers) await s.stop();
  });

  it("keeps every server up past several check intervals", async () => {
    // The default check runs every 2 s and takes a node out after 2 fails.
    await new Promise((r) => setTimeout(r, 5_000));
    const nodes = await adminJson(gateway, "/nodes");
    assert.deepEqual(
      nodes.map((n) => [n.name, n.healthy, n.last_check?.ok]),
      servers.map((s) => [s.name, true, true]),
    );
    const metrics = await (await fetch(`${gateway.admin}/metrics`)).text();
    assert.match(metrics, /^stickyio_gateway_fail_open 0$/m);
  });

  for (const [label, transports] of [
    ["polling", ["polling"]],
    ["websocket", ["websocket"]],
    ["polling then upgrade", ["polling", "websocket"]],
  ]) {
    it(`serves ${label} sessions on every server, each on one server`, async () => {
      const clients = [];
      const seen = new Set();
      for (let i = 1; i <= 12; i++) {
        const socket = await connect(gateway, `127.0.7.${i}`, transports);
        clients.push(socket);
        seen.add(await roundTrips(socket));
      }
      assert.equal(seen.size, 3, `clients reached ${[...seen]}`);
      for (const socket of clients) socket.close();
    });
  }

  it("delivers a room broadcast to the room and not beyond", async () => {
    // One address, so one server: a stock app has no adapter between servers.
    const [alice, bob, carol] = await Promise.all([1, 2, 3].map(() => connect(gateway, "127.0.8.1", ["polling", "websocket"])));
    const names = await Promise.all([alice, bob].map((s) => s.timeout(WAIT_MS).emitWithAck("join", "room-1")));
    assert.equal(new Set([...names, await whoami(carol)]).size, 1);
    const heard = new Promise((resolve) => bob.once("room message", resolve));
    let carolHeard = false;
    carol.on("room message", () => {
      carolHeard = true;
    });
    alice.emit("to room", { room: "room-1", text: "hello room" });
    assert.deepEqual(await heard, { text: "hello room", from: names[0] });
    // A round trip on carol's session after the broadcast: had it reached her, it would be in by now.
    await whoami(carol);
    assert.equal(carolHeard, false);
    for (const s of [alice, bob, carol]) s.close();
  });

  it("places new clients on a node added live while old sessions carry on", async () => {
    const old = [];
    for (let i = 1; i <= 6; i++) old.push(await connect(gateway, `127.0.9.${i}`, ["polling"]));
    const before = await Promise.all(old.map((s) => roundTrips(s, 1)));
    const added = await startStock("stock-d");
    servers.push(added);
    gateway.rewrite(gatewayToml(servers.map((s) => [s.name, s.addr])));
    await eventually("the gateway lists stock-d", async () => (await adminJson(gateway, "/nodes")).some((n) => n.name === "stock-d"));
    // An address the new ranking gives to stock-d.
    let source;
    for (let i = 1; i <= 250 && !source; i++) {
      const route = await adminJson(gateway, `/route?ip=127.0.10.${i}`);
      if (route.node === "stock-d") source = `127.0.10.${i}`;
    }
    assert.ok(source, "some address ranks stock-d first");
    const fresh = await connect(gateway, source, ["polling"]);
    assert.equal(await roundTrips(fresh), "stock-d");
    // Sessions opened before the edit stay on their servers.
    assert.deepEqual(await Promise.all(old.map((s) => roundTrips(s, 3))), before);
    for (const s of [...old, fresh]) s.close();
  });
});
