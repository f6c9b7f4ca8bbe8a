#!/usr/bin/env python3
"""bench/cluster.sh's helper (stdlib only).

  report.py merge KEY=JSON ...   < line     one cluster-fanout JSON line + extra fields -> stdout
  report.py redis-stats                    < `redis-cli INFO all` -> {"publish": calls, ..., "reads_processed": n}
  report.py metrics                        < a node's /metrics -> {"published": n, "received": n, ...}
  report.py table FILE.jsonl               the markdown tables (medians, min-max, ratios, counts)
"""
import json
import statistics
import sys


def merge(args):
    row = json.loads(sys.stdin.read())
    for a in args:
        k, v = a.split("=", 1)
        row[k] = json.loads(v)
    print(json.dumps(row, separators=(",", ":")))


def redis_stats():
    out = {}
    for line in sys.stdin:
        line = line.strip()
        for key in ("total_reads_processed", "total_writes_processed"):
            if line.startswith(key + ":"):
                out[key[len("total_"):]] = int(line.split(":", 1)[1])
        if line.startswith("cmdstat_") and ":" in line:
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(f.split("=", 1) for f in rest.split(",") if "=" in f)
            out[name] = int(fields.get("calls", 0))
    print(json.dumps(out, separators=(",", ":")))


def metrics():
    out = {}
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 2:
            continue
        name = parts[0]
        if name.startswith("edge_ws_broker_"):
            name = name[len("edge_ws_broker_"):]
        elif name in ("edge_ws_deliveries", "edge_ws_delivery_runs"):
            name = name[len("edge_ws_"):]
        else:
            continue
        try:
            out[name] = int(float(parts[1]))
        except ValueError:
            pass
    print(json.dumps(out, separators=(",", ":")))


def fmt(values, digits=0, scale=1.0):
    v = [x * scale for x in values]
    if not v:
        return "–"
    m = statistics.median(v)
    f = "{:,.%df}" % digits
    if len(v) == 1:
        return f.format(m)
    return "%s (%s – %s)" % (f.format(m), f.format(min(v)), f.format(max(v)))


