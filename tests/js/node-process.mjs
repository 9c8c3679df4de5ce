// Runs a real `stickyio-node` binary for the JS tests (and, through
// `spawnLogged`, the gateway in gateway-process.mjs): a config file, JSON
// logs, ready once it logs its "listening" line, which names the client and
// admin addresses it bound (port 0 picks free ones). Stopped with SIGTERM
// (SIGKILL if it hangs), or killed with SIGKILL on purpose.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

// scripts/test.sh sets STICKYIO_BIN_DIR; default to the debug build.
const binDir = process.env.STICKYIO_BIN_DIR ?? fileURLToPath(new URL("../../target/debug", import.meta.url));
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 15_000;

/**
 * Writes `text` as `file` in a fresh temp dir, spawns the binary `name` from
 * the bin dir with `--log-json --config <that file>`, and resolves once it
 * logs `ready` (a message), to {config, events, lines, ready, stop}: `events`
 * keeps every JSON log line, `ready` is that line's fields, and `stop()`
 * sends SIGTERM, waits, removes the dir and resolves to {code, signal}.
 */
export async function spawnLogged(name, file, text, ready) {
  const dir = mkdtempSync(join(tmpdir(), "stickyio-js-"));
  const config = join(dir, file);
  writeFileSync(config, text);
  const bin = join(binDir, name);
  const child = spawn(bin, ["--log-json", "--config", config], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: "info" },
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const lines = [];
  const events = [];
  try {
    const fields = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${bin} did not log "${ready}" within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      child.on("error", (e) => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${bin} (build it, or set STICKYIO_BIN_DIR): ${e.message}`));
      });
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`${bin} exited with ${code} before listening:\n${lines.join("\n")}`));
      });
      // Keep reading every line so the pipe never fills up.
      createInterface({ input: child.stdout }).on("line", (line) => {
        lines.push(line);
        let event;
        try {
          event = JSON.parse(line);
        } catch {
          return;
        }
        events.push(event);
        if (event.fields?.message === ready) {
          clearTimeout(timer);
          resolve(event.fields);
        }
      });
    });
    return {
      config,
      events,
      lines,
      ready: fields,
      async stop() {
        const result = await stopProcess(child, exited);
        rmSync(dir, { recursive: true, force: true });
        return result;
      },
      /** SIGKILL: the process dies at once, without a word to anyone. */
      async kill() {
        child.kill("SIGKILL");
        const result = await exited;
        rmSync(dir, { recursive: true, force: true });
        return result;
      },
    };
  } catch (e) {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Starts a node named `name`; `settings` is extra node.toml text
 * (top-level keys such as `max_subscriptions = 3`, then tables); `listen`
 * its client address (or `port` on 127.0.0.1); its admin listener takes any
 * free port.
 */
export async function startNode({ name = "node-js", settings = "", port = 0, listen = `127.0.0.1:${port}` } = {}) {
  const text = `listen = "${listen}"\nadmin = "127.0.0.1:0"\nname = "${name}"\n${settings}`;
  const proc = await spawnLogged("stickyio-node", "node.toml", text, "listening");
  return {
    url: `http://${proc.ready.addr}`,
    addr: proc.ready.addr,
    adminUrl: `http://${proc.ready.admin}`,
    logs: proc.lines,
    /** SIGTERM, then wait; resolves to {code, signal} of the exit. */
    stop: proc.stop,
    kill: proc.kill,
  };
}

/** SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_MS; resolves to {code, signal}. */
export async function stopProcess(child, exited) {
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  let timer;
  const hung = new Promise((resolve) => {
    timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve(exited);
    }, STOP_TIMEOUT_MS);
  });
  const result = await Promise.race([exited, hung]);
  clearTimeout(timer);
  return result;
}

// Listeners here take ports below the ephemeral range (32768 and up): a
// port picked there is never taken, between the check and the server's bind,
// as the source port of some process's outgoing connection (seen as
// "Address already in use" while Chromium and other tests were connecting).
const LOW_PORT = 20_000;
const HIGH_PORT = 32_000;

/** Listens on `port` on loopback if it is free now; resolves to the server, or null. */
function hold(port) {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(null));
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

/**
 * `count` loopback ports free at the time of asking, below the ephemeral
 * range; `consecutive`: one run of them (node i of a launcher on base + i).
 */
