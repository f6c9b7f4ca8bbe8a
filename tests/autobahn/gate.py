#!/usr/bin/env python3
"""Gate on an Autobahn report (index.json written by kosoku / Autobahn|Testsuite).

    gate.py REPORT_DIR [--include GLOB ...] [--exclude GLOB ...] [--update] [--tls VERSION]

A case passes when its `behavior` is OK or INFORMATIONAL (NON-STRICT only when the case is in
allowed-non-strict.json with a reason) and its `behaviorClose` is OK or INFORMATIONAL.
Every case run is also compared with expected-results.json: a case whose verdict is worse than
the recorded one fails the gate, a better one is reported (update the file). Every case of
expected-results.json that the selection (--include/--exclude, the same globs given to kosoku)
covers must have been run. --update rewrites expected-results.json from this report (use it
after a full run; cases outside the selection keep their entry).

--tls 1.3|1.2 (a run through tls_relay.py, `run.sh --tls`): the same case verdicts, and the
transport must have been TLS for every case with nothing failing underneath: the relay's counters
(REPORT_DIR/tls-relay.json) show at least one connection per case, each negotiated with the
version asked for, none ended by a TLS error, a reset or a relay failure; edge-ws's counters
(REPORT_DIR/metrics.txt, its /metrics after the suite) show as many handshakes as the relay made
connections, every one of them handed to edge-ws's own record layer (`tls_record_layer`), and
no `tls_handshake_failures`, `tls_errors` or `tls_refused`.

Writes REPORT_DIR/summary.txt and REPORT_DIR/summary.json; the last line printed is
`autobahn: N passed, M failed`. Exit status 0 only when every case passes.
"""

import argparse
import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected-results.json"
ALLOWED = HERE / "allowed-non-strict.json"

# Rank of a verdict: lower is better. Unknown labels (ERROR, ...) rank worst.
RANK = {
    "OK": 0,
    "INFORMATIONAL": 0,
    "NON-STRICT": 1,
    "UNIMPLEMENTED": 2,
    "WRONG CODE": 3,
    "UNCLEAN": 3,
    "FAILED BY CLIENT": 3,
    "FAILED": 4,
}
WORST = 5
PASSING = {"OK", "INFORMATIONAL"}


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def selected(case_id, include, exclude):
    if include and not any(fnmatch.fnmatchcase(case_id, g) for g in include):
        return False
    return not any(fnmatch.fnmatchcase(case_id, g) for g in exclude or [])


def load_report(report_dir):
    index = json.loads((report_dir / "index.json").read_text())
    if len(index) != 1:
        sys.exit(f"gate: expected one agent in {report_dir}/index.json, found {list(index)}")
    (agent, cases), = index.items()
    return agent, cases


