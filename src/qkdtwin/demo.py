"""`qkdtwin demo LAB`: what `make demo` runs — deploy the lab, wait until every QKD link has
key, run the paper's experiment (scenarios/paper-fig4.yml), print a short summary, write the
event timeline, and say how to open the dashboard and how to tear the lab down.

    qkdtwin demo labs/star6.clab.yml
    qkdtwin demo star6 --no-deploy                    # the lab is already deployed
    qkdtwin demo star6 --scenario scenarios/link-cut.yml --results ''

Progress lines all the way (the deploy prints one line per Ansible task). Writes
``labs/clab-<lab>/timeline/timeline.{png,html}`` and the time from the demo's start to the
first key of every pair to ``labs/clab-<lab>/demo.json`` (``--results
benchmarks/results/demo.json`` records a benchmark figure). Exit 0 when every pair got
identical keys, 1 otherwise, 2 for bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qkdtwin.deploy import deploy
from qkdtwin.errors import UserError
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.runtime.registry import get_runtime
from qkdtwin.scenario import cli as scenario_cli
from qkdtwin.scenario.report import format_table
from qkdtwin.topology import load_lab

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCENARIO = REPO_ROOT / "scenarios" / "paper-fig4.yml"
DEFAULT_RESULTS = "lab"  # labs/clab-<lab>/demo.json: a demo leaves the work tree clean
Log = Callable[[str], None]


def link_pools(lab: Any) -> dict[str, dict[str, int | None]]:
    """Link id -> {km: pool bits or None} from every KM's /healthz (the details need the
    operator certificate)."""
    out: dict[str, dict[str, int | None]] = {lk["id"]: {lk["a"]: None, lk["b"]: None}
                                            for lk in lab.qkd_links}
    for km, health in lab.km_health(timeout=5).items():
        for lid, info in ((health or {}).get("links") or {}).items():
            if lid in out and isinstance(info, dict):
                bits = info.get("pool_bits")
                out[lid][km] = bits if isinstance(bits, int) else None
    return out


def wait_for_key(lab: Any, timeout: float, log: Log, every: float = 5.0) -> float:
    """Until both KMs of every QKD link hold link key; returns the seconds it took."""
    start = time.monotonic()
    last_note = -every
    while True:
        pools = link_pools(lab)
        ready = [lid for lid, ends in pools.items() if all(v and v > 0 for v in ends.values())]
        waited = time.monotonic() - start
        if len(ready) == len(pools):
            log(f"  key on all {len(pools)} QKD links after {waited:.1f} s")
            return waited
        if waited - last_note >= every:
            last_note = waited
            missing = ", ".join(sorted(set(pools) - set(ready)))
            log(f"  [{waited:5.1f}s] key on {len(ready)}/{len(pools)} QKD links "
                f"(waiting for {missing})")
        if waited > timeout:
            raise UserError(f"the QKD links {', '.join(sorted(set(pools) - set(ready)))} had no "
                            f"key after {timeout:.0f} s (see `qkdtwin status` and the KM logs "
                            f"in {lab.lab_dir}/nodes/<km>/logs/)")
        time.sleep(1.0)


def _prog() -> str:
    """How the user called us, for the hints at the end (e.g. .venv/bin/qkdtwin)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0].endswith("qkdtwin") else "qkdtwin"
    return shlex.quote(os.path.relpath(argv0) if os.sep in argv0 else argv0)


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def run_demo(lab_ref: str, *, scenario: Path = DEFAULT_SCENARIO, deploy_lab: bool = True,
             results: Path | str | None = DEFAULT_RESULTS, key_timeout: float = 300.0,
             log: Log = print) -> int:
    t_start = time.time()
    m0 = time.monotonic()
    topo = load_lab(lab_ref)  # a clear error for a wrong lab before anything else
    scenario_cli.load_scenario(scenario)
    steps = 5
    deploy_s = None
    if deploy_lab:
        log(f"[1/{steps}] deploying lab {topo.name} ({len(topo.nodes)} nodes, "
            f"{len(topo.links)} links): namespaces, then Ansible (one line per task)")
        res = deploy(lab_ref, log=lambda line: log(f"  {line}"))
        if not res.ok:
            failed = ", ".join(res.playbook.failed_hosts) or "see above"
            raise UserError(f"deploying {topo.name} failed (hosts: {failed})")
        deploy_s = res.seconds
        log(f"  lab {topo.name} deployed in {res.seconds:.1f} s")
        rt = get_runtime()  # the demo deploys on the default runtime
        for line in rt.format_status(rt.status(topo)).splitlines():  # nodes, addresses
            log(f"  {line}")
    else:
        log(f"[1/{steps}] lab {topo.name}: using the deployed lab (--no-deploy)")
    lab = DeployedLab.load(lab_ref)

    log(f"[2/{steps}] waiting until every QKD link has key (the emulated BB84 links "
        "produce it from the deploy on)")
    wait_s = wait_for_key(lab, key_timeout, log)

    log(f"[3/{steps}] scenario {_rel(scenario)}")
    result = scenario_cli.run(lab_ref, scenario, log=lambda line: log(f"  {line}"))
    log(format_table(result))

    log(f"[4/{steps}] timeline of the run")
    out_dir = lab.lab_dir / "timeline"
    timeline: list[str] = []
    try:
        png, page = scenario_cli.write_timeline(
            lab.lab_dir, out_dir, result.started - 0.5,
            f"qkdtwin {lab.name}: scenario {result.scenario} (paper Fig. 4)")
        timeline = [_rel(png), _rel(page)]
        log(f"  wrote {timeline[0]}\n  wrote {timeline[1]}")
    except UserError as exc:
        log(f"  no timeline: {exc}")

    log(f"[5/{steps}] summary")
    summary = _summary(result, t_start)
    for line in summary["lines"]:
        log(line)
    if results == DEFAULT_RESULTS:
        results = lab.lab_dir / "demo.json"
    if results is not None:
        results = Path(results)
        _write_results(results, lab.name, t_start, deploy_s, wait_s, result, summary,
                       time.monotonic() - m0)
        log(f"  time to first key per pair written to {_rel(results)}")
    prog = _prog()
    ref = shlex.quote(lab_ref)
    if timeline:
        log(f"timeline: open {timeline[1]} in a browser (image: {timeline[0]})")
    log(f"dashboard: {prog} dashboard {ref} --port 8050   then open the URL it prints "
        "(its token lets the page use the controls)")
    log(f"tear down: {prog} down {ref}   (or: make down LAB={ref})")
    log(f"demo {'PASSED' if result.ok else 'FAILED'} in {time.monotonic() - m0:.1f} s")
    return 0 if result.ok else 1


