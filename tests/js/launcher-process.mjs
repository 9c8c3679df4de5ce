// Runs the `stickyio` local launcher (gateway + three clustered nodes, as
// `cargo run --release` does) for the end-to-end tests, on ports of its own,
// and reads the public and admin URLs from the summary it prints.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { freePorts, stopProcess } from "./node-process.mjs";

const binDir = process.env.STICKYIO_BIN_DIR ?? fileURLToPath(new URL("../../target/debug", import.meta.url));
const START_TIMEOUT_MS = 30_000;

/** The first of `count` consecutive free loopback ports. */
async function freeRun(count) {
  return (await freePorts(count, { consecutive: true }))[0];
}

/**
 * Launcher flags for ports free at the time of asking: the gateway's, its
 * admin listener's, and three consecutive ones for the nodes (node i
 * listens on `--node-port` + i) and for their admin listeners.
 */
export async function freePortFlags() {
  return [
    "--port", String(await freeRun(1)),
    "--admin-port", String(await freeRun(1)),
    "--node-port", String(await freeRun(3)),
    "--node-admin-port", String(await freeRun(3)),
  ];
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
