#!/usr/bin/env python3
"""Cost of the quantum connection's TLS: channel frames from Alice's source to Bob's
detector over loopback TCP, in clear and over mutual TLS 1.3 (as the module does), in one
sitting. Reports emulated pulses per wall second and CPU seconds per emulated link-second
of the 25 km, 100 MHz link (source + framing + transport + detector, both ends).

    python benchmarks/bench_module_link.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qkdtwin.qkd_module.framing import FramedSocket, pack_channel, unpack_channel  # noqa: E402
from qkdtwin.qkd_module.peerlink import PeerTls  # noqa: E402
from qkdtwin.quantum.channel import AliceSource, BobDetector  # noqa: E402
from qkdtwin.quantum.params import LinkParams  # noqa: E402
from qkdtwin.testbed.pki import TestCA  # noqa: E402

FRAME_PULSES = 5_000_000  # 0.05 s of a 100 MHz source (the module's default frame_s)


def run(p: LinkParams, pulses: int, tls: tuple[PeerTls, PeerTls] | None) -> dict[str, float]:
    ls = socket.create_server(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    got: dict[str, float] = {}

    def bob() -> None:
        sock, _ = ls.accept()
        if tls:
            sock = tls[1].wrap(sock, "alice", server=True)
        fs = FramedSocket(sock)
        det = BobDetector(p, np.random.default_rng(2))
        n = 0
        while n < pulses:
            frame = unpack_channel(fs.recv())
            det.detect(frame)
            n += frame.n_pulses
            det.take(det.end_slot)
        got["rx_bytes"] = fs.bytes_received
        fs.close()

    t = threading.Thread(target=bob)
    t.start()
    src = AliceSource(p, np.random.default_rng(1))
    wall, cpu = time.perf_counter(), time.process_time()
    sock = socket.create_connection(("127.0.0.1", port))
    if tls:
        sock = tls[0].wrap(sock, "bob", server=False)
    fs = FramedSocket(sock)
    sent = 0
    while sent < pulses:
        frame = src.emit(FRAME_PULSES)
        fs.send(pack_channel(frame, 0.0))
        src.take(sent + FRAME_PULSES)
        sent += FRAME_PULSES
    t.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    fs.close()
    ls.close()
    link_s = pulses / p.source_rate_hz
    return {"pulses_per_wall_s": pulses / wall, "cpu_s_per_link_s": cpu / link_s,
            "mbit_on_wire_per_link_s": got["rx_bytes"] * 8 / 1e6 / link_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="emulated link-seconds per run")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    p = LinkParams(length_km=25, source_rate_hz=100e6)
    pulses = int(p.source_rate_hz * args.seconds) // FRAME_PULSES * FRAME_PULSES
    with tempfile.TemporaryDirectory() as d:
        ca = TestCA(Path(d))
        ids = {n: ca.issue(n) for n in ("alice", "bob")}
        tls = tuple(PeerTls(ca.ca, ids[n].cert, ids[n].key) for n in ("alice", "bob"))
        rows: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            rows["plain"].append(run(p, pulses, None))
            rows["tls"].append(run(p, pulses, tls))  # type: ignore[arg-type]
    best = {k: max(v, key=lambda r: r["pulses_per_wall_s"]) for k, v in rows.items()}
    for k, r in best.items():
        print(f"{k:>6}: {r['pulses_per_wall_s'] / 1e6:8.1f} M pulses/s  "
              f"{r['cpu_s_per_link_s']:6.3f} CPU-s per link-s  "
              f"{r['mbit_on_wire_per_link_s']:6.1f} Mbit/s on the wire")
    cost = best["tls"]["cpu_s_per_link_s"] / best["plain"]["cpu_s_per_link_s"] - 1
    print(f"TLS costs {cost * 100:+.1f} % CPU on the quantum connection (best of {args.repeat})")
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "link": "25 km, 100 MHz, frames of 5e6 pulses", "best": best,
           "tls_cpu_overhead": cost, "runs": rows}
    path = Path(__file__).parent / "results" / "module_link.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