// Handed out in turn from a start drawn per process, so two picks of one
// test file never land on the same port.
let nextPort = Math.floor(Math.random() * (HIGH_PORT - LOW_PORT));
function takePorts(count) {
  const offset = nextPort % (HIGH_PORT - LOW_PORT - count);
  nextPort += count;
  return LOW_PORT + offset;
}

export async function freePorts(count, { consecutive = false } = {}) {
  for (let attempt = 0; attempt < 100; attempt++) {
    const held = [];
    const base = takePorts(count);
    for (let i = 0; held.length < count && i < 4 * count; i++) {
      const port = consecutive ? base + i : takePorts(1);
      const server = await hold(port);
      if (server) held.push(server);
      else if (consecutive) break;
    }
    const ports = held.map((s) => s.address().port);
    await Promise.all(held.map((s) => new Promise((r) => s.close(r))));
    if (ports.length === count && new Set(ports).size === count) return ports;
  }
  throw new Error(`no ${count} free ports in ${LOW_PORT}-${HIGH_PORT}`);
}

/**
 * Three (or `names.length`) nodes meshed with each other; `settings` is
 * extra top-level node.toml text for each. Resolves once every node's
 * /readyz says it is linked to every peer.
 */
export async function startMesh({ names = ["node-a", "node-b", "node-c"], settings = "" } = {}) {
  const ports = await freePorts(names.length);
  const urls = ports.map((p) => `"http://127.0.0.1:${p}"`).join(", ");
  const nodes = await Promise.all(
    names.map((name, i) =>
      startNode({
        name,
        port: ports[i],
        settings: `${settings}\n[cluster]\nhost = "http://127.0.0.1:${ports[i]}"\nstandalone = false\n` +
          `cluster_nodes = [${urls}]\nsecret = "js-mesh-secret"\nretry_interval = "300ms"\n`,
      }),
    ),
  );
  await allReady(nodes, "linked to its peers");
  return nodes.map((node, i) => ({ ...node, name: names[i], port: ports[i] }));
}

/**
 * A `redis-server` of the test's own on a free loopback port, no
 * persistence: {url, stop(), restart()}. `restart()` SIGKILLs it and starts
 * it again on the same port, empty: a Redis that lost everything.
 */
export async function startRedis() {
  const [port] = await freePorts(1);
  const args = ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no"];
  let child;
  let exited;
  const launch = () =>
    new Promise((resolve, reject) => {
      child = spawn("redis-server", args, { stdio: ["ignore", "pipe", "inherit"] });
      exited = new Promise((done) => child.on("exit", (code, signal) => done({ code, signal })));
      const timer = setTimeout(() => reject(new Error(`redis-server did not start on ${port}`)), START_TIMEOUT_MS);
      child.on("error", (e) => {
        clearTimeout(timer);
        reject(new Error(`cannot run redis-server (scripts/test.sh installs it): ${e.message}`));
      });
      // Keep reading every line so the pipe never fills up.
      createInterface({ input: child.stdout }).on("line", (line) => {
        if (line.includes("Ready to accept connections")) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  await launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: () => stopProcess(child, exited),
    async restart() {
      child.kill("SIGKILL");
      await exited;
      await launch();
    },
  };
}

/** Resolves once every node's /readyz answers 200; rejects naming the first that does not. */
export async function allReady(nodes, what) {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (const node of nodes) {
    for (;;) {
      const ready = await fetch(`${node.adminUrl}/readyz`).then((r) => r.ok, () => false);
      if (ready) break;
      if (Date.now() > deadline) throw new Error(`${node.url} not ready (${what}) within ${START_TIMEOUT_MS} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * Three (or `names.length`) nodes on the Redis backend at `redisUrl`, under
 * a key prefix of their own. Resolves once every node is ready (subscribed,
 * heartbeat written).
 */
export async function startRedisPool(redisUrl, { names = ["node-a", "node-b", "node-c"] } = {}) {
  const prefix = `js-${process.pid}-${Date.now()}`;
  const nodes = await Promise.all(
    names.map((name) =>
      startNode({
        name,
        settings: `[cluster]\nstandalone = false\nbackend = "redis"\nredis_url = "${redisUrl}"\nredis_prefix = "${prefix}"\n`,
      }),
    ),
  );
  await allReady(nodes, "joined the Redis pool");
  return nodes.map((node, i) => ({ ...node, name: names[i] }));
}
