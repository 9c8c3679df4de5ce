#!/usr/bin/env python3
"""Turns the load generator's JSON reports (bench/results/raw/*.json, one per
workload, setup and round) into results.json and results.md: absolute
numbers per setup (mean over rounds) and the ratios of stickyio to each
baseline, with the issue's targets checked. Called by scripts/bench.sh."""

import glob
import json
import os
import statistics
import sys

out = sys.argv[1]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "raw", "w*--*--r*.json"))):
    workload, setup, _ = os.path.basename(path)[: -len(".json")].split("--")
    with open(path) as f:
        runs.setdefault(workload, {}).setdefault(setup, []).append(json.load(f))


names = {}
pids_file = os.path.join(out, "pids.txt")
if os.path.exists(pids_file):
    with open(pids_file) as f:
        names = dict(line.split() for line in f if line.strip())


def cpu_by_name(reports):
    by = {}
    for r in reports:
        for pid, cores in r["extra"].get("cpu", {}).get("cores_by_pid", {}).items():
            by.setdefault(names.get(pid, pid), []).append(cores)
    return {n: round(statistics.fmean(v), 2) for n, v in by.items()}


def mean(values):
    return statistics.fmean(values) if values else 0.0


def summary(reports):
    extra = lambda key: mean([r["extra"].get(key, 0) for r in reports])
    return {
        "rounds": len(reports),
        "rate_per_s": mean([r["rate_per_s"] for r in reports]),
        "rate_per_round": [round(r["rate_per_s"], 1) for r in reports],
        "unit": reports[0]["unit"],
        "p50_us": mean([r["latency_us"]["p50"] for r in reports]),
        "p99_us": mean([r["latency_us"]["p99"] for r in reports]),
        # The rest of the distribution, for bench/charts.py's latency CDF.
        "p90_us": mean([r["latency_us"]["p90"] for r in reports]),
        "p999_us": mean([r["latency_us"]["p999"] for r in reports]),
        "max_us": mean([r["latency_us"]["max"] for r in reports]),
        "errors": sum(r["errors"]["total"] for r in reports),
        "session_id_unknown": sum(r["errors"]["session_id_unknown"] for r in reports),
        "errors_by_kind": {k: sum(r["errors"]["by_kind"].get(k, 0) for r in reports)
                           for k in sorted({k for r in reports for k in r["errors"]["by_kind"]})},
        "bytes_per_session": extra("bytes_per_session"),
        "rss_held_kib": extra("rss_held_kib"),
        "rss_before_kib": extra("rss_before_kib"),
        "sessions_opened": extra("sessions_opened"),
        "publishes_per_s": extra("publishes_per_s"),
        # Loss counts connected subscribers only (one that failed to connect
        # is an error): published × connected − received.
        "loss": sum(sum(r["extra"]["published"]) * r["extra"]["subscribers_connected"] - r["extra"]["received_deliveries"]
                    for r in reports if "published" in r["extra"]),
        "subscribers_connected": [r["extra"].get("subscribers_connected") for r in reports],
        "duplicates": sum(r["extra"].get("duplicates", 0) for r in reports),
        "cpu_cores_by_process": cpu_by_name(reports),
        "cpu_cores_setup": mean([sum(r["extra"].get("cpu", {}).get("cores_by_pid", {}).values()) for r in reports]),
        "cpu_cores_loadgen": mean([r["extra"].get("cpu", {}).get("loadgen_cores", 0) for r in reports]),
    }


table = {w: {s: summary(rs) for s, rs in setups.items()} for w, setups in runs.items()}


def gateways(t):
    """The gateway setups of a workload, with the name their ratios go by:
    `stickyio` for the standard build, the setup name for each extra build
    (BENCH_GATEWAYS, setups `gateway-<name>`). The targets are checked on
    the standard build only."""
    return [("stickyio" if s == "gateway" else s, t[s])
            for s in t if s == "gateway" or s.startswith("gateway-")]


def ratio(a, b):
    return round(a / b, 3) if b else None


ratios = {}
checks = []
for w in ("w1-polling", "w2-websocket", "w3-churn"):
    t = table.get(w, {})
    if not t:
        continue
    ratios[w] = {
        f"{mine}/{base}": {"rate": ratio(g["rate_per_s"], t[base]["rate_per_s"]),
                           "p99": ratio(g["p99_us"], t[base]["p99_us"])}
        for mine, g in gateways(t)
        for base in ("nginx-iphash", "nginx-consistent", "haproxy", "direct", "node-cluster") if base in t
    }
    g = t.get("gateway")
    if not g:
        continue
    proxies = [t[b] for b in ("nginx-iphash", "nginx-consistent", "haproxy") if b in t]
    if proxies:
        best = max(proxies, key=lambda s: s["rate_per_s"])
        checks.append((f"{w}: gateway rate >= faster of nginx/HAProxy",
                       g["rate_per_s"] >= best["rate_per_s"],
                       f'{g["rate_per_s"]:.0f} vs {best["rate_per_s"]:.0f}/s'))
        checks.append((f"{w}: gateway p99 <= that proxy's p99",
                       g["p99_us"] <= best["p99_us"],
                       f'{g["p99_us"]:.0f} vs {best["p99_us"]:.0f} us'))
    if "direct" in t:
        checks.append((f"{w}: gateway >= 0.85x direct",
                       g["rate_per_s"] >= 0.85 * t["direct"]["rate_per_s"],
                       f'{ratio(g["rate_per_s"], t["direct"]["rate_per_s"])}x'))

