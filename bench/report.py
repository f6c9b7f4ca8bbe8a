#!/usr/bin/env python3
"""Summarise wsload results (JSON lines): a markdown table and an SVG plot.

usage: bench/report.py [results.jsonl] [--md OUT.md] [--svg OUT.svg]

Defaults: docs/bench-results/latest.jsonl -> latest.md and latest.svg beside it. Every cell is
"median (min–max)" over the repetitions of one (scenario, server) pair. Standard library only.
"""

import json
import os
import statistics
import sys
from html import escape

SERVER_ORDER = [
    "edge-ws",
    "floor",
    "tungstenite",
    "tungstenite-each",
    "fastwebsockets",
    "tokio-websockets",
]
COLORS = {
    "edge-ws": "#d62728",
    "floor": "#7f7f7f",
    "tungstenite": "#1f77b4",
    "tungstenite-each": "#17becf",
    "fastwebsockets": "#ff7f0e",
    "tokio-websockets": "#2ca02c",
}
EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22"]
MODE_ORDER = {"echo": 0, "broadcast": 1, "idle": 2, "churn": 3}


def load(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"{path}:{n}: not JSON, skipped", file=sys.stderr)
    return rows


def load_env(path):
    env = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    env[k] = v
    return env


def server_key(label):
    return (SERVER_ORDER.index(label) if label in SERVER_ORDER else len(SERVER_ORDER), label)


def group(rows):
    """{scenario: {label: [rows]}}, scenarios in mode order then first appearance."""
    out = {}
    first = {}
    for i, r in enumerate(rows):
        scen = r.get("scenario") or r.get("mode", "?")
        first.setdefault(scen, (MODE_ORDER.get(r.get("mode"), 9), i))
        out.setdefault(scen, {}).setdefault(r.get("label", "?"), []).append(r)
    ordered = sorted(out, key=lambda s: first[s])
    return [(s, {k: out[s][k] for k in sorted(out[s], key=server_key)}) for s in ordered]


def stat(rs, key):
    vals = [r.get(key) for r in rs]
    vals = [v for v in vals if isinstance(v, (int, float))]
    if not vals:
        return None
    return (statistics.median(vals), min(vals), max(vals))


def fmt_num(v, kind):
    if v is None:
        return "–"
    if kind == "rate":
        if v >= 1e6:
            return f"{v / 1e6:.2f} M"
        if v >= 1e3:
            return f"{v / 1e3:.1f} k"
        return f"{v:.0f}"
    if kind == "cpu":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if kind == "us":
        return f"{v:.0f}" if v >= 10 else f"{v:.1f}"
    if kind == "bytes":
        if v >= 1e4:
            return f"{v / 1024:.1f} KiB"
        return f"{v:.0f} B"
    if kind == "kib":
        return f"{v:.0f} KiB"
    if kind == "s":
        return f"{v:.2f}"
    return str(v)


def cell(s, kind):
    if s is None:
        return "–"
    med, lo, hi = s
    if lo == hi:
        return fmt_num(med, kind)
    return f"{fmt_num(med, kind)} ({fmt_num(lo, kind)}–{fmt_num(hi, kind)})"


def errors_of(rs):
    n = 0
    for r in rs:
        e = r.get("errors")
        n += e if isinstance(e, int) else 0
        if "error" in r:
            n += 0 if isinstance(e, int) and e > 0 else 1
    return n


