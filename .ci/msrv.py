#!/usr/bin/env python3
"""MSRV check: the workspace's `rust-version` is the only one, and nothing needs a newer Rust.

- every workspace package inherits `rust-version` from the workspace (no second copy);
- every package in the dependency graph declares no `rust-version` above ours;
- the toolchain in use is at least that version.
Reads `cargo metadata`; exits non-zero with the offending packages named.
"""
import json
import re
import subprocess
import sys


def version(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3]) + (0,) * (3 - len(re.findall(r"\d+", v)[:3]))


root = open("Cargo.toml").read()
m = re.search(r'^rust-version\s*=\s*"([^"]+)"', root, re.M)
if not m:
    sys.exit("msrv: no rust-version in the workspace Cargo.toml")
msrv = m.group(1)
meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--locked"]))
members = set(meta["workspace_members"])
bad = []
for p in meta["packages"]:
    rv = p.get("rust_version")
    if p["id"] in members:
        if rv != msrv:
            bad.append(f"{p['name']}: rust-version {rv!r}, expected the workspace's {msrv}")
        manifest = open(p["manifest_path"]).read()
        if re.search(r"^rust-version\s*=\s*\"", manifest, re.M) and p["manifest_path"] != meta["workspace_root"] + "/Cargo.toml":
            bad.append(f"{p['name']}: sets its own rust-version (use rust-version.workspace = true)")
    elif rv and version(rv) > version(msrv):
        bad.append(f"dependency {p['name']} {p['version']} needs Rust {rv} > {msrv}")
rustc = subprocess.check_output(["rustc", "--version"], text=True)
have = re.search(r"(\d+\.\d+\.\d+)", rustc).group(1)
if version(have) < version(msrv):
    bad.append(f"toolchain {have} is older than the MSRV {msrv}")
if bad:
    print("msrv: " + "\n msrv: ".join(bad))
    sys.exit(1)
deps = sum(1 for p in meta["packages"] if p["id"] not in members)
print(f"msrv: {msrv} for {len(members)} workspace crates; {deps} dependencies need at most that; rustc {have}")
