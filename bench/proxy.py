#!/usr/bin/env python3
"""Proxy echo against direct echo, beside the raw-TCP floor of each (issue 18).

    bench/proxy.py                  3 interleaved repetitions of the four cases below
    REPS=5 DURATION=5 bench/proxy.py

Cases (64 B binary echo, 100 connections x 8 in flight; wsload on CPU 0, every server process
on CPU 1, each with one thread):
    direct          wsload -> edge-ws (bench/edge-ws.toml)
    proxy           wsload -> edge-ws with [proxy] -> edge-ws backend
    floor           wsload --raw -> tcp-echo-floor
    floor relayed   wsload --raw -> tcp-relay-floor -> tcp-echo-floor

Server CPU per message: the front process from wsload's own window (--server-pid), plus, for
the relayed cases, the backend's CPU (its threads' schedstat) over the same window. Needs the
release binaries: cargo build --release -p edge-ws-bench -p edge-ws-server --bin edge-ws
--bin wsload --bin tcp-echo-floor --bin tcp-relay-floor. Loopback only.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release"))
REPS = int(os.environ.get("REPS", "3"))
DURATION = int(os.environ.get("DURATION", "5"))
WARMUP = 1
CLIENT_CPU, SERVER_CPU = os.environ.get("CLIENT_CPU", "0"), os.environ.get("SERVER_CPU", "1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid):
    """CPU time of every thread of `pid`, from schedstat (ns)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


class Servers:
    def __init__(self):
        self.procs = []
        self.dirs = []

    def start(self, argv):
        p = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU] + argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        return p

    def edge_ws(self, port, extra_config=None):
        d = tempfile.mkdtemp(prefix="edge-ws-proxy-bench-")
        self.dirs.append(d)
        config = os.path.join(ROOT, "bench", "edge-ws.toml")
        if extra_config:
            config = os.path.join(d, "config.toml")
            with open(os.path.join(ROOT, "bench", "edge-ws.toml")) as f:
                base = f.read()
            with open(config, "w") as f:
                f.write(base + "\n" + extra_config)
        return self.start(
            [
                os.path.join(BIN, "edge-ws"),
                "--config", config,
                "--addr", f"127.0.0.1:{port}",
                "--cores", "1",
                "--api-addr", "off",
                "--data-dir", os.path.join(d, "data"),
            ]
        )

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.procs, self.dirs = [], []


def run_case(name):
    s = Servers()
    try:
        front = free_port()
        backend_proc = None
        raw = name.startswith("floor")
        if name == "direct":
            fp = s.edge_ws(front)
        elif name == "proxy":
            back = free_port()
            backend_proc = s.edge_ws(back)
            wait_listening(back, backend_proc)
            fp = s.edge_ws(
                front,
                f'[proxy]\nbackends = ["ws://127.0.0.1:{back}"]\nstrategy = "round-robin"\n'
                "health_interval_ms = 0\n",
            )
        elif name == "floor":
            fp = s.start([os.path.join(BIN, "tcp-echo-floor"), "--addr", f"127.0.0.1:{front}"])
        else:
            back = free_port()
            backend_proc = s.start(
                [os.path.join(BIN, "tcp-echo-floor"), "--addr", f"127.0.0.1:{back}"]
            )
            wait_listening(back, backend_proc)
            fp = s.start(
                [
                    os.path.join(BIN, "tcp-relay-floor"),
                    "--addr", f"127.0.0.1:{front}",
                    "--backend", f"127.0.0.1:{back}",
                ]
            )
        wait_listening(front, fp)
        cmd = [
            "taskset", "-c", CLIENT_CPU,
            os.path.join(BIN, "wsload"), "echo",
            "--addr", f"127.0.0.1:{front}",
            "--conns", "100", "--depth", "8", "--size", "64",
            "--warmup", f"{WARMUP}s", "--duration", f"{DURATION}s",
            "--server-pid", str(fp.pid),
        ] + (["--raw"] if raw else [])
        wl = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # The backend's CPU over wsload's window: from the end of the warm-up (connecting
        # takes a few ms more) to the end of the measured window.
        b0 = b1 = 0.0
        if backend_proc is not None:
            time.sleep(WARMUP + 0.05)
            b0 = cpu_seconds(backend_proc.pid)
            time.sleep(DURATION - 0.05)
            b1 = cpu_seconds(backend_proc.pid)
        out, _ = wl.communicate(timeout=DURATION + 120)
        r = json.loads(out.strip().splitlines()[0])
        if r.get("errors") or not r.get("msgs"):
            raise RuntimeError(f"{name}: wsload reported {r}")
        front_us = r["server_cpu_us_per_msg"]
        back_us = (b1 - b0) * 1e6 / r["msgs"] if backend_proc is not None else 0.0
        return {"case": name, "msgs_per_s": r["msgs_per_s"], "front": front_us, "back": back_us,
                "total": front_us + back_us}
    finally:
        s.stop()


def main():
    cases = ["direct", "proxy", "floor", "floor relayed"]
    results = {c: [] for c in cases}
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[0]}", file=sys.stderr)
    for rep in range(REPS):
        for c in cases:
            r = run_case(c)
            results[c].append(r)
            print(f"rep {rep} {c}: {r['msgs_per_s'] / 1e3:.0f} k msg/s, front {r['front']:.3f} "
                  f"+ back {r['back']:.3f} = {r['total']:.3f} us/msg", file=sys.stderr)
    med = {c: statistics.median(x["total"] for x in results[c]) for c in cases}
    print("| case | msg/s (median) | server CPU µs/msg: front + backend = total, median (min–max) |")
    print("|---|---:|---|")
    for c in cases:
        xs = results[c]
        t = [x["total"] for x in xs]
        print(f"| {c} | {statistics.median(x['msgs_per_s'] for x in xs) / 1e3:.0f} k | "
              f"{statistics.median(x['front'] for x in xs):.3f} + "
              f"{statistics.median(x['back'] for x in xs):.3f} = **{med[c]:.3f}** "
              f"({min(t):.3f}–{max(t):.3f}) |")
    print()
    print(f"proxy / direct: **{med['proxy'] / med['direct']:.2f}x**; "
          f"floor relayed / floor: **{med['floor relayed'] / med['floor']:.2f}x**; "
          f"proxy / floor relayed: {med['proxy'] / med['floor relayed']:.2f}x; "
          f"direct / floor: {med['direct'] / med['floor']:.2f}x")
    with open("/proc/loadavg") as f:
        print(f"load average after: {f.read().split()[0]}", file=sys.stderr)


if __name__ == "__main__":
    main()
