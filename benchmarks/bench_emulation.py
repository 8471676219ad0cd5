#!/usr/bin/env python3
"""Emulation cost: CPU seconds per emulated link-second over 25 km (GYS-like link).

Measures the quantum layer (Alice's source + channel, Bob's detector, frames of 10^7 pulses)
and, separately, the post-processing of the block those pulses give (sifting, estimation,
Cascade, verification, PA, both ends). Links emulable in real time = cores / CPU per second.

    python benchmarks/bench_emulation.py
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qkdtwin.quantum.channel import AliceSource, BobDetector  # noqa: E402
from qkdtwin.quantum.link import emulate, run_link_block  # noqa: E402
from qkdtwin.quantum.params import LinkParams  # noqa: E402


def main() -> int:
    out_path = Path(__file__).parent / "results" / "emulation.json"
    cores = os.cpu_count() or 1
    rows = []
    print(f"{'rate':>8} {'emu s/s':>8} {'pp s/s':>8} {'total':>8} {'links(quantum)':>14} "
          f"{'links(all)':>10} {'secret b/s':>10}")
    for rate, seconds in ((100e6, 2.0), (1e9, 0.5)):
        p = LinkParams(length_km=25, source_rate_hz=rate)
        n = int(rate * seconds)
        a = AliceSource(p, np.random.default_rng(1))
        b = BobDetector(p, np.random.default_rng(2))
        t = time.process_time()
        emulate(p, n, a, b)
        emu = (time.process_time() - t) / seconds
        out = run_link_block(p, n, np.random.default_rng(3))
        pp = out.cpu_postprocess_s / seconds
        total = emu + pp
        assert out.alice_key is not None and (out.alice_key == out.bob_key).all()
        row = {"source_rate_hz": rate, "length_km": 25, "emulated_s": seconds,
               "emulation_cpu_per_link_s": emu, "postprocess_cpu_per_link_s": pp,
               "total_cpu_per_link_s": total,
               "links_realtime_quantum_only": cores / emu,
               "links_realtime_with_postprocessing": cores / total,
               "detections_per_s": out.detections / seconds,
               "sifted_signal_bps": out.bob.sifted_signal / seconds,
               "secret_bps": out.secret_bits / seconds, "qber": out.estimate.qber,
               "reconciliation_round_trips": out.bob.extra.get("reconciliation_round_trips")}
        rows.append(row)
        print(f"{rate / 1e6:6.0f}MHz {emu:8.3f} {pp:8.3f} {total:8.3f} {cores / emu:14.1f} "
              f"{cores / total:10.1f} {row['secret_bps']:10.0f}")
    out = {"benchmark": "emulation", "command": "python benchmarks/bench_emulation.py",
           "cores": cores, "machine": platform.machine(), "python": platform.python_version(),
           "numpy": np.__version__, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "results": rows}
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
