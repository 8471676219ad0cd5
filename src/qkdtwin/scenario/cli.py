"""`qkdtwin scenario LAB FILE`: run a scenario file (docs/scenarios.md) on a deployed lab.

    qkdtwin scenario star6 scenarios/paper-fig4.yml
    qkdtwin scenario star6 scenarios/link-cut.yml --json > result.json
    qkdtwin scenario star6 scenarios/paper-fig4.yml --timeline results/
    qkdtwin scenario star6 scenarios/link-cut.yml --check      # validate only

Prints progress lines while it runs, then one table row per pair (path, keys identical at
both applications, time to first key, per-request latency p50/p95, retries) and the faults.
Exit 0 when every pair got identical keys (or was refused when it should be) and every
fault was applied; 1 otherwise; 2 for a bad file or a lab that is not deployed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.scenario.model import LabFacts, Scenario, check_against_lab, load_scenario
from qkdtwin.scenario.report import format_table
from qkdtwin.scenario.runner import ScenarioResult, ScenarioRunner, paths_from_events
from qkdtwin.timeline import render_html, render_png, timeline_for
from qkdtwin.topology import load_lab


def prepare(lab_ref: str, path: str | Path) -> tuple[Scenario, Any]:
    """The validated scenario and the deployed lab it runs on (UserError when not)."""
    sc = load_scenario(path)
    check_against_lab(sc, LabFacts.from_lab(load_lab(lab_ref)))
    return sc, DeployedLab.load(lab_ref)


def run(lab_ref: str, path: str | Path, log: Callable[[str], None] = print) -> ScenarioResult:
    """Run a scenario file on a deployed lab, with each pair's path from the recording."""
    sc, lab = prepare(lab_ref, path)
    if sc.lab and sc.lab != lab.name:
        log(f"note: scenario {sc.name} is written for lab {sc.lab}; running it on {lab.name}")
    log(f"scenario {sc.name}: {len(sc.pairs)} pair(s), {len(sc.faults)} fault(s) on lab "
        f"{lab.name}")
    result = ScenarioRunner(sc, lab, lab_ref, log=log).run()
    sids = [p.session_id for p in result.pairs if p.session_id]
    paths = paths_from_events(lab.lab_dir, sids, since=result.started - 5)
    for p in result.pairs:
        p.paths = paths.get(p.session_id or "", [])
    return result


def write_timeline(lab_dir: Path, out: Path, since: float, title: str,
                   sessions: list[str] | None = None) -> tuple[Path, Path]:
    """The timeline PNG + HTML of the lab's recording from ``since``."""
    tl = timeline_for(lab_dir / "events", sessions=sessions, since=since)
    return (render_png(tl, out / "timeline.png", title),
            render_html(tl, out / "timeline.html", title))


def cmd_scenario(args: argparse.Namespace) -> int:
    if args.check:
        sc, lab = prepare(args.lab, args.file)
        print(f"{args.file}: valid for lab {lab.name} ({len(sc.pairs)} pair(s), "
              f"{len(sc.faults)} fault(s))")
        return 0
    out = sys.stderr if args.json else sys.stdout

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    result = run(args.lab, args.file, log)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_table(result), flush=True)
    if args.timeline:
        lab = DeployedLab.load(args.lab)
        try:
            png, page = write_timeline(lab.lab_dir, Path(args.timeline), result.started - 1,
                                       f"qkdtwin {lab.name}: scenario {result.scenario}")
            log(f"wrote {png}\nwrote {page}")
        except UserError as exc:
            log(f"no timeline: {exc}")
    return 0 if result.ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "scenario", help="run a scenario (application pairs, faults) and check the keys",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lab", metavar="LAB", help="deployed lab (name or labs/<lab>.clab.yml)")
    p.add_argument("file", metavar="FILE", help="scenario file (e.g. scenarios/paper-fig4.yml)")
    p.add_argument("--json", action="store_true",
                   help="the result as JSON on stdout (progress lines go to stderr)")
    p.add_argument("--timeline", metavar="DIR",
                   help="also write DIR/timeline.png and DIR/timeline.html of the run")
    p.add_argument("--check", action="store_true",
                   help="only validate the file against the lab, run nothing")
    p.set_defaults(func=cmd_scenario)
