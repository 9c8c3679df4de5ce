// The Node.js socket.io baseline for scripts/bench.sh.
//
// The primary/worker setup of the Socket.IO scaling tutorial: the primary
// owns the public port and hands connections to workers with
// @socket.io/sticky (so a polling session stays on one worker); the workers
// share rooms through @socket.io/cluster-adapter (ADAPTER=cluster) or
// @socket.io/redis-adapter against a local redis-server (ADAPTER=redis).
//
// Its events mirror stickyio's topic API so one load generator drives both:
// `subscribe` joins a room named after the topic, `publish` emits `message`
// to that room with the same fields stickyio sends. Rooms are exact names:
// no wildcard patterns.
//
// Env: PORT (required), HOST (default 127.0.0.1), WORKERS (default 3),
// ADAPTER (cluster | redis), REDIS_URL (default redis://127.0.0.1:6379).
"use strict";

const cluster = require("node:cluster");
const http = require("node:http");
const { Server } = require("socket.io");
const { setupMaster, setupWorker } = require("@socket.io/sticky");

const PORT = Number(process.env.PORT);
const HOST = process.env.HOST || "127.0.0.1";
const WORKERS = Number(process.env.WORKERS || 3);
const ADAPTER = process.env.ADAPTER || "cluster";
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";

if (!Number.isInteger(PORT) || PORT <= 0) {
  console.error("PORT must be set to a port number");
  process.exit(2);
}
if (ADAPTER !== "cluster" && ADAPTER !== "redis") {
  console.error(`ADAPTER must be cluster or redis, not ${ADAPTER}`);
  process.exit(2);
}

if (cluster.isPrimary) {
  const httpServer = http.createServer();
  setupMaster(httpServer, { loadBalancingMethod: "least-connection" });
  if (ADAPTER === "cluster") {
    require("@socket.io/cluster-adapter").setupPrimary();
  }
  // The cluster adapter's packets carry binary; "advanced" keeps them intact.
  cluster.setupPrimary({ serialization: "advanced" });
  httpServer.listen(PORT, HOST, () => {
    console.log(`primary ${process.pid} listening on ${HOST}:${PORT} (${ADAPTER} adapter, ${WORKERS} workers)`);
  });
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on("exit", (worker, code, signal) => {
    console.error(`worker ${worker.process.pid} exited (${signal || code})`);
  });
  const stop = () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    httpServer.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  start().catch((err) => {
    console.error(`worker ${process.pid}: ${err.stack || err}`);
    process.exit(1);
  });
}

async function start() {
  const httpServer = http.createServer();
  const io = new Server(httpServer);
  if (ADAPTER === "cluster") {
    io.adapter(require("@socket.io/cluster-adapter").createAdapter());
  } else {
    const { createClient } = require("redis");
    const pub = createClient({ url: REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(require("@socket.io/redis-adapter").createAdapter(pub, sub));
  }
  setupWorker(io);

  const node = `worker-${cluster.worker.id}`;
  let seq = 0;
  io.on("connection", (socket) => {
    socket.on("subscribe", (topic, ack) => {
      if (typeof ack !== "function") return;
      if (typeof topic !== "string" || topic === "") {
        return ack({ ok: false, error: { code: "invalid_topic", message: "topic must be a non-empty string" } });
      }
      socket.join(topic);
      ack({ ok: true, pattern: topic });
    });
    socket.on("unsubscribe", (topic, ack) => {
      if (typeof topic === "string") socket.leave(topic);
      if (typeof ack === "function") ack({ ok: true, pattern: topic });
    });
    socket.on("publish", (arg, ack) => {
      const reply = typeof ack === "function" ? ack : () => {};
      if (!arg || typeof arg.topic !== "string" || arg.topic === "") {
        return reply({ ok: false, error: { code: "invalid_payload", message: "expected {topic, content}" } });
      }
      const id = `${node}-${++seq}`;
      io.to(arg.topic).emit("message", {
        id,
        topic: arg.topic,
        content: arg.content,
        senderId: socket.id,
        createdAt: Date.now(),
        node,
        patterns: [arg.topic],
      });
      reply({ ok: true, id });
    });
  });
}
