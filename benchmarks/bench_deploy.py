#!/usr/bin/env python3
"""Time `qkdtwin deploy` of the star6 lab; write benchmarks/results/deploy.json.

Runs on a renamed copy of labs/star6 (`benchstar6`, mgmt subnet 172.31.236.0/24, artefacts
in a temp dir) so that it never disturbs a lab deployed from labs/.

By default the whole playbooks/site.yml (every role) is timed:

- first:      deploy of a lab that does not exist yet (namespaces, PKI, everything);
- warm:       deploy of the deployed lab again (must change nothing), --runs times; the
              headline figure is their median;
- after_down: `down` then deploy again (PKI kept, namespaces and services recreated);
- baseline:   one no-op module run on every node (`ansible all -m command -a true`)
              with the same inventory, measured in the same run; the ratio warm/baseline
              is less machine-dependent than seconds.

Needs root. Usage:
    .venv/bin/python benchmarks/bench_deploy.py [--runs 3] [--only-roles pki,common,mqtt_broker]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from qkdtwin.deploy import REPO_ROOT, SITE_PLAYBOOK, ansible_env, deploy
from qkdtwin.runtime.registry import get_runtime
from qkdtwin.topology import load_lab
from qkdtwin.topology.labcopy import copy_lab, lab_lock

ROOT = Path(__file__).resolve().parents[1]
NETNS = get_runtime("netns")
RESULT = ROOT / "benchmarks" / "results" / "deploy.json"


def timed_deploy(path: Path, playbook: Path) -> dict:
    lines: list[str] = []
    result = deploy(path, log=lines.append, playbook=playbook)
    if not result.ok:
        raise SystemExit("deploy failed:\n" + "\n".join(lines[-40:]))
    return {"seconds": round(result.seconds, 2),
            "playbook_seconds": round(result.playbook.seconds, 2),
            "changed": result.playbook.changed,
            # the machine is shared: the 1-minute load average right after the run
            "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def baseline(inventory: Path) -> float:
    ansible = Path(sys.executable).parent / "ansible"
    start = time.monotonic()
    subprocess.run([str(ansible), "-i", str(inventory), "all", "-m", "ansible.builtin.command",
                    "-a", "true"], cwd=REPO_ROOT, env=ansible_env(), check=True,
                   capture_output=True, timeout=300)
    return round(time.monotonic() - start, 2)


def _play_roles(play: dict) -> list[str]:
    """The roles of a play: its `roles:` and the group -> role list `qkdtwin_rollout` that
    site.yml's services play includes."""
    roles = [r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])]
    return roles + [r["role"] for r in (play.get("vars") or {}).get("qkdtwin_rollout", [])]


def _keep_roles(play: dict, roles: list[str]) -> dict:
    play = dict(play)
    play["roles"] = [r for r in play.get("roles", [])
                     if (r["role"] if isinstance(r, dict) else r) in roles]
    if "qkdtwin_rollout" in (play.get("vars") or {}):
        play["vars"] = dict(play["vars"], qkdtwin_rollout=[
            r for r in play["vars"]["qkdtwin_rollout"] if r["role"] in roles])
    return play


def _roles(playbook: Path) -> list[str]:
    plays = yaml.safe_load(playbook.read_text()) or []
    return [r for p in plays for r in _play_roles(p)]


def _only_roles(playbook: Path, roles: list[str], directory: Path) -> Path:
    plays = [_keep_roles(p, roles) for p in yaml.safe_load(playbook.read_text()) or []
             if set(_play_roles(p)) & set(roles)]
    if not plays:
        raise SystemExit(f"no play of {playbook} runs any of {roles}")
    out = directory / "playbook.yml"
    out.write_text(yaml.safe_dump(plays, sort_keys=False))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="warm deploys to take the median of")
    ap.add_argument("--output", type=Path, default=RESULT)
    ap.add_argument("--playbook", type=Path, default=SITE_PLAYBOOK,
                    help="playbook to deploy with (default playbooks/site.yml)")
    ap.add_argument("--only-roles", metavar="R1,R2",
                    help="deploy only the plays of the playbook that run these roles "
                         "(e.g. pki,common,mqtt_broker: the base rollout)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_deploy: needs root (network namespaces)", file=sys.stderr)
        return 2

    with lab_lock("benchstar6"), tempfile.TemporaryDirectory(prefix="qkdtwin-bench-") as tmp:
        playbook = args.playbook.resolve()
        if args.only_roles:
            playbook = _only_roles(playbook, args.only_roles.split(","), Path(tmp))
        roles = _roles(playbook)
        lab = load_lab(copy_lab(ROOT / "labs" / "star6.clab.yml", Path(tmp), "benchstar6", 236))
        NETNS.down(lab, log=lambda _: None)
        load_before = os.getloadavg()
        try:
            first = timed_deploy(lab.path, playbook)
            print(f"first deploy: {first['seconds']} s (changed={first['changed']})", flush=True)
            warm = []
            for i in range(args.runs):
                warm.append(timed_deploy(lab.path, playbook))
                print(f"warm deploy {i + 1}: {warm[-1]['seconds']} s "
                      f"(changed={warm[-1]['changed']})", flush=True)
            base = baseline(lab.lab_dir / "ansible-inventory.yml")
            print(f"baseline (one no-op module run on every node): {base} s", flush=True)
            NETNS.down(lab, log=lambda _: None)
            after_down = timed_deploy(lab.path, playbook)
            print(f"deploy after down: {after_down['seconds']} s", flush=True)
        finally:
            NETNS.down(lab, log=lambda _: None)

    median = round(statistics.median(w["seconds"] for w in warm), 2)
    out = {
        "benchmark": "qkdtwin deploy",
        "lab": "star6 (copy named benchstar6)",
        "playbook": str(args.playbook.resolve().relative_to(REPO_ROOT)
                        if args.playbook.resolve().is_relative_to(REPO_ROOT) else args.playbook),
        "only_roles": args.only_roles.split(",") if args.only_roles else None,
        "roles": roles,
        "nodes": len(lab.nodes),
        "links": len(lab.links),
        "median_warm_seconds": median,
        "warm_runs": warm,
        "warm_changed": [w["changed"] for w in warm],
        "first_deploy": first,
        "deploy_after_down": after_down,
        "baseline_noop_module_all_nodes_seconds": base,
        "ratio_median_warm_to_baseline": round(median / base, 2) if base else None,
        "target_seconds": 60,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            # The machine is shared: a high load makes every figure slower; the baseline
            # (measured in the same run) shows by how much.
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"median warm deploy of star6: {median} s (target < 60 s); wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
