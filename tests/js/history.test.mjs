// Resume from a cursor with the official socket.io-client, against real node
// processes: a subscriber on node A, a publisher on node B, SIGKILL node A
// mid-stream; the subscriber reconnects to node C with its last cursor
// (`subscribe {pattern, since}`) and ends with every message exactly once,
// in publish order.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startMesh } from "./node-process.mjs";
import { resumingSubscriber } from "./resume.mjs";

/** A subscribe ack without its `cursor` (the position now), which must be there. */
function withoutCursor(ack) {
  const { cursor, ...rest } = ack;
  assert.equal(typeof cursor, "string", JSON.stringify(ack));
  return rest;
}

const WAIT_MS = 15_000;
const TOTAL = 300;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `check()` holds; rejects after WAIT_MS naming `what`. */
async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(10);
  }
}

function connect(url) {
  const socket = io(url, { forceNew: true, reconnection: false, transports: ["websocket"] });
  return socket;
}

describe("resume after SIGKILL", () => {
  let nodes = [];
  before(async () => {
    nodes = await startMesh();
  });
  after(async () => {
    for (const node of nodes) await node.stop();
  });

  it("a subscriber of a killed node resumes on another with every message once, in order", async () => {
    const [a, b, c] = nodes;
    const publisher = connect(b.url);
    const received = [];
    const acks = [];
    const cursors = new Map();
    const options = { cursors, onMessage: (m) => received.push(m), onAck: (ack) => acks.push(ack) };
    const first = connect(a.url);
    resumingSubscriber(first, ["chat.#"], options);
    await until("the first subscribe is acked", () => acks.length === 1);
    assert.deepEqual(withoutCursor(acks[0]), { ok: true, pattern: "chat.#" });

    const published = [];
    const publishing = (async () => {
      for (let i = 0; i < TOTAL; i++) {
        const ack = await publisher.timeout(WAIT_MS).emitWithAck("publish", { topic: "chat.room1", content: i });
        assert.equal(ack.ok, true, JSON.stringify(ack));
        published.push(ack.id);
        if (i % 10 === 0) await sleep(5);
      }
    })();

    await until("a third has arrived", () => received.length >= TOTAL / 3);
    nodes = nodes.filter((n) => n !== a);
    const killed = await a.kill();
    assert.equal(killed.signal, "SIGKILL");
    const seenOnA = received.length;

    const second = connect(c.url);
    resumingSubscriber(second, ["chat.#"], options);
    await publishing;
    await until(`all ${TOTAL} arrived (have ${received.length})`, () => received.length >= TOTAL);
    await sleep(500);

    const resumed = acks[1];
    assert.equal(resumed.ok, true, JSON.stringify(resumed));
    assert.equal(resumed.recovered, true, JSON.stringify(resumed));
    assert.equal(received.length, TOTAL, "nothing twice");
    assert.deepEqual(received.map((m) => m.id), published, "every message once, in publish order");
    assert.ok(received.slice(seenOnA).some((m) => m.replayed), "what was missed came as a replay");
    assert.ok(received.every((m) => typeof m.cursor === "string"));
    first.close();
    second.close();
    publisher.close();
  });
});
