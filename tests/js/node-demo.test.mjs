// The demo page's own script, run against a node: two "tabs" join the same
// topic and chat. A minimal stand-in for the DOM (just what the page uses)
// replaces a browser; the Socket.IO client is the real one.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import vm from "node:vm";
import { io } from "socket.io-client";
import { startNode } from "./node-process.mjs";

const WAIT_MS = 5_000;

function element(value = "") {
  return {
    value,
    textContent: "",
    className: "",
    children: [],
    scrollTop: 0,
    scrollHeight: 0,
    listeners: {},
    appendChild(child) {
      this.children.push(child);
    },
    addEventListener(type, listener) {
      this.listeners[type] = listener;
    },
  };
}

/** Runs the page's inline script as one tab; returns its elements and socket. */
function openTab(html, url) {
  const values = Object.fromEntries([...html.matchAll(/<input id="(\w+)" value="([^"]*)"/g)].map((m) => [m[1], m[2]]));
  const elements = new Map();
  const byId = (id) => {
    if (!elements.has(id)) elements.set(id, element(values[id]));
    return elements.get(id);
  };
  const sockets = [];
  const context = {
    location: { pathname: "/" },
    document: { getElementById: byId, createElement: () => element() },
    // The page calls io({ path }) for its own origin; point it at the node.
    io: (options) => {
      const socket = io(url, { ...options, reconnection: false, forceNew: true });
      sockets.push(socket);
      return socket;
    },
    JSON,
  };
  const script = html.match(/<script>([\s\S]*?)<\/script>/)[1];
  vm.runInNewContext(script, context);
  const log = () => byId("log").children.map((li) => li.textContent + li.children.map((c) => c.textContent).join(""));
  return { byId, log, socket: sockets[0] };
}

async function until(what, condition) {
  const deadline = Date.now() + WAIT_MS;
  while (!condition()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("stickyio-node demo page", () => {
  let node;
  const tabs = [];
  before(async () => {
    node = await startNode({ name: "node-demo" });
  });
  after(async () => {
    for (const tab of tabs) tab.socket.close();
    if (node) await node.stop();
  });

  it("lets two tabs chat on a topic", async () => {
    const html = await (await fetch(`${node.url}/`, { signal: AbortSignal.timeout(WAIT_MS) })).text();
    const alice = openTab(html, node.url);
    const bob = openTab(html, node.url);
    tabs.push(alice, bob);
    for (const tab of [alice, bob]) {
      await until("joining chat.lobby", () => tab.log().includes("joined chat.lobby"));
      assert.match(tab.byId("status").textContent, /^connected as /);
    }

    bob.byId("name").value = "bob";
    bob.byId("text").value = "hello alice";
    bob.byId("send").listeners.submit({ preventDefault() {} });

    const line = "bob: hello alice (chat.lobby, via node-demo)";
    await until("alice to see bob's message", () => alice.log().includes(line));
    await until("bob to see his own message", () => bob.log().includes("bob: hello alice (chat.lobby, via node-demo, you)"));
    assert.equal(bob.byId("text").value, "", "the input is cleared once the node acks");
  });
});
