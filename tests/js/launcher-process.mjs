// Runs the `stickyio` local launcher (gateway + three clustered nodes, as
// `cargo run --release` does) for the end-to-end tests, on ports of its own,
// and reads the public and admin URLs from the summary it prints.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { stopProcess } from "./node-process.mjs";

const binDir = process.env.STICKYIO_BIN_DIR ?? fileURLToPath(new URL("../../target/debug", import.meta.url));
const START_TIMEOUT_MS = 30_000;

/** Whether `port` can be listened on on loopback now; resolves to a closer, or null. */
function hold(port) {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(null));
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

/** The first of `count` consecutive loopback ports free at the time of asking. */
async function freeRun(count) {
  for (let attempt = 0; attempt < 100; attempt++) {
    const first = await hold(0);
    const base = first.address().port;
    const held = [first];
    for (let i = 1; i < count && held.length === i && base + i < 65536; i++) {
      const next = await hold(base + i);
      if (next) held.push(next);
    }
    await Promise.all(held.map((s) => new Promise((r) => s.close(r))));
    if (held.length === count) return base;
  }
  throw new Error(`no ${count} consecutive free ports`);
}

/**
 * Launcher flags for ports free at the time of asking: the gateway's, its
 * admin listener's, and three consecutive ones for the nodes (node i
 * listens on `--node-port` + i).
 */
export async function freePortFlags() {
  return ["--port", String(await freeRun(1)), "--admin-port", String(await freeRun(1)), "--node-port", String(await freeRun(3))];
}

/** `args`: launcher flags, e.g. [...await freePortFlags(), "--config-dir", dir]. */
export async function startLauncher(args) {
  const bin = join(binDir, "stickyio");
  const child = spawn(bin, args, {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const lines = [];
  const urls = {};
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${bin} printed no summary within ${START_TIMEOUT_MS} ms:\n${lines.join("\n")}`)), START_TIMEOUT_MS);
      child.on("error", (e) => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${bin} (build it, or set STICKYIO_BIN_DIR): ${e.message}`));
      });
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`${bin} exited with ${code}:\n${lines.join("\n")}`));
      });
      createInterface({ input: child.stdout }).on("line", (line) => {
        lines.push(line);
        const m = line.match(/^\s+(public|admin)\s+(http:\/\/\S+)/);
        if (m) urls[m[1]] = m[2];
        if (urls.public && urls.admin) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  }
  return {
    url: urls.public,
    admin: urls.admin,
    output: lines,
    /** SIGTERM, then wait; resolves to {code, signal}. */
    stop: () => stopProcess(child, exited),
  };
}