def _summary(result: Any, t_start: float) -> dict[str, Any]:
    lines = []
    pairs = []
    ok = sum(1 for p in result.pairs if p.passed)
    keys = sum(p.keys_matched for p in result.pairs)
    lines.append(f"  pairs: {ok}/{len(result.pairs)} with identical keys at both "
                 f"applications ({keys} keys)")
    for p in result.pairs:
        path = "-".join(p.path) if p.path else "path not recorded"
        relay = ""
        if p.path and len(p.path) > 2:
            relay = f" (relayed through {', '.join(p.path[1:-1])})"
        since_demo = None
        if p.first_key_s is not None and p.start is not None:
            since_demo = result.started + p.start + p.first_key_s - t_start
        first = ("no key" if p.first_key_s is None else
                 f"first key {p.first_key_s:.2f} s after the request, "
                 f"{since_demo:.1f} s after the demo started")
        lines.append(f"  {p.name}: {p.src} -> {p.dst}, path {path}{relay}, "
                     f"{p.keys_matched}/{p.keys_wanted} keys identical, {first}")
        pairs.append({"name": p.name, "saes": [p.src, p.dst], "path": p.path,
                      "keys_matched": p.keys_matched, "keys_wanted": p.keys_wanted,
                      "first_key_after_request_s": _r(p.first_key_s),
                      "first_key_after_demo_start_s": _r(since_demo), "passed": p.passed})
    return {"lines": lines, "pairs": pairs}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _write_results(path: Path, lab: str, t_start: float, deploy_s: float | None,
                   wait_s: float, result: Any, summary: dict[str, Any], total_s: float) -> None:
    firsts = [p["first_key_after_demo_start_s"] for p in summary["pairs"]]
    data = {
        "benchmark": "qkdtwin demo: time from the demo's start to the first key of every pair",
        "lab": lab,
        "scenario": result.scenario,
        "date": dt.datetime.fromtimestamp(t_start, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "deploy_s": _r(deploy_s),
        "wait_for_link_key_s": _r(wait_s),
        "scenario_s": _r(result.duration),
        "first_key_on_every_pair_after_demo_start_s":
            max(firsts) if firsts and None not in firsts else None,
        "pairs": summary["pairs"],
        "total_s": _r(total_s),
        "ok": result.ok,
        "reference": "the paper's emulated deployment needed about a minute for its QKD "
                     "protocol to produce the first key",
        "machine": {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg())},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def cmd_demo(args: argparse.Namespace) -> int:
    results = args.results or None
    return run_demo(args.lab, scenario=Path(args.scenario), deploy_lab=not args.no_deploy,
                    results=results, key_timeout=args.key_timeout,
                    log=lambda line: print(line, flush=True))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="deploy a lab, run the paper's experiment, summary + timeline",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lab", metavar="LAB", help="labs/star6.clab.yml or a lab name")
    p.add_argument("--scenario", metavar="FILE", default=str(DEFAULT_SCENARIO),
                   help="scenario to run (default: scenarios/paper-fig4.yml)")
    p.add_argument("--no-deploy", action="store_true",
                   help="use the lab as deployed (skip `qkdtwin deploy`)")
    p.add_argument("--results", metavar="PATH", default=DEFAULT_RESULTS,
                   help="where to write the timings (default labs/clab-<lab>/demo.json; "
                        "'' for nowhere)")
    p.add_argument("--key-timeout", type=float, default=300.0, metavar="S",
                   help="how long to wait for key on every QKD link (default 300 s)")
    p.set_defaults(func=cmd_demo)
