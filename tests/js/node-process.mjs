// Runs a real `stickyio-node` binary for the JS tests (and, through
// `spawnLogged`, the gateway in gateway-process.mjs): a config file, JSON
// logs, ready once it logs its "listening" line, which names the addresses
// it bound (port 0 picks free ones). Stopped with SIGTERM (SIGKILL if it hangs).
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
    };
  } catch (e) {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Starts a node named `name`; `settings` is extra node.toml text
 * (top-level keys such as `max_subscriptions = 3`); `listen` its address.
 */
export async function startNode({ name = "node-js", settings = "", listen = "127.0.0.1:0" } = {}) {
  const proc = await spawnLogged("stickyio-node", "node.toml", `listen = "${listen}"\nname = "${name}"\n${settings}`, "listening");
  return {
    url: `http://${proc.ready.addr}`,
    addr: proc.ready.addr,
    logs: proc.lines,
    /** SIGTERM, then wait; resolves to {code, signal} of the exit. */
    stop: proc.stop,
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