def table(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    order = []
    by = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
        if r["label"] not in order:
            order.append(r["label"])
    failed = [r for r in rows if not r.get("ok")]
    first = rows[0] if rows else {}
    print("%d subscribers, %s-byte payloads, %s messages in flight, %.1f s windows; medians "
          "(min – max) over %d repetitions; CPU = user+system time of every server process "
          "(and redis-server in the cluster rows) over the window."
          % (first.get("subs", 0), first.get("size", "?"), first.get("inflight", "?"),
             first.get("window_s", 0), max((len(v) for v in by.values()), default=0)))
    print()
    print("| run | processes | deliveries/s | CPU µs per delivery | deliveries per CPU-second "
          "| kernel share of that CPU | messages per queued buffer | ok |")
    print("|---|---|---|---|---|---|---|---|")

    def sys_share(r):
        t = r.get("user_ns", 0) + r.get("sys_ns", 0)
        return [100.0 * r["sys_ns"] / t] if t else []

    def per_buffer(r):
        ms = r.get("node_metrics") or []
        d = sum(m.get("deliveries", 0) for m in ms)
        runs = sum(m.get("delivery_runs", 0) for m in ms)
        return [d / runs] if runs else []

    for label in order:
        rs = by[label]
        ok = sum(1 for r in rs if r.get("ok"))
        procs = ", ".join(rs[0].get("cpu_ns", {}).keys())
        print("| %s | %s | %s | %s | %s | %s | %s | %d/%d |" % (
            label, procs,
            fmt([r["deliveries_per_s"] for r in rs]),
            fmt([r["cpu_us_per_delivery"] for r in rs], 3),
            fmt([r["deliveries_per_cpu_s"] for r in rs]),
            (lambda v: fmt(v) + " %" if v else "–")([x for r in rs for x in sys_share(r)]),
            fmt([x for r in rs for x in per_buffer(r)], 1),
            ok, len(rs)))
    print()

    def per_rep(label):
        return {r.get("rep"): r for r in by.get(label, [])}

    pairs = []
    for label in order:
        if not label.startswith("edge-ws cluster"):
            continue
        sfx = label[len("edge-ws cluster"):]
        what = {"": "as fast as the window allows", " hist": "history"}.get(sfx, sfx.strip())
        single = "edge-ws single" + sfx
        if single not in by:
            # "... before" rows (BEFORE_BIN): against the same repetition's single process.
            single = "edge-ws single" + sfx.replace(" before", "")
        pairs.append((label, single,
                      "CPU per delivery, cluster / single (%s; target ≤ 1.5×)" % what, "cpu"))
        if ("socketio cluster" + sfx) in by:
            pairs.append((label, "socketio cluster" + sfx,
                          "deliveries per CPU-second, edge-ws cluster / Socket.IO cluster (%s; target ≥ 5×)" % what,
                          "eff"))
    lines = []
    for a, b, title, kind in pairs:
        ra, rb = per_rep(a), per_rep(b)
        ratios = []
        for rep in sorted(set(ra) & set(rb), key=lambda x: (x is None, x)):
            x, y = ra[rep], rb[rep]
            if kind == "cpu" and y["cpu_us_per_delivery"] > 0:
                ratios.append(x["cpu_us_per_delivery"] / y["cpu_us_per_delivery"])
            if kind == "eff" and y["deliveries_per_cpu_s"] > 0:
                ratios.append(x["deliveries_per_cpu_s"] / y["deliveries_per_cpu_s"])
        if ratios:
            lines.append("| %s | %s× |" % (title, fmt(ratios, 2)))
    if lines:
        print("| ratio (same repetition) | median (min – max) |")
        print("|---|---|")
        print("\n".join(lines))
        print()

    counted = [r for r in rows if "redis" in r]
    if counted:
        print("| run | rep | messages published | Redis calls | Redis reads / writes | per node: broker published / received / own echoes ignored | per node: messages per queued buffer | deliveries per node |")
        print("|---|---|---|---|---|---|---|---|")
        for r in counted:
            calls = ", ".join("%s %d" % (k, v) for k, v in sorted(r["redis"].items())
                              if k in ("publish", "evalsha", "eval", "fcall", "psubscribe", "subscribe"))
            nodes = r.get("node_metrics") or []
            per = "; ".join("%s / %s / %s" % (m.get("published", "–"), m.get("received", "–"),
                                               m.get("echoes_ignored", "–")) for m in nodes) or "–"
            rw = "%s / %s" % (r["redis"].get("reads_processed", "–"), r["redis"].get("writes_processed", "–"))
            runs = " / ".join("%.1f" % (m["deliveries"] / m["delivery_runs"]) if m.get("delivery_runs") else "–"
                              for m in nodes) or "–"
            print("| %s | %s | %d | %s | %s | %s | %s | %s |" % (
                r["label"], r.get("rep", "–"), r["published"], calls, rw, per, runs,
                " / ".join(str(n) for n in r.get("deliveries_per_node", []))))
        print()
    loads = [r.get("load") for r in rows if r.get("load")]
    if loads:
        print("Load average (1 min) at the start of each run: %s." % ", ".join(loads))
    if failed:
        print()
        print("**FAILED runs: %d** (%s)" % (len(failed), "; ".join(
            "%s rep %s: lost %s, duplicates %s, errors %s %s" % (
                r["label"], r.get("rep"), r.get("lost"), r.get("duplicates"), r.get("errors"),
                r.get("error_texts", [])) for r in failed)))


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "merge":
        merge(rest)
    elif cmd == "redis-stats":
        redis_stats()
    elif cmd == "metrics":
        metrics()
    elif cmd == "table":
        table(rest[0])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
