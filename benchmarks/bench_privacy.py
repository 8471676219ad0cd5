#!/usr/bin/env python3
"""Privacy amplification (Toeplitz via FFT) and verification hash throughput.

    python benchmarks/bench_privacy.py
"""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib.metadata import version as _version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qkdtwin.quantum.privacy import poly_hash, toeplitz_hash, toeplitz_seed  # noqa: E402


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main() -> int:
    out_path = Path(__file__).parent / "results" / "privacy.json"
    rng = np.random.default_rng(1)
    rows = []
    print(f"{'n':>9} {'out':>9} {'backend':>7} {'PA s':>7} {'PA Mbit/s':>9} {'hash Mbit/s':>11}")
    for n, repeat in ((10**5, 9), (10**6, 5), (10**7, 3)):
        m = n // 2
        x = rng.integers(0, 2, n, dtype=np.uint8)
        seed = toeplitz_seed(7, n, m)
        t_seed = best_of(lambda n=n, m=m: toeplitz_seed(7, n, m), repeat)
        t_hash = best_of(lambda x=x: poly_hash(x, 123456789), repeat)
        for backend in ("numpy", "ducc0"):  # numpy: the code before ducc0, in the same run
            t_pa = best_of(lambda x=x, m=m, seed=seed, b=backend: toeplitz_hash(x, m, seed, b),
                           repeat)
            rows.append({"input_bits": n, "output_bits": m, "backend": backend, "pa_cpu_s": t_pa,
                         "pa_throughput_bps": n / t_pa, "seed_cpu_s": t_seed,
                         "pa_with_seed_throughput_bps": n / (t_pa + t_seed),
                         "hash_cpu_s": t_hash, "hash_throughput_bps": n / t_hash})
            print(f"{n:9d} {m:9d} {backend:>7} {t_pa:7.3f} {n / t_pa / 1e6:9.1f} "
                  f"{n / t_hash / 1e6:11.1f}")
    out = {"benchmark": "privacy", "command": "python benchmarks/bench_privacy.py",
           "method": "Toeplitz matrix-vector product mod 2 as a float64 real-FFT convolution "
           "(numpy.fft, and ducc0's FFT at its good_size), compression to half the input; "
           "best of repeats, CPU time",
           "machine": platform.machine(), "python": platform.python_version(),
           "numpy": np.__version__, "ducc0": _version("ducc0"),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "results": rows}
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
