// Runs `stock-server.mjs` (a stock socket.io app) as a child process for
// the tests that put the gateway in front of plain Node.js servers.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { stopProcess } from "./node-process.mjs";

const WAIT_MS = 10_000;
const serverScript = fileURLToPath(new URL("./stock-server.mjs", import.meta.url));

/** Starts `node stock-server.mjs name`; resolves once it listens. */
export async function startStock(name) {
  const child = spawn(process.execPath, [serverScript, name], { stdio: ["ignore", "pipe", "inherit"] });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not listen within ${WAIT_MS} ms`)), WAIT_MS);
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = line.match(/^listening (\d+)$/);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
  return { name, addr: `127.0.0.1:${port}`, stop: () => stopProcess(child, exited) };
}

