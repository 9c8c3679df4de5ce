// Runs a real `stickyio-node` binary for the JS client tests: writes a temp
// config listening on port 0 (client and admin), waits for the JSON
// "listening" log line to learn both addresses, and stops the process with SIGTERM (SIGKILL if it hangs).
import { spawn } from "node:child_process";
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
 * Starts a node named `name`; `settings` is extra node.toml text
 * (top-level keys such as `max_subscriptions = 3`).
 */
export async function startNode({ name = "node-js", settings = "" } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "stickyio-js-"));
  const config = join(dir, "node.toml");
  writeFileSync(config, `listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nname = "${name}"\n${settings}`);
  const bin = join(binDir, "stickyio-node");
  const child = spawn(bin, ["--log-json", "--config", config], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: "info" },
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const lines = [];
  let addr;
  let admin;
  try {
    ({ addr, admin } = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${bin} did not log "listening" within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
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
        if (event.fields?.message === "listening") {
          clearTimeout(timer);
          resolve({ addr: event.fields.addr, admin: event.fields.admin });
        }
      });
    }));
  } catch (e) {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }

  return {
    url: `http://${addr}`,
    /** The admin listener: /healthz, /readyz, /metrics. */
    adminUrl: `http://${admin}`,
    logs: lines,
    /** SIGTERM, then wait; resolves to {code, signal} of the exit. */
    async stop() {
      const result = await stopProcess(child, exited);
      rmSync(dir, { recursive: true, force: true });
      return result;
    },
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
