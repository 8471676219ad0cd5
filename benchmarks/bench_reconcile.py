#!/usr/bin/env python3
"""Reconciliation: efficiency f, frame error rate, throughput, round trips and bytes.

Every method reconciles the same random frames (Alice's bits, Bob's = Alice's with each bit
flipped with probability QBER), both parties in this process, every message through the wire
format the modules use (`qkdtwin.quantum.wire`), so the CPU time is both ends' work on one
core including encoding. f = disclosed bits / (n H2(QBER)) with QBER the channel's crossover
probability (`f_realised` uses the errors actually drawn); a frame error is a frame that
still differs afterwards (verification would discard it); with no failure the 95 % upper
bound 3/frames is given. Frames are reconciled in batches of about `--batch-bits` bits.

Methods are the entries of METHODS: `cascade-v1` is the Cascade of before issue 15
(benchmarks/cascade_v1.py, numpy), `cascade` today's (quantum/cascade.py, numba). Another
method adds an entry: a function (x, y, qber, seed, channel) -> corrected Bob key, where
`channel(msg) -> reply` carries every message to Alice's side and counts it. `ldpc` is
quantum/ldpc_reconcile.py; its sizes are code lengths (2^14, 2^16), each frame holding the
key bits the rate adaptation carries at that QBER (`key_bits_per_frame`).

    python benchmarks/bench_reconcile.py [--methods cascade,cascade-v1] [--sizes 10000,65536]
        [--frames cascade=30000,cascade-v1=200] [--qbers 0.01,0.05]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cascade_v1  # noqa: E402

from qkdtwin.quantum import cascade, ldpc_codes, ldpc_reconcile, wire  # noqa: E402

QBERS = (0.01, 0.02, 0.03, 0.05, 0.08)
SIZES = (10_000, 1 << 14, 1 << 16, 1 << 18)


class Channel:
    """Alice's side behind the wire format: counts round trips and bytes both ways."""

    def __init__(self, handler: Callable[[dict], dict]):
        self.handler = handler
        self.round_trips = 0
        self.bytes = 0

    def __call__(self, msg: dict) -> dict:
        data = wire.encode(msg)
        reply = wire.encode(self.handler(wire.decode(data)))
        self.round_trips += 1
        self.bytes += len(data) + len(reply)
        return wire.decode(reply)


def _cascade_with(mod) -> Callable:
    """A Cascade implementation (module with CascadePlan/ParityOracle/CascadeBob) as a method:
    the messages are postprocess.py's `parity` exchange."""

    def method(x, y, q, seed, channel_for):
        plan = mod.CascadePlan.for_qber(x.shape[1], x.shape[0], q, seed)
        layout = mod.CascadeLayout(plan)
        box = {}

        def alice(msg):
            if "plan" in msg:
                box["o"] = mod.ParityOracle(mod.CascadePlan.from_dict(msg["plan"]), x)
            par = box["o"].answer(np.asarray(msg["nodes"], np.int64))
            return {"type": "parity_reply", "parities": np.packbits(par)}

        channel = channel_for(alice)
        first = [True]

        def ask(nodes):
            small = nodes.astype(np.int32) if layout.total_nodes < 2**31 else nodes
            msg = {"type": "parity", "nodes": small}
            if first[0]:
                msg["plan"], first[0] = plan.to_dict(), False
            r = channel(msg)
            return np.unpackbits(np.asarray(r["parities"], np.uint8), count=len(nodes))

        res = mod.CascadeBob(plan, y, ask, layout).run()
        return res.key, res.leaked_bits

    return method


def _ldpc(x, y, q, seed, channel_for):
    """quantum/ldpc_reconcile.py: the plan and every syndrome cross the channel once."""
    plan = ldpc_reconcile.LdpcPlan.for_frames(x.shape[1], x.shape[0], q, seed)

    def alice(msg):
        a = ldpc_reconcile.LdpcAlice(ldpc_reconcile.LdpcPlan.from_dict(msg["plan"]), x,
                                     np.random.default_rng(seed))
        return {"type": "syndrome_reply", "syndromes": a.packed_syndromes()}

    rep = channel_for(alice)({"type": "syndrome", "plan": plan.to_dict()})
    res = ldpc_reconcile.LdpcBob(plan, y, q).decode(np.asarray(rep["syndromes"], np.uint8))
    return res.key, res.leaked_bits


# LDPC's size is the code length: a frame holds the key bits its rate adaptation carries
_ldpc.key_bits = lambda n, q: ldpc_codes.max_key_bits(  # type: ignore[attr-defined]
    n, ldpc_reconcile.target_efficiency(q), q) if n in ldpc_codes.LENGTHS else 0

METHODS: dict[str, Callable] = {
    "cascade": _cascade_with(cascade),
    "cascade-v1": _cascade_with(cascade_v1),
    "ldpc": _ldpc,
}


