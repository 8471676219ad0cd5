#!/usr/bin/env python3
"""CPU cost of one QKD link per link model: the two real module processes of a link
(`python -m qkdtwin.qkd_module`, Alice on 127.0.0.2, Bob on 127.0.0.3, mutual TLS between
them, no broker) run for a while; their CPU seconds (from /proc) per emulated link-second,
and the secret key per link-second, are reported for `bb84`, `statistical` and `analytic`,
alternately in one sitting. With `--baseline DIR` (the `src` of another checkout, e.g. a
worktree of the commit before issue 15) its `bb84` module runs in the same rotation as
`bb84@baseline`.

    python benchmarks/bench_link_models.py [--seconds 20] [--repeat 2] [--rate 1e7] [--km 10]
        [--block-size 100000] [--baseline DIR] [--out benchmarks/results/link_models.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from qkdtwin.testbed.pki import TestCA  # noqa: E402

MODELS = ("bb84", "statistical", "analytic")
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _health(port: int) -> dict | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
    except (requests.RequestException, ValueError):
        return None


def run_link(root: Path, ca: TestCA, qkd: dict, seconds: float,
             src: Path = ROOT / "src", label: str = "") -> dict:
    """Both ends of one link for `seconds` of wall time after the first block."""
    label = label or qkd["model"]
    peer_port = _free_port()
    procs, ports = [], []
    for side, node, peer, me, other in (("b", "km1", "km0", "127.0.0.3", "127.0.0.2"),
                                        ("a", "km0", "km1", "127.0.0.2", "127.0.0.3")):
        ident = ca.issue(node)
        port = _free_port()
        cfg = root / f"{label}-{node}.yml"
        cfg.write_text(yaml.safe_dump({
            "node": node, "link": "km0-km1", "side": side, "peer": peer, "local_ipv4": me,
            "peer_ipv4": other, "peer_port": peer_port,
            "listen": {"host": "127.0.0.1", "port": port},
            "data_dir": str(root / f"{label}-{node}"), "qkd": qkd,
            "tls": {"ca": ca.ca, "cert": ident.cert, "key": ident.key}}))
        log = open(root / f"{label}-{node}.log", "ab")  # noqa: SIM115
        procs.append(subprocess.Popen([sys.executable, "-m", "qkdtwin.qkd_module", "--config",
                                       str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONPATH": str(src)}))
        ports.append(port)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            h = _health(ports[1])
            if h and h["blocks_ok"] >= 1:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"{label}: no key within 120 s (logs in {root})")
        cpu0 = sum(_cpu_s(p.pid) for p in procs)
        a0, t0 = _health(ports[1]), time.monotonic()
        time.sleep(seconds)
        cpu1 = sum(_cpu_s(p.pid) for p in procs)
        a1, t1 = _health(ports[1]), time.monotonic()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
    link_s = (a1["pulses_total"] - a0["pulses_total"]) / qkd["source_rate_hz"]
    secret = a1["secret_bits_total"] - a0["secret_bits_total"]
    return {"wall_s": t1 - t0, "link_s": link_s, "cpu_s": cpu1 - cpu0,
            "cpu_s_per_link_s": (cpu1 - cpu0) / link_s if link_s else None,
            "realtime_factor": link_s / (t1 - t0), "secret_bps_per_link_s": secret / link_s
            if link_s else None, "qber": a1["qber"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="wall seconds measured per run")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--rate", type=float, default=1e7, help="source rate in Hz")
    ap.add_argument("--km", type=float, default=10.0, help="link length")
    ap.add_argument("--block-size", type=int, default=100000, help="sifted bits per block")
    ap.add_argument("--baseline", type=Path,
                    help="src dir of another checkout whose bb84 module runs in the rotation")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "link_models.json"))
    args = ap.parse_args()
    base = {"protocol": "bb84-decoy", "length_km": args.km, "source_rate_hz": args.rate,
            "mu": 0.5, "nu": 0.1, "block_size": args.block_size}
    runs = [(m, {**base, "model": m}, ROOT / "src") for m in MODELS]
    if args.baseline:  # an older module may not know `model`: it only has bb84
        runs.append(("bb84@baseline", base, args.baseline.resolve()))
    rows: dict[str, list[dict]] = {label: [] for label, _, _ in runs}
    with tempfile.TemporaryDirectory(prefix="qkdtwin-bench-models-") as d:
        root = Path(d)
        ca = TestCA(root / "ca")
        for i in range(args.repeat):  # alternately, so both see the same machine load
            for model, qkd, src in runs:
                r = run_link(root, ca, qkd, args.seconds, src, model)
                rows[model].append(r)
                print(f"run {i + 1} {model:11s}: {r['cpu_s_per_link_s']:.4f} CPU-s per link-s, "
                      f"real-time factor {r['realtime_factor']:.2f}, "
                      f"{r['secret_bps_per_link_s']:.0f} secret bit/s, QBER {r['qber']:.4f}",
                      flush=True)
    med = {m: {k: statistics.median(r[k] for r in v) for k in
               ("cpu_s_per_link_s", "secret_bps_per_link_s", "realtime_factor")}
           for m, v in rows.items()}
    ratio = med["bb84"]["cpu_s_per_link_s"] / med["analytic"]["cpu_s_per_link_s"]
    print("median CPU per link-second: " + ", ".join(
        f"{m} {med[m]['cpu_s_per_link_s']:.4f} s" for m in MODELS)
        + f" (analytic {ratio:.0f}x less than bb84); secret bit/s per link-s: " + ", ".join(
        f"{m} {med[m]['secret_bps_per_link_s']:.0f}" for m in MODELS))
    if args.baseline:
        old = med["bb84@baseline"]["cpu_s_per_link_s"]
        print(f"bb84 against the baseline: {old:.4f} -> {med['bb84']['cpu_s_per_link_s']:.4f} "
              f"CPU-s per link-s ({old / med['bb84']['cpu_s_per_link_s']:.2f}x less)")
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "loadavg": os.getloadavg()},
           "command": "python " + " ".join(sys.argv), "baseline": str(args.baseline or ""),
           "link": base, "seconds": args.seconds, "median": med, "bb84_over_analytic_cpu": ratio,
           "bb84_over_statistical_cpu": med["bb84"]["cpu_s_per_link_s"]
           / med["statistical"]["cpu_s_per_link_s"],
           "runs": rows}
    path = Path(args.out)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
