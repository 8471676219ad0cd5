"""Key Manager benchmark (issue 4): ETSI 014 enc_keys throughput and latency percentiles for
an adjacent pair with keep-alive mutual-TLS connections and key prefetched, and end-to-end
relay latency for 1, 2 and 4 hops, all on loopback.

Baselines measured in the same run: ``GET /kmapi/versions`` through the same TLS + WSGI +
Flask stack (what the KM's key logic adds on top), and a pair on one KM (0 hops: what relay
adds per hop). Writes benchmarks/results/km.json.

    .venv/bin/python benchmarks/bench_km.py [--seconds 5] [--clients 4] [--samples 150]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from qkdtwin.bus import BrokerConfig  # noqa: E402
from qkdtwin.testbed.broker import TestBroker  # noqa: E402
from qkdtwin.testbed.fake_control import FakeControl  # noqa: E402
from qkdtwin.testbed.km_cluster import KmCluster  # noqa: E402
from qkdtwin.testbed.pki import TestCA  # noqa: E402


def _conn(port: int, ca: str, cert: str, key: str) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)


def _client(args: tuple) -> list[float]:
    port, ca, cert, key, path, seconds = args
    conn = _conn(port, ca, cert, key)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if t0 > end:
            break
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status} {body[:200]!r}")
        lat.append(time.perf_counter() - t0)
    conn.close()
    return lat


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def load(port: int, ca: str, ident, path: str, clients: int, seconds: float) -> dict:
    with mp.get_context("fork").Pool(clients) as pool:
        t0 = time.perf_counter()
        res = pool.map(_client, [(port, ca, ident.cert, ident.key, path, seconds)] * clients)
        wall = time.perf_counter() - t0
    lat = [x for r in res for x in r]
    ms = [x * 1000 for x in lat]
    return {"requests": len(lat), "seconds": round(seconds, 2), "clients": clients,
            "rps": round(len(lat) / seconds, 1), "wall_s": round(wall, 2),
            "p50_ms": round(pct(ms, 50), 2), "p90_ms": round(pct(ms, 90), 2),
            "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2)}


def sae(ca: TestCA, name: str, user: str = "alice"):
    return ca.issue(name, ou="sae", o=user)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--samples", type=int, default=150)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/km.json"))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-km-"))
    ca = TestCA(tmp / "pki")
    broker = TestBroker(tmp / "broker", ca).start()
    ctl_id = ca.issue("ctl", ou="node")
    nodes = [f"km{i}" for i in range(5)]
    users = {f"sae-{n}": {"user": "alice", "km": n} for n in nodes}
    users["sae-c0"] = {"user": "alice", "km": "km0"}
    out: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "platform": platform.platform()},
                 "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                 "note": "the machine is shared with other work; see loadavg"}
    try:
        # 1) throughput: adjacent pair km0 -> km1, keys prefetched (measures the KM, not QKD)
        links = [("km0", "km1")]
        ctl = FakeControl(BrokerConfig("127.0.0.1", broker.port, ca.ca, ctl_id.cert,
                                       ctl_id.key), users, links).start()
        cl = KmCluster(tmp / "tp", ca, broker.port, links,
                       extra={"prefetch_keys": 2048, "threads": 16,
                              "pool": {"low_keys": 16384, "batch": 2048, "max_keys": 40000}})
        try:
            cl.start()
            master = sae(ca, "sae-km0")
            port = cl.ports["km0"]
            path = "/api/v1/keys/sae-km1/enc_keys?number=1&size=256"
            _client((port, ca.ca, master.cert, master.key, path, 1.0))  # open session, warm
            time.sleep(2.0)  # let the prefetch fill the ready buffer
            base = load(port, ca.ca, master, "/kmapi/versions", a.clients, a.seconds)
            time.sleep(0.5)
            enc = load(port, ca.ca, master, path, a.clients, a.seconds)
            out["enc_keys"] = {**enc, "path": path,
                               "baseline_versions": base,
                               "ratio_to_baseline_rps": round(enc["rps"] / base["rps"], 3)}
            print("enc_keys", json.dumps(out["enc_keys"]))
        finally:
            cl.stop()
            ctl.stop()

        # 2) relay latency: a line of five KMs, no prefetch: every request relays its key
        links = [(nodes[i], nodes[i + 1]) for i in range(4)]
        ctl = FakeControl(BrokerConfig("127.0.0.1", broker.port, ca.ca, ctl_id.cert,
                                       ctl_id.key), users, links).start()
        cl = KmCluster(tmp / "relay", ca, broker.port, links, extra={"prefetch_keys": 0})
        try:
            cl.start()
            master = sae(ca, "sae-km0")
            conn = _conn(cl.ports["km0"], ca.ca, master.cert, master.key)
            relay: dict = {}
            for hops, slave in ((0, "sae-c0"), (1, "sae-km1"), (2, "sae-km2"),
                                (4, "sae-km4")):
                path = f"/api/v1/keys/{slave}/enc_keys?number=1&size=256"
                lat = []
                for i in range(a.samples + 10):
                    t0 = time.perf_counter()
                    conn.request("GET", path)
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{hops} hops: HTTP {r.status}")
                    if i >= 10:  # the first requests open the session
                        lat.append((time.perf_counter() - t0) * 1000)
                relay[str(hops)] = {"p50_ms": round(statistics.median(lat), 2),
                                    "p90_ms": round(pct(lat, 90), 2),
                                    "p99_ms": round(pct(lat, 99), 2), "samples": len(lat)}
                print(f"relay {hops} hops", relay[str(hops)])
            base0 = relay["0"]["p50_ms"]
            per_hop = {h: round((relay[h]["p50_ms"] - base0) / int(h), 2)
                       for h in ("1", "2", "4")}
            out["relay"] = {"latency_by_hops": relay, "baseline": "0 hops (pair on one KM)",
                            "added_ms_per_hop_p50": per_hop,
                            "link_delay_ms": 0.0}
        finally:
            cl.stop()
            ctl.stop()
        e = out["enc_keys"]
        out["targets"] = {
            "enc_keys_rps>=1000": e["rps"] >= 1000,
            "enc_keys_p99<50ms": e["p99_ms"] < 50,
            "relay_per_hop<5ms": all(v < 5 for v in out["relay"]["added_ms_per_hop_p50"].values()),
        }
        out["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        print("targets", out["targets"], "loadavg", out["machine"]["loadavg_after"])
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
        print("wrote", a.out)
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # key stores and the test CA: nothing to keep
    return 0


if __name__ == "__main__":
    sys.exit(main())