def h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def run(method: Callable, size: int, q: float, frames: int, batch_bits: int, seed: int) -> dict:
    n = method.key_bits(size, q) if hasattr(method, "key_bits") else size
    rng = np.random.default_rng(seed)
    batch = max(1, min(frames, batch_bits // n))
    leaked = failed = errors = done = 0
    rts, nbytes, cpu = [], 0, 0.0
    while done < frames:
        f = min(batch, frames - done)
        x = rng.integers(0, 2, (f, n), dtype=np.uint8)
        e = (rng.random((f, n)) < q).astype(np.uint8)
        y = x ^ e
        channels: list[Channel] = []

        def channel_for(handler, channels=channels):
            channels.append(Channel(handler))
            return channels[-1]

        t = time.process_time()
        key, leak = method(x, y, q, int(rng.integers(1 << 62)), channel_for)
        cpu += time.process_time() - t
        leaked += leak
        failed += int((key != x).any(axis=1).sum())
        rts.append(sum(c.round_trips for c in channels))
        nbytes += sum(c.bytes for c in channels)
        errors += int(e.sum())
        done += f
    bits = n * frames
    return {
        "n": size, "key_bits_per_frame": n, "qber": q, "frames": frames, "batch_frames": batch,
        "frames_failed": failed, "fer": failed / frames,
        "fer_upper_95": 3.0 / frames if failed == 0 else None,
        "f": leaked / (bits * h2(q)), "f_realised": leaked / (bits * h2(errors / bits)),
        "leaked_bits": leaked,
        "round_trips_per_batch_median": float(np.median(rts)),
        "round_trips_per_batch_max": int(max(rts)),
        "bytes_per_frame": nbytes / frames,
        "cpu_s": cpu, "mbit_s": bits / cpu / 1e6,
    }


def _frames(spec: str) -> dict[str, dict[int, int]]:
    """'cascade=30000,cascade-v1=200' or 'cascade@65536=30000' -> per method (and size)."""
    out: dict[str, dict[int, int]] = {}
    for item in filter(None, spec.split(",")):
        key, _, val = item.partition("=")
        name, _, size = key.partition("@")
        out.setdefault(name, {})[int(size) if size else 0] = int(val)
    return out


DEFAULT_FRAMES = ("cascade@10000=20000,cascade@65536=4000,cascade@262144=1000,"
                  "cascade-v1@10000=1000,cascade-v1@65536=100,cascade-v1@262144=20,"
                  "ldpc@16384=100,ldpc@65536=40")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--qbers", default=",".join(map(str, QBERS)))
    ap.add_argument("--frames", default=DEFAULT_FRAMES,
                    help="frames per method[@size], e.g. cascade=30000,cascade-v1@10000=2000")
    ap.add_argument("--batch-bits", type=int, default=1 << 22)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "reconcile.json"))
    args = ap.parse_args()
    frames = _frames(args.frames)
    methods = args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r} (have {', '.join(METHODS)})")
        size = 1 << 14 if m == "ldpc" else 1000
        run(METHODS[m], size, 0.05, 2, 1 << 20, seed=0)  # warm-up (JIT, codes) untimed
    old = {}
    if Path(args.out).exists():
        old = {(r["method"], r["n"], r["qber"]): r
               for r in json.loads(Path(args.out).read_text()).get("results", [])
               if "method" in r}
    print(f"{'method':>10} {'n':>7} {'QBER':>5} {'frames':>6} {'fail':>4} {'f':>6} {'FER':>9} "
          f"{'RTs':>5} {'kB/fr':>7} {'Mbit/s':>7}")
    for n in map(int, args.sizes.split(",")):
        for q in map(float, args.qbers.split(",")):
            for m in methods:
                if hasattr(METHODS[m], "key_bits") and not METHODS[m].key_bits(n, q):
                    continue  # LDPC runs at its code lengths only
                if m.startswith("cascade") and n == 1 << 14:
                    continue  # 2^14 is an LDPC code length; Cascade is quoted at 10^4
                per = frames.get(m, {})
                nf = per.get(n, per.get(0, 200))
                r = {"method": m, **run(METHODS[m], n, q, nf, args.batch_bits,
                                        seed=int(q * 1000) + n)}
                old[(m, n, q)] = r
                fer = (f"<{r['fer_upper_95']:.1e}" if r["frames_failed"] == 0
                       else f"{r['fer']:.1e}")
                print(f"{m:>10} {n:7d} {q:5.2f} {nf:6d} {r['frames_failed']:4d} {r['f']:6.3f} "
                      f"{fer:>9} {r['round_trips_per_batch_max']:5d} "
                      f"{r['bytes_per_frame'] / 1e3:7.1f} {r['mbit_s']:7.2f}", flush=True)
    rows = sorted(old.values(), key=lambda r: (r["method"], r["n"], r["qber"]))
    out = {"benchmark": "reconcile",
           "methods": {"cascade": "quantum/cascade.py (numba kernels, frames advance "
                                  "independently, lazy final passes)",
                       "cascade-v1": "benchmarks/cascade_v1.py: Cascade before issue 15 "
                                     "(numpy, lockstep passes)",
                       "ldpc": "quantum/ldpc_reconcile.py: one-way syndrome decoding, "
                               "rate-adaptive over quantum/ldpc_codes.py, PyPI ldpc's "
                               "sum-product BP; n is the code length"},
           "command": "python " + " ".join(sys.argv),
           "machine": platform.machine(), "python": platform.python_version(),
           "numpy": np.__version__, "load_average": os.getloadavg(),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
