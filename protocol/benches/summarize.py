#!/usr/bin/env python3
"""Prints the protocol benches' medians from Criterion's output as Markdown tables.

Run after `cargo bench -p edge-ws-protocol --bench '*'`, from the workspace root:

    python3 protocol/benches/summarize.py [CRITERION_DIR ...]

With several directories (copies of `target/criterion` from separate runs) it prints each run's
median and the throughput of the lowest one: on a shared, noisy machine the lowest median is the
closest to the code's own cost. Default directory: target/criterion.
"""
import json
import os
import sys

ROOTS = sys.argv[1:] or ["target/criterion"]
GROUPS = ("mask/", "frame_header/", "decode/", "utf8/", "deflate/")


def load(root):
    rows = {}
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "benchmark.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        if not bench["group_id"].startswith(GROUPS):
            continue
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        med = est["median"]["point_estimate"]
        rows[bench["full_id"]] = (bench, med, est["median_abs_dev"]["point_estimate"] / med)
    return rows


def fmt_time(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def fmt_thrpt(tp, ns):
    if tp is None:
        return ""
    if "Bytes" in tp:
        gib = tp["Bytes"] / ns * 1e9 / 2**30
        return f"{gib:.2f} GiB/s" if gib >= 1 else f"{gib * 1024:.0f} MiB/s"
    n = tp["Elements"] / ns * 1e9
    return f"{n / 1e6:.1f} M/s" if n >= 1e6 else f"{n / 1e3:.0f} K/s"


def main():
    runs = [load(r) for r in ROOTS]
    ids = sorted(set().union(*runs))
    heads = " | ".join(f"run {i + 1} median (±MAD)" for i in range(len(runs)))
    print(f"| benchmark | {heads} | throughput (lowest median) |")
    print("|---|" + "---:|" * (len(runs) + 1))
    best = {}
    for full_id in ids:
        cells, bench = [], None
        for run in runs:
            if full_id in run:
                bench, med, mad = run[full_id]
                cells.append(f"{fmt_time(med)} (±{100 * mad:.0f}%)")
                best[full_id] = min(best.get(full_id, med), med)
            else:
                cells.append("–")
        print(f"| {full_id} | {' | '.join(cells)} | "
              f"{fmt_thrpt(bench.get('throughput'), best[full_id])} |")
    print()
    print("| size | apply_mask | memcpy | unmask/memcpy throughput "
          + " ".join(f"(run {i + 1})" for i in range(len(runs))) + " | lowest medians |")
    print("|---|---:|---:|---:|---:|")
    for size in ("64B", "1KiB", "64KiB"):
        m_id, c_id = f"mask/{size}/apply_mask", f"mask/{size}/memcpy"
        if m_id not in best or c_id not in best:
            continue
        per_run = [f"{r[c_id][1] / r[m_id][1]:.2f}" for r in runs if m_id in r and c_id in r]
        print(f"| {size} | {fmt_time(best[m_id])} | {fmt_time(best[c_id])} | "
              f"{' / '.join(per_run)} | {best[c_id] / best[m_id]:.2f} |")


main()