t = table.get("w4-idle", {})
if t:
    ratios["w4-idle"] = {f"{mine}/{b}": {"bytes_per_session": ratio(g["bytes_per_session"], t[b]["bytes_per_session"])}
                         for mine, g in gateways(t) for b in ("nginx-iphash", "nginx-consistent", "haproxy") if b in t}
if "gateway" in t:
    g = t["gateway"]
    if "nginx-iphash" in t:
        checks.append(("w4-idle: gateway memory/session <= 1.5x nginx",
                       g["bytes_per_session"] <= 1.5 * t["nginx-iphash"]["bytes_per_session"],
                       f'{g["bytes_per_session"]:.0f} vs {t["nginx-iphash"]["bytes_per_session"]:.0f} B'))

t = table.get("w5-fanout", {})
for mine in ("stickyio-cluster", "stickyio-redis"):
    if mine in t:
        s = t[mine]
        ratios.setdefault("w5-fanout", {}).update(
            {f"{mine}/{b}": {"rate": ratio(s["rate_per_s"], t[b]["rate_per_s"]), "p99": ratio(s["p99_us"], t[b]["p99_us"])}
             for b in ("node-cluster", "node-redis") if b in t})
if "stickyio-cluster" in t:
    s = t["stickyio-cluster"]
    if "node-cluster" in t:
        n = t["node-cluster"]
        checks.append(("w5-fanout: deliveries/s >= 3x Node cluster adapter",
                       s["rate_per_s"] >= 3 * n["rate_per_s"], f'{ratio(s["rate_per_s"], n["rate_per_s"])}x'))
        checks.append(("w5-fanout: p99 lower than Node cluster adapter",
                       s["p99_us"] < n["p99_us"], f'{s["p99_us"]:.0f} vs {n["p99_us"]:.0f} us'))
    checks.append(("w5-fanout: zero loss and duplicates",
                   s["loss"] == 0 and s["duplicates"] == 0, f'loss {s["loss"]}, duplicates {s["duplicates"]}'))

with open(os.path.join(out, "versions.json")) as f:
    versions = json.load(f)
result = {"versions": versions, "table": table, "ratios": ratios,
          "targets": [{"target": c, "holds": ok, "data": d} for c, ok, d in checks]}
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)

ms = lambda us: f"{us / 1000:.2f}"


def cpu(v):
    parts = ", ".join(f"{n} {c}" for n, c in sorted(v["cpu_cores_by_process"].items()))
    return f"{v['cpu_cores_setup']:.2f} ({parts}) / {v['cpu_cores_loadgen']:.2f}"
lines = [f"# Benchmark results ({versions['started']})", "",
         f"{versions['nproc']} cores, {versions['memory']} memory, kernel {versions['kernel']}, "
         f"open files {versions['open_files_limit']}; window {versions['duration']} after {versions['warmup']} warm-up, "
         f"{versions['rounds']} rounds (mean shown).", ""]
names = {"w1-polling": "W1 polling round trip (200 clients)", "w2-websocket": "W2 websocket round trip (200 clients)",
         "w3-churn": "W3 session churn (50 workers, polling)"}
for w, title in names.items():
    if w not in table:
        continue
    lines += [f"## {title}", "", "| setup | rate/s | per round | p50 ms | p99 ms | errors | 400 sid unknown | CPU cores: setup (by process) / loadgen |",
              "|---|---:|---|---:|---:|---:|---:|---|"]
    for s, v in table[w].items():
        lines.append(f"| {s} | {v['rate_per_s']:.0f} | {v['rate_per_round']} | {ms(v['p50_us'])} | {ms(v['p99_us'])} "
                     f"| {v['errors']} | {v['session_id_unknown']} | {cpu(v)} |")
    lines.append("")
if "w4-idle" in table:
    lines += ["## W4 idle sessions (6,000 websocket + 1,500 polling)", "",
              "| setup | sessions held | RSS before MiB | RSS held MiB | bytes/session | errors |", "|---|---:|---:|---:|---:|---:|"]
    for s, v in table["w4-idle"].items():
        lines.append(f"| {s} | {v['sessions_opened']:.0f} | {v['rss_before_kib'] / 1024:.1f} | {v['rss_held_kib'] / 1024:.1f} "
                     f"| {v['bytes_per_session']:.0f} | {v['errors']} |")
    lines.append("")
if "w5-fanout" in table:
    lines += ["## W5 cluster fan-out (300 subscribers, 3 publishers, websocket)", "",
              "| setup | deliveries/s | per round | publishes/s | p50 ms | p99 ms | loss | duplicates | errors | CPU cores: setup (by process) / loadgen |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for s, v in table["w5-fanout"].items():
        lines.append(f"| {s} | {v['rate_per_s']:.0f} | {v['rate_per_round']} | {v['publishes_per_s']:.0f} | {ms(v['p50_us'])} "
                     f"| {ms(v['p99_us'])} | {v['loss']} | {v['duplicates']} | {v['errors']} | {cpu(v)} |")
    lines.append("")
lines += ["## Ratios (stickyio ÷ baseline; rate > 1 is faster, p99 and bytes < 1 are better)", "",
          "| workload | versus | rate | p99 | bytes/session |", "|---|---|---:|---:|---:|"]
for w, per in ratios.items():
    for base, r in per.items():
        lines.append(f"| {w} | {base} | {r.get('rate', '')} | {r.get('p99', '')} | {r.get('bytes_per_session', '')} |")
lines += ["", "## Targets", "", "| target | holds | data |", "|---|---|---|"]
for c, ok, d in checks:
    lines.append(f"| {c} | {'yes' if ok else 'NO'} | {d} |")
with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
