// End to end through the launcher's topology (gateway + three clustered
// nodes) with the official socket.io-client: many clients from distinct
// 127.x.y.z source addresses, over polling only, websocket only, and the
// default polling-then-upgrade, each pair chatting across two nodes.
//
// A mis-routed poll would surface as a connect_error or a lost ack
// (`400 Session ID unknown`); a broken mesh as a message that never comes.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { io } from "socket.io-client";
import { connected } from "./connected.mjs";
import { Inbox } from "./inbox.mjs";
import { freePortFlags, startLauncher } from "./launcher-process.mjs";

/** A subscribe ack without its `cursor` (the position now), which must be there. */
function withoutCursor(ack) {
  const { cursor, ...rest } = ack;
  assert.equal(typeof cursor, "string", JSON.stringify(ack));
  return rest;
}

const WAIT_MS = 10_000;
const CLIENTS = 40;

const request = (socket, event, arg) => socket.timeout(WAIT_MS).emitWithAck(event, arg);

/** A client whose every connection comes from `source`. */
async function connect(url, source, transports) {
  const agent = new http.Agent({ keepAlive: true, localAddress: source });
  const socket = io(url, { transports, agent, forceNew: true, reconnection: false });
  const inbox = new Inbox(socket, WAIT_MS);
  await connected(socket, source, WAIT_MS);
  // The node serving this session is the origin of the client's own publish.
  const topic = `whoami.${socket.id.replace(/[^A-Za-z0-9]/g, "")}`;
  assert.deepEqual(withoutCursor(await request(socket, "subscribe", topic)), { ok: true, pattern: topic });
  const ack = await request(socket, "publish", { topic, content: null });
  const own = await inbox.next();
  assert.equal(own.id, ack.id);
  assert.deepEqual(await request(socket, "unsubscribe", topic), { ok: true, pattern: topic });
  return { socket, inbox, source, node: own.node, agent };
}

/** Pairs clients of two different nodes: always from the two fullest nodes. */
function crossNodePairs(clients) {
  const byNode = new Map();
  for (const c of clients) byNode.set(c.node, [...(byNode.get(c.node) ?? []), c]);
  const nodes = [...byNode.keys()].sort();
  const pairs = [];
  for (;;) {
    const [a, b] = [...byNode.values()].sort((x, y) => y.length - x.length);
    if (!a?.length || !b?.length) break;
    pairs.push([a.pop(), b.pop()]);
  }
  return { nodes, pairs };
}

let launcher;
before(async () => {
  launcher = await startLauncher(await freePortFlags());
});
after(async () => {
  const exit = await launcher?.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, "launcher exits 0 on SIGTERM");
});

const modes = [
  { name: "polling only", transports: ["polling"], subnet: 11, final: "polling" },
  { name: "websocket only", transports: ["websocket"], subnet: 12, final: "websocket" },
  { name: "default upgrade", transports: undefined, subnet: 13, final: "websocket" },
];

for (const mode of modes) {
  describe(`through the gateway, ${mode.name}`, () => {
    let clients = [];
    after(() => {
      for (const c of clients) {
        c.socket.disconnect();
        c.agent.destroy();
      }
    });

    it("spreads clients over all three nodes and every cross-node pair chats exactly once", async () => {
      clients = await Promise.all(
        Array.from({ length: CLIENTS }, (_, i) => connect(launcher.url, `127.0.${mode.subnet}.${i + 1}`, mode.transports)),
      );
      const { nodes, pairs } = crossNodePairs(clients);
      assert.deepEqual(nodes, ["node-a", "node-b", "node-c"]);
      assert.ok(pairs.length >= 12, `only ${pairs.length} cross-node pairs`);

      if (mode.final === "websocket") {
        const deadline = Date.now() + WAIT_MS;
        while (clients.some((c) => c.socket.io.engine.transport.name !== "websocket")) {
          assert.ok(Date.now() < deadline, "not every client upgraded to websocket");
          await new Promise((r) => setTimeout(r, 50));
        }
      }

      await Promise.all(
        pairs.flatMap(([a, b], k) =>
          [a, b].map(async (c) => assert.deepEqual(withoutCursor(await request(c.socket, "subscribe", `chat.js.${k}`)), { ok: true, pattern: `chat.js.${k}` })),
        ),
      );
      await Promise.all(
        pairs.map(async ([a, b], k) => {
          const topic = `chat.js.${k}`;
          const hello = await request(a.socket, "publish", { topic, content: { text: `hi ${k}` } });
          assert.equal(hello.ok, true);
          const got = await b.inbox.next();
          assert.equal(got.id, hello.id);
          assert.equal(got.node, a.node);
          assert.notEqual(got.node, b.node);
          assert.equal(got.senderId, a.socket.id);
          assert.deepEqual(got.patterns, [topic]);
          assert.deepEqual(got.content, { text: `hi ${k}` });
          assert.equal((await a.inbox.next()).id, hello.id, "the sender gets its own message once");

          const reply = await request(b.socket, "publish", { topic, content: `re ${k}` });
          assert.equal((await a.inbox.next()).id, reply.id);
          assert.equal((await b.inbox.next()).id, reply.id);
        }),
      );

      // Exactly once: a marker published after everything arrives next,
      // so no duplicate or cross-talk is queued before it.
      await Promise.all(
        pairs.map(async ([a, b], k) => {
          const marker = await request(a.socket, "publish", { topic: `chat.js.${k}`, content: "marker" });
          assert.equal((await a.inbox.next()).id, marker.id);
          assert.equal((await b.inbox.next()).id, marker.id);
        }),
      );
      for (const c of clients) {
        assert.ok(c.socket.connected, `${c.source} lost its session`);
        assert.equal(c.socket.io.engine.transport.name, mode.final);
      }
    });
  });
}
