// Runs a real `stickyio-gateway` binary from a gateway.toml this module
// writes (port 0 for both listeners), learns the bound addresses from its
// JSON "gateway listening" log line, and can rewrite the file, which the
// gateway watches and reloads.
import { renameSync, writeFileSync } from "node:fs";
import { spawnLogged } from "./node-process.mjs";

/** `gateway.toml` text with both listeners on port 0 and `nodes` = [[name, "host:port"], …]. */
export function gatewayToml(nodes, extra = "") {
  const entries = nodes.map(([name, addr]) => `\n[[nodes]]\nname = "${name}"\naddr = "${addr}"\n`).join("");
  return `listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n${extra}${entries}`;
}

export async function startGateway(text) {
  const proc = await spawnLogged("stickyio-gateway", "gateway.toml", text, "gateway listening");
  return {
    url: `http://${proc.ready.local_addr}`,
    admin: `http://${proc.ready.admin_addr}`,
    logs: proc.lines,
    /** Every JSON log line, parsed. */
    events: proc.events,
    /** Replaces gateway.toml the way editors do (write, then rename over). */
    rewrite(newText) {
      writeFileSync(`${proc.config}.tmp`, newText);
      renameSync(`${proc.config}.tmp`, proc.config);
    },
    stop: proc.stop,
  };
}
