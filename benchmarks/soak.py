#!/usr/bin/env python3
"""Chaos soak on star6: applications ask for keys on every pair (ETSI 014 and 004, adjacent
and relayed through km0) while random faults hit the lab (SIGKILL of a KM or of a control
element, broker restart, link cut and restore, eavesdropper on and off); then the invariants
are checked (src/qkdtwin/chaos/invariants.py, docs/scenarios.md "Chaos soak"):

- every key identical at both ends; no key delivered twice;
- no key delivered from a link after its (QBER) alarm;
- no session left stuck; no process or namespace of the lab left after teardown.

Deploys a renamed copy of labs/star6 (``soak6``, mgmt 172.31.240.0/24, artefacts in
$TMPDIR/qkdtwin-soak/) under the lab's host-wide lock, and tears it down at the end, also on
Ctrl-C or an error (a first Ctrl-C ends the soak early and still checks; leftovers of an
earlier run are removed first). ``--lab`` uses a lab that is already deployed (netns
runtime) and leaves it up; then the process check is skipped.

Prints progress lines, the counts and a JSON summary, also written to --out (default
benchmarks/results/soak.json). Exit 0 when no invariant is violated, 1 otherwise, 2 when the
soak could not run. Needs root. Usage:

    .venv/bin/python benchmarks/soak.py --minutes 5 --seed 1
    .venv/bin/python benchmarks/soak.py --minutes 30 --seed 1
    .venv/bin/python benchmarks/soak.py --minutes 3 --lab labs/star6.clab.yml
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qkdtwin.chaos import collect
from qkdtwin.chaos.faults import KINDS, ChaosFaults
from qkdtwin.chaos.invariants import STUCK_STATES, Records, check, records_summary
from qkdtwin.chaos.traffic import Flow, Traffic, parse_flows
from qkdtwin.demo import wait_for_key
from qkdtwin.deploy import deploy
from qkdtwin.errors import UserError
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.runtime.registry import get_runtime
from qkdtwin.topology import load_lab
from qkdtwin.topology.labcopy import copy_lab, lab_lock

ROOT = Path(__file__).resolve().parents[1]
NAME, OCTET = "soak6", 240
# adjacent: km0-km1, km4-km5 (re-routed through km0 when their link fails), km3-km0;
# relayed through km0: km2-km3, km1-km2. Within the star6 users' max_sessions.
DEFAULT_FLOWS = ("014:sae-0>sae-1,014:sae-2>sae-3,014:sae-4>sae-5,014:sae-1>sae-2,"
                 "014:sae-3>sae-0,004:sae-0>sae-1,004:sae-2>sae-3,004:sae-4>sae-5,"
                 "004:sae-1>sae-2")
PROGRESS_S = 30.0
COOL_DOWN_S = 20.0   # traffic after the last fault, before it stops
SETTLE_S = 15.0      # after the applications closed their streams, before the KMs are read


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def _progress(t0: float, traffic: Traffic, faults: ChaosFaults) -> None:
    s = traffic.snapshot()
    fc = ", ".join(f"{k} {v}" for k, v in sorted(faults.counts().items())) or "none"
    log(f"[{time.monotonic() - t0:6.0f}s] calls {s['calls']}, keys {s['keys_first_end']} first"
        f" end / {s['keys_second_end']} second end, withdrawn {s['withdrawn']}, errors"
        f" {s['errors']}, faults: {fc}")


def run_soak(lab_ref: str | Path, args: argparse.Namespace, flows: list[Flow]
             ) -> tuple[Records, dict[str, Any]]:
    """Traffic and faults for --minutes on a deployed lab; then the records."""
    lab = DeployedLab.load(lab_ref)
    for f in flows:
        lab.sae_identity(f.src)
        lab.sae_identity(f.dst)
    log(f"lab {lab.name}: waiting until every QKD link has key")
    wait_for_key(lab, args.key_timeout, log)
    traffic = Traffic(lab, flows, args.seed, interval=args.interval)

    def on_fault(active: bool) -> None:
        traffic.fault_active = active
        if not active:
            traffic.fault_ended = time.monotonic()

    faults = ChaosFaults(lab, args.seed, log, gap_s=tuple(args.gap), hold_s=tuple(args.hold),
                         kinds=tuple(args.kinds), on_change=on_fault)
    started = time.time()
    t0 = time.monotonic()
    log(f"soak: {len(flows)} application flows, faults {', '.join(args.kinds)}, "
        f"{args.minutes:g} min, seed {args.seed}")
    traffic.start()
    faults.start()
    interrupted = False
    try:
        deadline = t0 + args.minutes * 60
        next_note = t0 + PROGRESS_S
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= next_note:
                next_note += PROGRESS_S
                _progress(t0, traffic, faults)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: ending the soak early (Ctrl-C again to skip the checks)")
    log("soak: no more faults (finishing the current one)")
    faults.finish()
    log(f"soak: {COOL_DOWN_S:g} s of traffic without faults, then the applications stop")
    time.sleep(COOL_DOWN_S)
    unfinished = traffic.join(timeout=180.0)
    _progress(t0, traffic, faults)
    log(f"soak: applications stopped; {SETTLE_S:g} s for the closes to reach every KM")
    time.sleep(SETTLE_S)
    rec = Records(app_keys=list(traffic.keys), streams_closed=set(traffic.streams_closed),
                  unfinished=unfinished)
    for km in lab.kms:
        d, w, s = collect.read_km(lab.lab_dir, km, started - 1.0)
        rec.deliveries += d
        rec.withdrawals += w
        rec.sessions_left += s
    rec.sessions_left += collect.health_sessions(lab, STUCK_STATES)
    rec.alarms, rec.arrivals, quarantine = collect.read_events(lab.lab_dir, started - 1.0)
    facts = {
        "lab": lab.name, "started": started, "duration_s": round(time.monotonic() - t0, 1),
        "interrupted": interrupted,
        "calls": dict(sorted(traffic.calls.items())),
        "faults": {"by_kind": faults.counts(), "failed": faults.failed(),
                   "list": [r.as_dict() for r in faults.records]},
        "errors": {"during_faults": dict(traffic.errors_fault.most_common()),
                   "calm": dict(traffic.errors_calm.most_common())},
        "withdrawn_at_second_end": dict(traffic.withdrawn),
        "lost_at_second_end": dict(traffic.lost),
        "streams": {"opened": len(traffic.streams_opened),
                    "closed": len(traffic.streams_closed)},
        "km_quarantine_events": len(quarantine),
    }
    return rec, facts


def soak_owned(args: argparse.Namespace, flows: list[Flow]) -> tuple[Records, dict[str, Any]]:
    """Deploy the soak6 copy, soak, tear down (always), check for leftovers."""
    workdir = Path(tempfile.gettempdir()) / "qkdtwin-soak"
    netns = get_runtime("netns")
    lines: list[str] = []
    with lab_lock(NAME):
        path = copy_lab(ROOT / "labs" / "star6.clab.yml", workdir, NAME, OCTET)
        topo = load_lab(path)
        netns.down(topo, log=lines.append)  # leftovers of an earlier run
        shutil.rmtree(topo.lab_dir, ignore_errors=True)  # its stores and events too
        try:
            log(f"deploying {NAME} from {path} (a few minutes)")
            t = time.monotonic()
            for attempt in (1, 2):  # on a loaded host a service can miss its start wait
                res = deploy(path, log=lines.append)
                if res.ok:
                    break
                failed = ", ".join(res.playbook.failed_hosts) or "?"
                if attempt == 2:
                    print("\n".join(lines[-40:]), file=sys.stderr)
                    raise UserError(f"deploy of {NAME} failed (hosts: {failed})")
                log(f"deploy failed on {failed}; deploying again")
            log(f"deployed in {time.monotonic() - t:.0f} s")
            rec, facts = run_soak(path, args, flows)
        finally:
            log(f"tearing {NAME} down")
            netns.down(topo, log=lines.append)
        time.sleep(2.0)
        rec.leftovers = collect.leftovers(NAME, topo.lab_dir)
    facts["teardown"] = "checked"
    return rec, facts


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                               text=True, capture_output=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_summary(s: dict[str, Any]) -> None:
    inv = s["invariants"]
    print("\n== chaos soak summary ==", flush=True)
    print(f"lab {s['lab']}, {s['duration_s']} s, seed {s['seed']}, commit {s['commit']}")
    print(f"calls: {sum(s['calls'].values())} ({_kv(s['calls'])})")
    k = inv["stats"]
    print(f"keys: {k.get('keys_matched', 0)} identical at both ends; first end only "
          f"{k.get('keys_only_first_end', 0)} ({k.get('keys_only_first_end_withdrawn', 0)} "
          f"withdrawn), second end only {k.get('keys_only_second_end', 0)}")
    print(f"faults: {sum(s['faults']['by_kind'].values())} ({_kv(s['faults']['by_kind'])}); "
          f"failed to apply: {_kv(s['faults']['failed']) or 'none'}")
    for when in ("during_faults", "calm"):
        e = s["errors"][when]
        kinds = "; ".join(f"{k} ×{v}" for k, v in e.items()) or "none"
        print(f"errors {when.replace('_', ' ')}: {sum(e.values())} ({kinds})")
    print(f"invariants: {_kv(inv['violations'])} -> "
          f"{'OK' if inv['ok'] else 'VIOLATED'}")
    for name, items in inv["examples"].items():
        for item in items[:5]:
            print(f"  {name}: {json.dumps(item)}")


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="soak length (default 5)")
    p.add_argument("--seed", type=int, default=1, help="random seed of faults and requests")
    p.add_argument("--lab", help="use this deployed lab (left up) instead of deploying soak6")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"),
                   help="where to write the JSON summary ('' for nowhere)")
    p.add_argument("--flows", default=DEFAULT_FLOWS,
                   help="API:SRC>DST,... (default: every star6 pair kind)")
    p.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS),
                   help=f"fault kinds (default {','.join(KINDS)})")
    p.add_argument("--gap", type=float, nargs=2, default=[5.0, 25.0], metavar=("MIN", "MAX"),
                   help="seconds between faults (default 5 25)")
    p.add_argument("--hold", type=float, nargs=2, default=[10.0, 30.0], metavar=("MIN", "MAX"),
                   help="seconds a cut or an eavesdropper lasts (default 10 30)")
    p.add_argument("--interval", type=float, default=0.5,
                   help="mean pause of each application between requests (s)")
    p.add_argument("--alarm-grace", type=float, default=2.0,
                   help="deliveries this soon after an alarm are not violations (s)")
    p.add_argument("--key-timeout", type=float, default=300.0,
                   help="how long to wait for key on every link before starting (s)")
    args = p.parse_args(argv)
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        p.error(f"unknown fault kind(s) {', '.join(bad)}; known: {', '.join(KINDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        flows = parse_flows(args.flows)
    except ValueError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # tear down on kill too
    try:
        if args.lab:
            rec, facts = run_soak(args.lab, args, flows)
            facts["teardown"] = "skipped (--lab: the lab is left up)"
        else:
            if os.geteuid() != 0:
                raise UserError("the soak deploys a lab: run it as root")
            rec, facts = soak_owned(args, flows)
    except (UserError, TimeoutError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted (the lab was torn down, nothing checked)", file=sys.stderr)
        return 130
    verdict = check(rec, grace_s=args.alarm_grace)
    summary = {"benchmark": "chaos soak (benchmarks/soak.py)", "commit": commit(),
               "seed": args.seed, "minutes": args.minutes,
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(facts["started"])),
               "flows": [f.name for f in flows], **facts,
               "records": records_summary(rec), "invariants": verdict.as_dict(),
               "machine": {"cpus": os.cpu_count(),
                           "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
               "ok": verdict.ok}
    print_summary(summary)
    text = json.dumps(summary, indent=2) + "\n"
    print(text, flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"summary written to {out}")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
