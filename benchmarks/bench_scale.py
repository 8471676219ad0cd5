#!/usr/bin/env python3
"""How a lab's cost grows with its size, in one sitting: for each size, a lab from
`qkdtwin generate` (random geometric, analytic links, control roles on one node) is deployed
cold and again warm, left idle, measured (CPU of every process in its namespaces, their
memory and count), runs its generated scenario (pairs at once, Eve and a link cut), and is
torn down. Needs root.

    sudo .venv/bin/python benchmarks/bench_scale.py [--sizes 6,20,50] [--pairs 20] [--idle 30]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from qkdtwin.deploy import deploy  # noqa: E402
from qkdtwin.runtime import netns  # noqa: E402
from qkdtwin.runtime.registry import get_runtime  # noqa: E402
from qkdtwin.scenario import cli as scenario_cli  # noqa: E402
from qkdtwin.topology import load_lab  # noqa: E402
from qkdtwin.topology.generate import Spec, generate  # noqa: E402
from qkdtwin.topology.labcopy import lab_lock  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
NETNS = get_runtime("netns")


def _proc(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
        return (int(stat[11]) + int(stat[12])) / TICK, rss
    except (OSError, IndexError, ValueError):
        return None


def lab_pids(lab) -> dict[str, list[int]]:
    return {node: netns.ns_pids(lab.namespace(node)) for node in lab.nodes}


def measure_idle(lab, seconds: float) -> dict:
    pids = lab_pids(lab)
    flat = [p for ps in pids.values() for p in ps]
    before = {p: _proc(p) for p in flat}
    time.sleep(seconds)
    after = {p: _proc(p) for p in flat}
    cpu = sum(a[0] - b[0] for p in flat if (a := after[p]) and (b := before[p]))
    rss = sum(a[1] for a in after.values() if a)
    km_nodes = [n for n in lab.nodes if "km" in lab.nodes[n].roles]
    return {"idle_cpu_cores": cpu / seconds, "rss_gib": rss / 2**30, "processes": len(flat),
            "processes_per_km_node": statistics.median(len(pids[n]) for n in km_nodes),
            "rss_mib_per_km_node": statistics.median(
                sum(a[1] for p in pids[n] if (a := after.get(p))) / 2**20 for n in km_nodes)}


def run_size(n: int, octet: int, pairs: int, idle: float, tmp: Path) -> dict:
    name = f"scale{n}"
    spec = Spec("geometric", nodes=n, seed=1, name=name, octet=octet, pairs=pairs,
                area_km=round(150 * math.sqrt(n / 50), 1))
    paths = generate(spec, tmp / name)
    lab = load_lab(paths[0])
    out: dict = {"nodes": n, "qkd_links": len(lab.qkd_links), "pairs": pairs}
    with lab_lock(name):
        NETNS.down(lab, log=lambda _: None)
        try:
            for phase in ("cold", "warm"):
                lines: list[str] = []
                t0 = time.monotonic()
                res = deploy(lab.path, log=lines.append)
                out[f"deploy_{phase}_s"] = round(time.monotonic() - t0, 1)
                out[f"deploy_{phase}_changed"] = res.playbook.changed if res.playbook else None
                if not res.ok:
                    out["error"] = "\n".join(lines[-20:])
                    return out
                print(f"  {name}: deploy {phase} {out[f'deploy_{phase}_s']} s, "
                      f"changed={out[f'deploy_{phase}_changed']}", flush=True)
            time.sleep(10)  # let the start-up settle
            out.update(measure_idle(lab, idle))
            print(f"  {name}: idle {out['idle_cpu_cores']:.2f} cores, {out['rss_gib']:.1f} GiB, "
                  f"{out['processes']} processes", flush=True)
            result = scenario_cli.run(str(lab.path), paths[2], log=lambda _: None)
            firsts = sorted(p.first_key_s for p in result.pairs if p.first_key_s is not None)
            out.update({
                "scenario_ok": result.ok,
                "pairs_identical": sum(1 for p in result.pairs if p.passed),
                "first_key_p95_s": firsts[min(len(firsts) - 1, int(0.95 * len(firsts)))]
                if firsts else None,
                "faults_ok": all(f.ok for f in result.faults)})
            print(f"  {name}: scenario {'ok' if result.ok else 'FAILED'}, "
                  f"{out['pairs_identical']}/{pairs} pairs, first key p95 "
                  f"{out['first_key_p95_s']} s", flush=True)
        finally:
            NETNS.down(lab, log=lambda _: None)
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="6,20,50", help="key managers per lab (6,20,50)")
    ap.add_argument("--pairs", type=int, default=20, help="application pairs of each scenario")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    ap.add_argument("--octet", type=int, default=244, help="first mgmt octet (one per size)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_scale needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="qkdtwin-bench-scale-") as d:
        for i, n in enumerate(sizes):
            print(f"{n} key managers:", flush=True)
            rows.append(run_size(n, args.octet + i, args.pairs, args.idle, Path(d)))
    print(f"{'nodes':>5} {'links':>5} {'cold s':>7} {'warm s':>7} {'idle cores':>10} "
          f"{'GiB':>5} {'procs':>5} {'MiB/km node':>11} {'pairs ok':>8} {'1st key p95':>11}")
    for r in rows:
        print(f"{r['nodes']:5d} {r['qkd_links']:5d} {r.get('deploy_cold_s', '-'):>7} "
              f"{r.get('deploy_warm_s', '-'):>7} {r.get('idle_cpu_cores', 0):10.2f} "
              f"{r.get('rss_gib', 0):5.1f} {r.get('processes', 0):5d} "
              f"{r.get('rss_mib_per_km_node', 0):11.0f} "
              f"{r.get('pairs_identical', 0):>4}/{r['pairs']:<3} "
              f"{_num(r.get('first_key_p95_s')):>11}")
    Path(args.out).write_text(json.dumps({"sizes": rows, "loadavg_end": os.getloadavg(),
                                          "cpus": os.cpu_count()}, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
