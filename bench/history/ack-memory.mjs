// Ack latency of `publish` with ack "local" and "replicated" over the mesh
// (and "local" over Redis), and the memory one stored message costs, with
// the official socket.io-client against release node processes started by
// scripts/bench-history.sh. Prints one JSON object.
//
//   node bench/history/ack-memory.mjs <node-a url> <redis node url> <history node url> <history pid> <control url> <control pid>
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../../tests/js/package.json", import.meta.url));
const { io } = require("socket.io-client");
const [meshUrl, redisUrl, historyUrl, historyPid, controlUrl, controlPid] = process.argv.slice(2);
const ACKS = 2000;
const STORED = 50_000;
// A chat message like the demo's.
const content = { name: "alice", text: "a message of about eighty bytes, as a chat line usually is ......" };

const connect = async (url) => {
  const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return socket;
};

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

async function ackLatency(url, ack) {
  const socket = await connect(url);
  const times = [];
  for (let i = 0; i < ACKS + 200; i++) {
    const start = process.hrtime.bigint();
    const reply = await socket.timeout(10_000).emitWithAck("publish", { topic: "bench.ack", content, ack });
    if (!reply.ok) throw new Error(JSON.stringify(reply));
    if (i >= 200) times.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  socket.close();
  times.sort((a, b) => a - b);
  return { p50_us: Math.round(percentile(times, 50)), p99_us: Math.round(percentile(times, 99)), n: times.length };
}

const rssKb = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]);

/** RSS growth of the node at `url` while it takes STORED publishes. */
async function growth(url, pid) {
  const socket = await connect(url);
  const before = rssKb(pid);
  const window = 64;
  let sent = 0;
  const inflight = new Set();
  while (sent < STORED) {
    while (inflight.size < window && sent < STORED) {
      const p = socket.timeout(10_000).emitWithAck("publish", { topic: `bench.store.${sent % 50}`, content });
      inflight.add(p);
      p.finally(() => inflight.delete(p));
      sent++;
    }
    await Promise.race(inflight);
  }
  await Promise.all(inflight);
  await new Promise((r) => setTimeout(r, 500));
  socket.close();
  return rssKb(pid) - before;
}

const result = {
  ack_local_mesh: await ackLatency(meshUrl, "local"),
  ack_replicated_mesh: await ackLatency(meshUrl, "replicated"),
  ack_redis: await ackLatency(redisUrl, "replicated"),
};
const withHistory = await growth(historyUrl, historyPid);
const without = await growth(controlUrl, controlPid);
result.memory = {
  stored: STORED,
  rss_growth_kb_with_history: withHistory,
  rss_growth_kb_without: without,
  bytes_per_stored_message: Math.round(((withHistory - without) * 1024) / STORED),
};
console.log(JSON.stringify(result));
process.exit(0);