def markdown(groups, env):
    out = ["# edge-ws benchmark results", ""]
    if env:
        out.append(
            "Machine: {cpu}, {cores} cores, kernel {kernel}; server pinned to core {sc}, "
            "wsload to core {cc}; {reps} repetition(s), {warmup} warm-up + {duration} window "
            "each; servers interleaved; build `{profile}`; git {git}; {date} (load average at "
            "start {load}).".format(
                cpu=env.get("cpu", "?"),
                cores=env.get("cores", "?"),
                kernel=env.get("kernel", "?"),
                sc=env.get("server_core", "?"),
                cc=env.get("client_core", "?"),
                reps=env.get("reps", "?"),
                warmup=env.get("warmup", "?"),
                duration=env.get("duration", "?"),
                profile=env.get("profile", "?"),
                git=env.get("git", "?"),
                date=env.get("date", "?"),
                load=env.get("loadavg", "?"),
            )
        )
        out.append("")
    out.append(
        "Each cell: median (min–max) over repetitions. CPU columns are CPU-µs per message "
        "(per delivery in broadcast, per handshake cycle in churn), from /proc schedstat of the "
        "server and getrusage of wsload over the measured window. `floor` is raw TCP echo on "
        "io_uring without WebSocket framing."
    )
    out.append("")

    def section(title, mode, cols):
        rows = [(s, by) for s, by in groups if any(r.get("mode") == mode for rs in by.values() for r in rs)]
        if not rows:
            return
        out.append(f"## {title}")
        out.append("")
        out.append("| scenario | server | n | " + " | ".join(h for h, _, _ in cols) + " | errors |")
        out.append("|---|---|---:|" + "---:|" * len(cols) + "---:|")
        for scen, by in rows:
            for label, rs in by.items():
                cells = [cell(stat(rs, key), kind) for _, key, kind in cols]
                out.append(
                    f"| {scen} | {label} | {len(rs)} | " + " | ".join(cells) + f" | {errors_of(rs)} |"
                )
        out.append("")

    section(
        "Echo",
        "echo",
        [
            ("msgs/s", "msgs_per_s", "rate"),
            ("server CPU µs/msg", "server_cpu_us_per_msg", "cpu"),
            ("client CPU µs/msg", "client_cpu_us_per_msg", "cpu"),
            ("p50 µs", "p50_us", "us"),
            ("p99 µs", "p99_us", "us"),
        ],
    )
    section(
        "Broadcast (one publisher, N subscribers; msgs/s = deliveries/s)",
        "broadcast",
        [
            ("deliveries/s", "msgs_per_s", "rate"),
            ("publishes/s", "publishes_per_s", "rate"),
            ("server CPU µs/delivery", "server_cpu_us_per_msg", "cpu"),
            ("client CPU µs/delivery", "client_cpu_us_per_msg", "cpu"),
            ("p50 µs", "p50_us", "us"),
            ("p99 µs", "p99_us", "us"),
        ],
    )
    section(
        "Idle connections (server resident memory)",
        "idle",
        [
            ("RSS per conn", "rss_bytes_per_conn", "bytes"),
            ("RSS before", "rss_before_kb", "kib"),
            ("RSS after", "rss_after_kb", "kib"),
            ("connect s", "open_s", "s"),
        ],
    )
    section(
        "Churn (connect, upgrade, one echo, close)",
        "churn",
        [
            ("handshakes/s", "handshakes_per_s", "rate"),
            ("server CPU µs/cycle", "server_cpu_us_per_msg", "cpu"),
            ("client CPU µs/cycle", "client_cpu_us_per_msg", "cpu"),
            ("p50 µs", "p50_us", "us"),
            ("p99 µs", "p99_us", "us"),
        ],
    )

    # Idle memory as a slope: RSS growth against connection count over every idle scenario of
    # a server (least squares over the per-scenario medians), so one 2 MiB allocator step or
    # one lucky point does not decide the figure.
    slopes = []
    by_server = {}
    for scen, by in groups:
        for label, rs in by.items():
            rs = [r for r in rs if r.get("mode") == "idle" and r.get("rss_after_kb") is not None]
            if not rs:
                continue
            growth = sorted((r["rss_after_kb"] - r["rss_before_kb"]) * 1024 for r in rs)
            base = sorted(r["rss_before_kb"] for r in rs)
            by_server.setdefault(label, []).append(
                (rs[0]["conns"], growth[len(growth) // 2], base[len(base) // 2])
            )
    for label, pts in by_server.items():
        if len(pts) < 2:
            continue
        n = len(pts)
        mx = sum(p[0] for p in pts) / n
        my = sum(p[1] for p in pts) / n
        sxx = sum((p[0] - mx) ** 2 for p in pts)
        if sxx == 0:
            continue
        slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
        base = sorted(p[2] for p in pts)[n // 2]
        span = f"{min(p[0] for p in pts)}–{max(p[0] for p in pts)}"
        slopes.append((label, slope, span, n, base))
    if slopes:
        out.append("## Idle memory slope (RSS growth per connection, least squares)")
        out.append("")
        out.append("| server | bytes per idle connection | connections | points | base RSS |")
        out.append("|---|---:|---|---:|---:|")
        for label, slope, span, n, base in slopes:
            out.append(f"| {label} | {slope:.0f} B | {span} | {n} | {base} KiB |")
        out.append("")

    # Same-run ratios, paired by repetition: servers run back to back within a repetition, so
    # the ratio of their two runs cancels the machine's slow drift (other tenants, frequency),
    # which moves every server's CPU per message by more than the differences measured here.
    pairs = []
    for scen, by in groups:
        if "edge-ws" not in by:
            continue
        mode = by["edge-ws"][0].get("mode") if by["edge-ws"] else None
        key = "rss_bytes_per_conn" if mode == "idle" else "server_cpu_us_per_msg"
        mine = {r.get("rep"): r.get(key) for r in by["edge-ws"]}
        for other in by:
            if other == "edge-ws":
                continue
            ratios = sorted(
                mine[r.get("rep")] / r.get(key)
                for r in by[other]
                if isinstance(r.get(key), (int, float))
                and r.get(key)
                and isinstance(mine.get(r.get("rep")), (int, float))
            )
            if len(ratios) >= 2:
                q1 = ratios[(len(ratios) - 1) // 4]
                q3 = ratios[(3 * (len(ratios) - 1) + 3) // 4]
                pairs.append((scen, other, statistics.median(ratios), q1, q3, len(ratios)))
    if pairs:
        out.append("## edge-ws ÷ other, paired by repetition (server CPU per message; idle: RSS per connection)")
        out.append("")
        out.append("| scenario | other | median ratio | quartiles | pairs |")
        out.append("|---|---|---:|---|---:|")
        for scen, other, med, q1, q3, n in pairs:
            out.append(f"| {scen} | {other} | {med:.3f} | {q1:.3f}–{q3:.3f} | {n} |")
        out.append("")

    # The load generator must not be the bottleneck: client CPU/msg below the server's.
    checks = []
    for scen, by in groups:
        for label, rs in by.items():
            if not rs or rs[0].get("mode") != "echo":
                continue
            s = stat(rs, "server_cpu_us_per_msg")
            c = stat(rs, "client_cpu_us_per_msg")
            if s and c:
                checks.append((scen, label, c[0] < s[0], c[0] / s[0] if s[0] else float("nan")))
    if checks:
        out.append("## Is wsload cheaper than the server? (echo, medians)")
        out.append("")
        out.append("| scenario | server | client/server CPU per msg | client cheaper |")
        out.append("|---|---|---:|:---:|")
        for scen, label, ok, ratio in checks:
            out.append(f"| {scen} | {label} | {ratio:.2f} | {'yes' if ok else 'no'} |")
        out.append("")
    return "\n".join(out) + "\n"


def svg(groups):
    """Horizontal bars: per scenario, per server: msgs/s (left) and CPU-µs/msg (right: server
    solid, client outlined); idle: RSS per connection. Whiskers show min–max."""
    W = 1100
    label_w = 250
    gap = 40
    panel_w = (W - label_w - gap - 20) // 2
    left_x = label_w
    right_x = label_w + panel_w + gap
    bar_h = 14
    row_h = 2 * bar_h + 6
    parts = []
    y = 60
    colors = dict(COLORS)
    extra = iter(EXTRA_COLORS)

    def color(label):
        if label not in colors:
            colors[label] = next(extra, "#333333")
        return colors[label]

    def bar(x0, width, y0, h, fill, vmax, s, outline=False):
        if s is None or vmax <= 0:
            return
        med, lo, hi = s
        w = width * med / vmax
        if outline:
            parts.append(
                f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{max(w, 0.5):.1f}" height="{h}" '
                f'fill="white" stroke="{fill}" stroke-width="1.5"/>'
            )
        else:
            parts.append(
                f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{max(w, 0.5):.1f}" height="{h}" fill="{fill}"/>'
            )
        if hi > lo:
            xl, xh = x0 + width * lo / vmax, x0 + width * hi / vmax
            ym = y0 + h / 2
            parts.append(
                f'<line x1="{xl:.1f}" y1="{ym:.1f}" x2="{xh:.1f}" y2="{ym:.1f}" stroke="black" stroke-width="1"/>'
            )
            for xx in (xl, xh):
                parts.append(
                    f'<line x1="{xx:.1f}" y1="{ym - 3:.1f}" x2="{xx:.1f}" y2="{ym + 3:.1f}" stroke="black" stroke-width="1"/>'
                )

    def text(x, y0, t, anchor="start", size=11, weight="normal", fill="#222"):
        parts.append(
            f'<text x="{x:.1f}" y="{y0:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(t)}</text>'
        )

    for scen, by in groups:
        labels = list(by.keys())
        mode = next((r.get("mode") for rs in by.values() for r in rs), "")
        text(8, y + 12, scen, size=12, weight="bold")
        y += 20
        if mode == "idle":
            stats = {l: stat(by[l], "rss_bytes_per_conn") for l in labels}
            vmax = max((s[2] for s in stats.values() if s), default=0)
            text(left_x, y - 4, "server RSS bytes per idle connection", size=10, fill="#555")
            for l in labels:
                c = color(l)
                text(label_w - 8, y + bar_h - 2, l, anchor="end")
                bar(left_x, panel_w * 2 + gap, y, bar_h, c, vmax, stats[l])
                if stats[l]:
                    text(left_x + (panel_w * 2 + gap) * stats[l][0] / vmax + 4 if vmax else left_x,
                         y + bar_h - 2, fmt_num(stats[l][0], "bytes"), size=10)
                y += bar_h + 6
            y += 16
            continue
        rate = {l: stat(by[l], "msgs_per_s") for l in labels}
        scpu = {l: stat(by[l], "server_cpu_us_per_msg") for l in labels}
        ccpu = {l: stat(by[l], "client_cpu_us_per_msg") for l in labels}
        rmax = max((s[2] for s in rate.values() if s), default=0)
        cmax = max([s[2] for s in scpu.values() if s] + [s[2] for s in ccpu.values() if s] + [0])
        unit = {"broadcast": "deliveries/s", "churn": "handshakes/s"}.get(mode, "msgs/s")
        text(left_x, y - 4, unit, size=10, fill="#555")
        text(right_x, y - 4, "CPU µs per msg: server (solid), wsload (outline)", size=10, fill="#555")
        for l in labels:
            c = color(l)
            text(label_w - 8, y + bar_h, l, anchor="end")
            bar(left_x, panel_w - 60, y, bar_h, c, rmax, rate[l])
            if rate[l]:
                text(left_x + (panel_w - 60) * rate[l][0] / rmax + 4 if rmax else left_x,
                     y + bar_h - 2, fmt_num(rate[l][0], "rate"), size=10)
            bar(right_x, panel_w - 60, y, bar_h, c, cmax, scpu[l])
            if scpu[l]:
                text(right_x + (panel_w - 60) * scpu[l][0] / cmax + 4 if cmax else right_x,
                     y + bar_h - 2, fmt_num(scpu[l][0], "cpu"), size=10)
            bar(right_x, panel_w - 60, y + bar_h + 2, bar_h - 4, c, cmax, ccpu[l], outline=True)
            if ccpu[l]:
                text(right_x + (panel_w - 60) * ccpu[l][0] / cmax + 4 if cmax else right_x,
                     y + 2 * bar_h - 4, fmt_num(ccpu[l][0], "cpu"), size=9, fill="#555")
            y += row_h
        y += 16

    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y + 20}" '
        f'viewBox="0 0 {W} {y + 20}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        f'<rect width="{W}" height="{y + 20}" fill="white"/>',
        f'<text x="8" y="24" font-size="16" font-weight="bold">edge-ws benchmarks: throughput and CPU per message</text>',
        f'<text x="8" y="44" font-size="11" fill="#555">bars: median; whiskers: min–max over repetitions; '
        f"server on one pinned core, wsload on another</text>",
    ]
    return "\n".join(head + parts + ["</svg>"]) + "\n"


def main(argv):
    path = "docs/bench-results/latest.jsonl"
    md_out = svg_out = None
    it = iter(argv)
    for a in it:
        if a == "--md":
            md_out = next(it)
        elif a == "--svg":
            svg_out = next(it)
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            path = a
    base = path[:-6] if path.endswith(".jsonl") else path
    md_out = md_out or base + ".md"
    svg_out = svg_out or base + ".svg"
    rows = load(path)
    if not rows:
        print(f"{path}: no results", file=sys.stderr)
        return 1
    groups = group(rows)
    env = load_env(base + ".env")
    md = markdown(groups, env)
    with open(md_out, "w", encoding="utf-8") as f:
        f.write(md)
    with open(svg_out, "w", encoding="utf-8") as f:
        f.write(svg(groups))
    sys.stdout.write(md)
    print(f"wrote {md_out} and {svg_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
