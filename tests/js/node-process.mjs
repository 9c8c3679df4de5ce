// Runs real `stickyio-node` and `stickyio-gateway` binaries for the JS
// tests: each gets a config file, logs JSON, and is ready once it logs its
// "listening" line, which names the addresses it bound (port 0 picks free
// ones). Stopped with SIGTERM (SIGKILL if it hangs).
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
 * Spawns `name` from the bin dir with `--log-json --config config` and
 * resolves once it logs `ready` (a message); to {child, exited, events, ready},
 * where `events` keeps every JSON log line and `ready` is that line's fields.
 */
async function spawnLogged(name, config, ready, env = {}) {
  const bin = join(binDir, name);
  const child = spawn(bin, ["--log-json", "--config", config], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: "info", ...env },
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
    return { child, exited, events, lines, ready: fields };
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  }
}

/**
 * Starts a node named `name`; `settings` is extra node.toml text
 * (top-level keys such as `max_subscriptions = 3`); `listen` its address.
 */
export async function startNode({ name = "node-js", settings = "", listen = "127.0.0.1:0" } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "stickyio-js-"));
  const config = join(dir, "node.toml");
  writeFileSync(config, `listen = "${listen}"\nname = "${name}"\n${settings}`);
  let proc;
  try {
    proc = await spawnLogged("stickyio-node", config, "listening");
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    url: `http://${proc.ready.addr}`,
    addr: proc.ready.addr,
    logs: proc.lines,
    /** SIGTERM, then wait; resolves to {code, signal} of the exit. */
    async stop() {
      const result = await stopProcess(proc.child, proc.exited);
      rmSync(dir, { recursive: true, force: true });
      return result;
    },
  };
}

/**
 * Starts a gateway from the config file at `config` (it stays watched, so
 * rewriting it reloads). `events` collects its JSON log lines.
 */
export async function startGateway(config) {
  const proc = await spawnLogged("stickyio-gateway", config, "gateway listening", { RUST_LOG: "info" });
  return {
    url: `http://${proc.ready.local_addr}`,
    admin: `http://${proc.ready.admin_addr}`,
    events: proc.events,
    stop: () => stopProcess(proc.child, proc.exited),
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