def tls_problems(report_dir, version, ncases):
    """What is wrong with the TLS side of a relayed run (empty: nothing)."""
    problems = []
    try:
        relay = json.loads((report_dir / "tls-relay.json").read_text())
    except (OSError, ValueError) as e:
        return [f"tls: no relay counters ({e})"], {}
    metrics = {}
    try:
        for line in (report_dir / "metrics.txt").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("edge_ws_tls_") and value.strip().isdigit():
                metrics[name[len("edge_ws_"):]] = int(value)
    except OSError as e:
        problems.append(f"tls: no edge-ws metrics ({e})")
    conns = relay.get("connections", 0)
    want = "TLSv" + version
    negotiated = sum(v for k, v in relay.items() if k.startswith(f"negotiated {want} "))
    if conns < ncases:
        problems.append(f"tls: {conns} relayed connections for {ncases} cases")
    if negotiated != conns:
        problems.append(f"tls: {negotiated} of {conns} connections negotiated {want}")
    for k, v in relay.items():
        bad = (k.startswith("relay failure") or k.startswith("edge-ws closed: TLS error")
               or k == "edge-ws reset" or k.startswith("negotiated ") and want not in k)
        if bad and v:
            problems.append(f"tls: relay counted {v} x {k!r}")
    if metrics:
        if metrics.get("tls_handshakes") != conns:
            problems.append(f"tls: edge-ws completed {metrics.get('tls_handshakes')} handshakes, "
                            f"the relay made {conns} connections")
        # Every connection on the runtime's own record layer, none left on rustls (the
        # fallback is for configurations and suites the engine does not ship).
        if "tls_record_layer" in metrics and metrics["tls_record_layer"] != conns:
            problems.append(f"tls: {metrics['tls_record_layer']} of {conns} connections moved to "
                            "edge-ws's record layer after the handshake")
        for k in ("tls_handshake_failures", "tls_errors", "tls_refused"):
            if metrics.get(k, 0):
                problems.append(f"tls: edge-ws counted {k} = {metrics[k]}")
    return problems, {"relay": relay, "edge_ws": metrics}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dir", type=Path)
    ap.add_argument("--include", "-i", action="append", default=[])
    ap.add_argument("--exclude", "-x", action="append", default=[])
    ap.add_argument("--update", action="store_true", help="rewrite expected-results.json")
    ap.add_argument("--tls", choices=["1.2", "1.3"], help="a run over TLS through tls_relay.py")
    args = ap.parse_args()
    if args.tls and args.update:
        sys.exit("gate: --update only from a plain run (expected-results.json is the plain verdict)")

    agent, cases = load_report(args.report_dir)
    allowed = {k: v for k, v in json.loads(ALLOWED.read_text()).items() if not k.startswith("_")}
    expected = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}
    expected = {k: v for k, v in expected.items() if not k.startswith("_")}

    problems = []  # (case, message)
    notes = []
    passed = failed = 0
    for cid in sorted(cases, key=case_key):
        c = cases[cid]
        b, bc = c["behavior"], c["behaviorClose"]
        bad = []
        if b == "NON-STRICT":
            if not str(allowed.get(cid, {}).get("reason", "")).strip():
                bad.append("NON-STRICT and not in allowed-non-strict.json")
        elif b not in PASSING:
            bad.append(f"behavior {b}")
        if bc not in PASSING:
            bad.append(f"behaviorClose {bc}")
        exp = expected.get(cid)
        if exp is None:
            if expected and not args.update:
                bad.append("not in expected-results.json (new case? run with --update)")
        else:
            for field, got in (("behavior", b), ("behaviorClose", bc)):
                want = exp[field]
                if RANK.get(got, WORST) > RANK.get(want, WORST):
                    bad.append(f"{field} got worse: {want} -> {got}")
                elif RANK.get(got, WORST) < RANK.get(want, WORST):
                    notes.append(f"{cid}: {field} improved: {want} -> {got} (update expected-results.json)")
        if bad:
            failed += 1
            extra = f" (close code {c.get('remoteCloseCode')}, report {c.get('reportfile')})"
            problems.append(f"{cid}: {'; '.join(bad)}{extra}")
        else:
            passed += 1

    missing = [
        cid for cid in sorted(expected, key=case_key)
        if cid not in cases and selected(cid, args.include, args.exclude)
    ]
    for cid in missing:
        failed += 1
        problems.append(f"{cid}: expected by expected-results.json but not run")
    stale = [cid for cid in allowed if cid in cases and cases[cid]["behavior"] != "NON-STRICT"]
    for cid in stale:
        notes.append(f"{cid}: listed in allowed-non-strict.json but now {cases[cid]['behavior']} (remove it)")

    tls = None
    if args.tls:
        tls_bad, tls = tls_problems(args.report_dir, args.tls, len(cases))
        failed += len(tls_bad)
        problems += tls_bad

    behaviors = Counter(c["behavior"] for c in cases.values())
    closes = Counter(c["behaviorClose"] for c in cases.values())
    order = ["OK", "NON-STRICT", "FAILED", "UNIMPLEMENTED", "INFORMATIONAL"]
    labels = order + sorted(set(behaviors) - set(order))
    lines = [
        f"agent: {agent}",
        f"cases run: {len(cases)}"
        + (f" (selection: include {args.include or ['*']}, exclude {args.exclude or []})"
           if args.include or args.exclude else " (whole suite)"),
        "behavior:      " + ", ".join(f"{k} {behaviors.get(k, 0)}" for k in labels),
        "behaviorClose: " + ", ".join(f"{k} {v}" for k, v in sorted(closes.items())),
    ]
    if tls is not None:
        r, m = tls.get("relay", {}), tls.get("edge_ws", {})
        lines.append(
            f"tls {args.tls}: {r.get('connections', 0)} relayed connections ("
            + ", ".join(f"{k} {v}" for k, v in r.items() if k != "connections") + "); edge-ws: "
            + ", ".join(f"{k} {v}" for k, v in m.items()))
    lines += [f"FAIL {p}" for p in problems]
    lines += [f"note {n}" for n in notes]
    lines.append(f"autobahn: {passed} passed, {failed} failed")
    text = "\n".join(lines)
    print(text)
    (args.report_dir / "summary.txt").write_text(text + "\n")
    (args.report_dir / "summary.json").write_text(json.dumps({
        "agent": agent,
        "cases": len(cases),
        "behavior": dict(behaviors),
        "behaviorClose": dict(closes),
        "passed": passed,
        "failed": failed,
        "problems": problems,
        "notes": notes,
        "tls": tls,
    }, indent=2) + "\n")

    if args.update:
        out = {
            "_comment": "Verdict of every Autobahn case for edge-ws (tests/autobahn/run.sh). "
                        "gate.py fails a case whose verdict is worse than recorded here. "
                        "Regenerate from a whole-suite run: tests/autobahn/run.sh --update.",
        }
        merged = dict(expected)  # cases outside this run's selection keep their entry
        for cid, c in cases.items():
            merged[cid] = {"behavior": c["behavior"], "behaviorClose": c["behaviorClose"]}
        for cid in sorted(merged, key=case_key):
            out[cid] = merged[cid]
        # One case per line: reviewable diffs.
        body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in out.items())
        EXPECTED.write_text("{\n" + body + "\n}\n")
        print(f"gate: wrote {EXPECTED} ({len(merged)} cases, {len(cases)} from this run)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
