// The topic API of stickyio-node through the official socket.io-client, over
// long-polling only and over websocket only.
//
// "Did not arrive" is checked by publishing a marker the client does receive
// and asserting it comes next: a node delivers before it acks a publish.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { Inbox } from "./inbox.mjs";
import { startNode } from "./node-process.mjs";

/** A subscribe ack without its `cursor` (the position now), which must be there. */
function withoutCursor(ack) {
  const { cursor, ...rest } = ack;
  assert.equal(typeof cursor, "string", JSON.stringify(ack));
  return rest;
}

const WAIT_MS = 5_000;

function request(socket, event, ...args) {
  return socket.timeout(WAIT_MS).emitWithAck(event, ...args);
}

async function metric(node, series) {
  const text = await (await fetch(`${node.adminUrl}/metrics`, { signal: AbortSignal.timeout(WAIT_MS) })).text();
  const line = text.split("\n").find((l) => l.startsWith(`stickyio_node_${series}{`));
  assert.ok(line, `no ${series} in\n${text}`);
  return Number(line.split(" ").pop());
}

/** Polls a metric until it equals `want`, for at most WAIT_MS. */
async function waitForMetric(node, series, want) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const got = await metric(node, series);
    if (got === want) return;
    assert.ok(Date.now() < deadline, `${series} stayed ${got}, wanted ${want}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function assertError(reply, code) {
  assert.equal(reply.ok, false, JSON.stringify(reply));
  assert.equal(reply.error.code, code, JSON.stringify(reply));
  assert.equal(typeof reply.error.message, "string");
  assert.ok(reply.error.message.length > 0);
}

for (const transport of ["polling", "websocket"]) {
  describe(`stickyio-node topic API over ${transport}`, () => {
    let node;
    const sockets = [];

    before(async () => {
      node = await startNode({
        name: "node-js",
        settings: "max_subscriptions = 3\nmax_message_bytes = 200\nmax_payload = 4096\n",
      });
    });

    after(async () => {
      for (const s of sockets) s.close();
      if (node) {
        const { code } = await node.stop();
        assert.equal(code, 0, "SIGTERM exits 0");
      }
    });

    async function connect() {
      const socket = io(node.url, { transports: [transport], reconnection: false, forceNew: true, timeout: WAIT_MS });
      sockets.push(socket);
      const inbox = new Inbox(socket, WAIT_MS);
      await new Promise((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
      });
      assert.equal(socket.io.engine.transport.name, transport);
      return { socket, inbox };
    }

    async function subscribe(socket, pattern) {
      assert.deepEqual(withoutCursor(await request(socket, "subscribe", pattern)), { ok: true, pattern });
    }

    async function publish(socket, topic, content) {
      const reply = await request(socket, "publish", { topic, content });
      assert.equal(reply.ok, true, JSON.stringify(reply));
      return reply.id;
    }

    it("answers a request sent the moment the socket connects", async () => {
      // Repeated because the race it guards against (an event arriving
      // before the server registered its handlers) does not lose every time.
      for (let i = 0; i < 20; i++) {
        const socket = io(node.url, { transports: [transport], reconnection: false, forceNew: true, timeout: WAIT_MS });
        sockets.push(socket);
        const reply = await new Promise((resolve, reject) => {
          socket.once("connect", () => request(socket, "subscriptions").then(resolve, reject));
          socket.once("connect_error", reject);
        });
        assert.deepEqual(reply, { ok: true, patterns: [] });
        socket.close();
      }
    });

    it("news.* gets news.eu but not news.eu.fr; news.# gets both", async () => {
      const star = await connect();
      const hash = await connect();
      const publisher = await connect();
      await subscribe(star.socket, "news.*");
      await subscribe(hash.socket, "news.#");

      const id = await publish(publisher.socket, "news.eu", { text: "eu" });
      await publish(publisher.socket, "news.eu.fr", { text: "fr" });
      await publish(publisher.socket, "news.us", { text: "marker" });

      const first = await star.inbox.next();
      assert.deepEqual(first, {
        id,
        topic: "news.eu",
        content: { text: "eu" },
        senderId: publisher.socket.id,
        createdAt: first.createdAt,
        node: "node-js",
        patterns: ["news.*"],
        cursor: first.cursor,
      });
      assert.match(first.cursor, /^[A-Za-z0-9_-]{40,}$/, "an opaque, URL-safe cursor");
      assert.ok(Math.abs(first.createdAt - Date.now()) < 60_000, "createdAt is epoch milliseconds");
      assert.equal((await star.inbox.next()).content.text, "marker", "news.* must not receive news.eu.fr");

      assert.equal((await hash.inbox.next()).topic, "news.eu");
      const fr = await hash.inbox.next();
      assert.equal(fr.topic, "news.eu.fr");
      assert.deepEqual(fr.patterns, ["news.#"]);
      assert.equal((await hash.inbox.next()).content.text, "marker");
    });

    it("delivers once per socket with every matching pattern", async () => {
      const sub = await connect();
      const publisher = await connect();
      for (const p of ["a.b", "a.*", "a.#"]) await subscribe(sub.socket, p);
      await publish(publisher.socket, "a.b", 1);
      await publish(publisher.socket, "a.c.d", "marker");
      const message = await sub.inbox.next();
      assert.equal(message.content, 1);
      assert.deepEqual([...message.patterns].sort(), ["a.#", "a.*", "a.b"]);
      const next = await sub.inbox.next();
      assert.equal(next.content, "marker", "the first message arrived twice");
      assert.deepEqual(next.patterns, ["a.#"]);
    });

    it("unsubscribe stops delivery; subscriptions lists what is held; subscribe is idempotent", async () => {
      const sub = await connect();
      const publisher = await connect();
      await subscribe(sub.socket, "x.*");
      await subscribe(sub.socket, "y.*");
      await subscribe(sub.socket, "x.*");
      assert.deepEqual(await request(sub.socket, "subscriptions"), { ok: true, patterns: ["x.*", "y.*"] });
      assert.deepEqual(await request(sub.socket, "unsubscribe", "x.*"), { ok: true, pattern: "x.*" });
      assert.deepEqual(await request(sub.socket, "subscriptions"), { ok: true, patterns: ["y.*"] });
      await publish(publisher.socket, "x.1", "gone");
      await publish(publisher.socket, "y.1", "marker");
      assert.equal((await sub.inbox.next()).content, "marker");
    });

    it("refuses bad topics and patterns with invalid_topic", async () => {
      const { socket } = await connect();
      const empty = await request(socket, "subscribe", "a..b");
      assertError(empty, "invalid_topic");
      assert.equal(empty.error.message, 'segment 2 of pattern "a..b" is empty');
      assertError(await request(socket, "subscribe", "a*"), "invalid_topic");
      assertError(await request(socket, "subscribe", "#.a"), "invalid_topic");
      assertError(await request(socket, "unsubscribe", ""), "invalid_topic");
      assertError(await request(socket, "publish", { topic: "news.*", content: 1 }), "invalid_topic");
      assertError(await request(socket, "publish", { topic: "a\nb", content: 1 }), "invalid_topic");
    });

    it("refuses malformed arguments with invalid_payload", async () => {
      const { socket } = await connect();
      const number = await request(socket, "publish", 42);
      assertError(number, "invalid_payload");
      assert.equal(number.error.message, "publish takes an object {topic, content}; got a number");
      assertError(await request(socket, "publish", { content: "no topic" }), "invalid_payload");
      assertError(await request(socket, "publish", { topic: "a" }), "invalid_payload");
      assertError(await request(socket, "publish"), "invalid_payload");
      assertError(await request(socket, "subscribe"), "invalid_payload");
      assertError(await request(socket, "subscribe", { topic: "a" }), "invalid_payload");
      assertError(await request(socket, "subscribe", { pattern: "a", since: "garbage!" }), "invalid_cursor");
      assertError(await request(socket, "unsubscribe", 7), "invalid_payload");
    });

    it("refuses a fourth pattern with too_many_subscriptions", async () => {
      const { socket } = await connect();
      for (const p of ["p.1", "p.2", "p.3"]) await subscribe(socket, p);
      const reply = await request(socket, "subscribe", "p.4");
      assertError(reply, "too_many_subscriptions");
      assert.match(reply.error.message, /3 subscriptions/);
      await subscribe(socket, "p.1");
      await request(socket, "unsubscribe", "p.1");
      await subscribe(socket, "p.4");
    });

    it("refuses content over max_message_bytes with too_large", async () => {
      const { socket } = await connect();
      const reply = await request(socket, "publish", { topic: "big", content: "x".repeat(300) });
      assertError(reply, "too_large");
      assert.equal(reply.error.message, "content is 302 bytes as JSON; the limit is 200");
    });

    it("closes a connection that sends more than max_payload, and keeps serving", async () => {
      const big = await connect();
      const closed = new Promise((resolve) => big.socket.once("disconnect", resolve));
      big.socket.emit("publish", { topic: "huge", content: "x".repeat(10_000) });
      const reason = await Promise.race([
        closed,
        new Promise((_, reject) => setTimeout(() => reject(new Error("still connected")), WAIT_MS)),
      ]);
      assert.match(reason, /transport (close|error)/);
      const other = await connect();
      await subscribe(other.socket, "after");
      await publish(other.socket, "after", "ok");
      assert.equal((await other.inbox.next()).content, "ok");
    });

    it("removes a socket's subscriptions when it disconnects", async () => {
      const before = await metric(node, "subscriptions");
      const { socket } = await connect();
      for (const p of ["gone.1", "gone.2"]) await subscribe(socket, p);
      assert.equal(await metric(node, "subscriptions"), before + 2);
      socket.close();
      await waitForMetric(node, "subscriptions", before);
    });
  });
}
