#!/usr/bin/env python3
"""Gate on an Autobahn report (index.json written by kosoku / Autobahn|Testsuite).

    gate.py REPORT_DIR [--include GLOB ...] [--exclude GLOB ...] [--update]

A case passes when its `behavior` is OK or INFORMATIONAL (NON-STRICT only when the case is in
allowed-non-strict.json with a reason) and its `behaviorClose` is OK or INFORMATIONAL.
Every case run is also compared with expected-results.json: a case whose verdict is worse than
the recorded one fails the gate, a better one is reported (update the file). Every case of
expected-results.json that the selection (--include/--exclude, the same globs given to kosoku)
covers must have been run. --update rewrites expected-results.json from this report (use it
after a full run; cases outside the selection keep their entry).

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dir", type=Path)
    ap.add_argument("--include", "-i", action="append", default=[])
    ap.add_argument("--exclude", "-x", action="append", default=[])
    ap.add_argument("--update", action="store_true", help="rewrite expected-results.json")
    args = ap.parse_args()

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
