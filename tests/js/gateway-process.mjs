// Runs a real `stickyio-gateway` binary from a gateway.toml this module
// writes (port 0 for both listeners), learns the bound addresses from its
// JSON "gateway listening" log line, and can rewrite the file, which the
// gateway watches and reloads.
import { spawn } from "node:child_process";
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { stopProcess } from "./node-process.mjs";

const binDir = process.env.STICKYIO_BIN_DIR ?? fileURLToPath(new URL("../../target/debug", import.meta.url));
const START_TIMEOUT_MS = 10_000;

/** `gateway.toml` text with both listeners on port 0 and `nodes` = [[name, "host:port"], …]. */
export function gatewayToml(nodes, extra = "") {
  const entries = nodes.map(([name, addr]) => `\n[[nodes]]\nname = "${name}"\naddr = "${addr}"\n`).join("");
  return `listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n${extra}${entries}`;
}

export async function startGateway(text) {
  const dir = mkdtempSync(join(tmpdir(), "stickyio-gw-js-"));
  const config = join(dir, "gateway.toml");
  writeFileSync(config, text);
  const bin = join(binDir, "stickyio-gateway");
  const child = spawn(bin, ["--log-json", "--config", config], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: "info" },
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const logs = [];
  let fields;
  try {
    fields = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${bin} did not log "gateway listening" within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      child.on("error", (e) => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${bin} (build it, or set STICKYIO_BIN_DIR): ${e.message}`));
      });
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`${bin} exited with ${code}:\n${logs.join("\n")}`));
      });
      createInterface({ input: child.stdout }).on("line", (line) => {
        logs.push(line);
        try {
          const event = JSON.parse(line);
          if (event.fields?.message === "gateway listening") {
            clearTimeout(timer);
            resolve(event.fields);
          }
        } catch {
          // Not JSON: keep reading so the pipe never fills up.
        }
      });
    });
  } catch (e) {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    url: `http://${fields.local_addr}`,
    admin: `http://${fields.admin_addr}`,
    logs,
    /** Replaces gateway.toml the way editors do (write, then rename over). */
    rewrite(newText) {
      writeFileSync(`${config}.tmp`, newText);
      renameSync(`${config}.tmp`, config);
    },
    async stop() {
      const result = await stopProcess(child, exited);
      rmSync(dir, { recursive: true, force: true });
      return result;
    },
  };
}
