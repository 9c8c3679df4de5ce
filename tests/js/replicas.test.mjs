// Two `stickyio-gateway` processes sharing a `route_key`, behind a
// round-robin TCP forwarder that sends each new connection of a client to
// the other replica, with the official socket.io-client over polling,
// websocket only and the default upgrade, in front of stickyio nodes and of
// stock Node.js socket.io servers.
//
// Polling clients use an agent without keep-alive, so each request is a new
// connection and the requests of one session alternate between replicas
// that share nothing but the key. A request routed wrongly would show as a
// connect_error or a lost ack (`400 Session ID unknown`, or `invalid_sid`).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { io } from "socket.io-client";
import { connected } from "./connected.mjs";
import { gatewayToml, startGateway } from "./gateway-process.mjs";
import { startNode } from "./node-process.mjs";
import { startStock } from "./stock-process.mjs";

const WAIT_MS = 10_000;
const ROUTE_KEY = "js-replica-tests-route-key-0123456789";
const MODES = {
  polling: ["polling"],
  websocket: ["websocket"],
  upgrade: ["polling", "websocket"],
};
const CLIENTS_PER_MODE = 4;

/**
 * A loopback TCP forwarder in front of `targets` ("host:port"): each new
 * connection from a source address goes to the next target in turn for
 * that address, from that same address (so the gateways see the client).
 */
async function alternatingForwarder(targets) {
  const turns = new Map();
  const open = new Set();
  const server = net.createServer((client) => {
    const source = client.remoteAddress;
    const used = turns.get(source) ?? [];
    turns.set(source, used);
    const target = used.length % targets.length;
    used.push(target);
    const [host, port] = targets[target].split(":");
    const upstream = net.connect({ host, port: Number(port), localAddress: source });
    for (const s of [client, upstream]) {
      open.add(s);
      s.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
      s.on("close", () => open.delete(s));
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    /** The replicas (0, 1) each connection from `source` went to, in order. */
    targetsOf: (source) => turns.get(source) ?? [],
    close: async () => {
      for (const s of open) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Polls `check` every 100 ms until it returns true, for at most WAIT_MS. */
async function eventually(what, check) {
  const deadline = Date.now() + WAIT_MS;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not within ${WAIT_MS} ms`);
}

/** A connected client from `source`; rejects on connect_error. */
async function connect(url, source, transports) {
  // No keep-alive and no socket limit: every request opens a new connection.
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity, localAddress: source });
  const socket = io(url, { transports, agent, forceNew: true, reconnection: false });
  await connected(socket, source, WAIT_MS);
  return socket;
}

/** Acked round trips with a stickyio node's topic API; resolves to the node's name. */
async function topicRoundTrips(socket, source) {
  const topic = `replicas.${source.replaceAll(".", "_")}`;
  const seen = [];
  socket.on("message", (m) => seen.push(m.node));
  const sub = await socket.timeout(WAIT_MS).emitWithAck("subscribe", topic);
  assert.equal(sub.ok, true, JSON.stringify(sub));
  for (let n = 0; n < 4; n++) {
    const ack = await socket.timeout(WAIT_MS).emitWithAck("publish", { topic, content: n });
    assert.equal(ack.ok, true, JSON.stringify(ack));
  }
  await eventually(`${source}: its 4 messages`, () => seen.length >= 4);
  assert.equal(new Set(seen).size, 1, `one session, one node: ${seen}`);
  return seen[0];
}

/** Acked `whoami` round trips with a stock server; resolves to its name. */
async function whoamiRoundTrips(socket) {
  const names = new Set();
  for (let n = 0; n < 5; n++) names.add(await socket.timeout(WAIT_MS).emitWithAck("whoami"));
  assert.equal(names.size, 1, `one session, one server: ${[...names]}`);
  return [...names][0];
}

async function invalidSids(gateway) {
  const text = await (await fetch(`${gateway.admin}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("stickyio_gateway_rejected_total{") && l.includes('reason="invalid_sid"'));
  return line ? Number(line.split(" ").pop()) : 0;
}

/** The suite for one kind of server behind two replicas. */
function replicaSuite(kind, start, roundTrips, subnet) {
  describe(`two gateway replicas in front of ${kind}`, () => {
    const servers = [];
    const gateways = [];
    let forwarder;

    before(async () => {
      for (const name of ["r-a", "r-b", "r-c"]) servers.push(await start(`${kind}-${name}`));
      const toml = gatewayToml(
        servers.map((s) => [s.name, s.addr]),
        `route_key = "${ROUTE_KEY}"\n`,
      );
      for (let i = 0; i < 2; i++) gateways.push(await startGateway(toml));
      forwarder = await alternatingForwarder(gateways.map((g) => new URL(g.url).host));
    });

    after(async () => {
      await forwarder?.close();
      for (const g of gateways) await g.stop();
      for (const s of servers) await s.stop();
    });

    Object.entries(MODES).forEach(([mode, transports], m) => {
      it(`serves ${mode} sessions through both replicas`, async () => {
        for (let i = 1; i <= CLIENTS_PER_MODE; i++) {
          const source = `127.${subnet}.${m + 1}.${i}`;
          const socket = await connect(forwarder.url, source, transports);
          try {
            const sid = socket.io.engine.id;
            assert.equal(sid.split(".").length, 3, `the sid is route-tagged: ${sid}`);
            const routes = await Promise.all(
              gateways.map(async (g) => (await fetch(`${g.admin}/route?sid=${encodeURIComponent(sid)}`)).json()),
            );
            assert.deepEqual(
              routes.map((r) => [r.valid, r.node]),
              [
                [true, routes[0].node],
                [true, routes[0].node],
              ],
              `both replicas read ${sid}`,
            );
            const server = await roundTrips(socket, source);
            assert.equal(server, routes[0].node, "the tag names the server that answers");
            if (mode === "upgrade") {
              await eventually(`${source}: upgraded`, () => socket.io.engine.transport.name === "websocket");
              assert.equal(await roundTrips(socket, source), server, "the same server after the upgrade");
            }
            if (mode !== "websocket") {
              const used = new Set(forwarder.targetsOf(source));
              assert.deepEqual([...used].sort(), [0, 1], `${source}'s requests went to both replicas`);
            }
          } finally {
            socket.disconnect();
          }
        }
        for (const g of gateways) assert.equal(await invalidSids(g), 0, "no sid refused");
      });
    });
  });
}

replicaSuite(
  "stickyio-nodes",
  async (name) => {
    const node = await startNode({ name });
    return { name, addr: node.addr, stop: node.stop };
  },
  topicRoundTrips,
  41,
);
replicaSuite("stock-servers", startStock, (socket) => whoamiRoundTrips(socket), 42);
