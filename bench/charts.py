"""Charts of a benchmark run, drawn from bench/results/results.json.

    bench/.venv/bin/python bench/charts.py [RESULTS_DIR]

(`scripts/bench.sh` makes the venv from bench/requirements.txt and runs
this after every run.) Writes, into RESULTS_DIR (default bench/results):

- rate.png: each setup's rate per workload, in the workload's own unit;
- p99.png: each setup's p99 latency per workload (log scale where the
  Node.js baselines are one to two orders of magnitude slower);
- latency-cdf.png: the latency distribution of W1 and W5 per setup, from
  the percentiles the run kept (p50, p90, p99, p99.9, max). Runs summarized
  before `bench/summarize.py` kept p90 and p99.9 have only p50 and p99,
  too few for a distribution: then this chart is not drawn, and says so.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

# The percentiles a CDF is drawn from: (key in results.json, fraction).
PERCENTILES = [("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99), ("p999_us", 0.999), ("max_us", 1.0)]
CDF_WORKLOADS = ["w1-polling", "w5-fanout"]
# stickyio's own setups stand out in every chart, extra gateway builds
# (BENCH_GATEWAYS: `gateway-<name>`) in a colour of their own.
OURS = {"gateway", "stickyio-cluster", "stickyio-redis"}


def ours(setup):
    return setup in OURS or setup.startswith("gateway-")


def color(setup):
    if setup.startswith("gateway-"):
        return "tab:orange"
    return "tab:blue" if setup in OURS else "tab:gray"


def bars(table, title, value, unit, path, log=False):
    """One panel per workload, one horizontal bar per setup."""
    workloads = list(table)
    # squeeze=False: a grid even for one workload (BENCH_WORKLOADS=w4).
    fig, axes = plt.subplots(len(workloads), 1, figsize=(8, 2.0 * len(workloads)), squeeze=False)
    for ax, workload in zip(axes[:, 0], workloads):
        setups = list(table[workload])
        values = [value(table[workload][s]) for s in setups]
        ax.barh(setups, values, color=[color(s) for s in setups])
        ax.invert_yaxis()
        ax.set_title(f"{workload} ({unit(table[workload])})", fontsize=10, loc="left")
        # Log only where the values span more than 20x, from 1 so that bar
        # lengths still compare; linear panels start at 0.
        if log and max(values) > 20 * min(values):
            ax.set_xscale("log")
            ax.set_xlim(left=1)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        ax.margins(x=0.15)
        ax.tick_params(labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def cdf(table, path):
    """Latency CDFs of W1 and W5, or None when the percentiles are missing."""
    present = [w for w in CDF_WORKLOADS if w in table]
    complete = all(all(k in v for k, _ in PERCENTILES) for w in present for v in table[w].values())
    if not present or not complete:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(6 * len(present), 4), squeeze=False)
    for ax, workload in zip(axes[0], present):
        for setup, v in table[workload].items():
            xs = [v[k] / 1000 for k, _ in PERCENTILES]
            ys = [q for _, q in PERCENTILES]
            ax.plot(xs, ys, marker="o", label=setup, linewidth=2.5 if ours(setup) else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("fraction of operations")
        ax.set_title(workload)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    results = json.loads((out / "results.json").read_text())
    table = results["table"]
    started = results.get("versions", {}).get("started", "?")
    bars(table, f"Rate per setup (run of {started}; higher is better)",
         lambda v: v["rate_per_s"], lambda w: next(iter(w.values()))["unit"] + "/s", out / "rate.png")
    bars(table, f"p99 latency per setup, ms (run of {started}; lower is better)",
         lambda v: v["p99_us"] / 1000, lambda w: "ms", out / "p99.png", log=True)
    if cdf(table, out / "latency-cdf.png") is None:
        print("latency-cdf.png not drawn: results.json has no p90/p99.9/max "
              "(summarized before bench/summarize.py kept them)")


if __name__ == "__main__":
    main()
