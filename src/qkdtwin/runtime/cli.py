"""Subcommands of the lab runtime: validate, up, down, status, inventory."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

from qkdtwin.runtime.inventory import write_inventory
from qkdtwin.runtime.registry import add_runtime_argument, get_runtime
from qkdtwin.topology import check_lab, load_lab, resolve_lab_path


def _say(line: str) -> None:
    """Progress line; a closed stdout (`| head`) must not abort a half-done up/down."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def cmd_validate(args: argparse.Namespace) -> int:
    path = resolve_lab_path(args.lab)
    lab, problems = check_lab(path)
    if problems or lab is None:
        for p in problems:
            print(p)
        print(f"{path.name}: INVALID, {len(problems)} problem(s)", file=sys.stderr)
        return 1
    users = f"{len(lab.users)} users ({lab.users_path.name})" if lab.users_path else "no users file"
    apps = sum(len(u.applications) for u in lab.users)
    models = Counter(lk.qkd_label for lk in lab.qkd_links)
    qkd = "".join(f", {n} {m}" for m, n in sorted(models.items()))
    print(f"{path.name}: OK: lab {lab.name}, {len(lab.nodes)} nodes, {len(lab.links)} links "
          f"({len(lab.qkd_links)} QKD{qkd}), {users}, {apps} applications")
    return 0


def cmd_inventory(args: argparse.Namespace) -> int:
    lab = load_lab(args.lab)
    path = write_inventory(lab, get_runtime(args.runtime))
    _say(f"inventory: wrote {path}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    lab = load_lab(args.lab)
    rt = get_runtime(args.runtime)
    result = rt.up(lab, log=_say)
    for w in result.warnings:
        _say(f"WARNING: {w}")
    _say(rt.up_summary(lab, result))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    get_runtime(args.runtime).down(load_lab(args.lab), log=_say)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rt = get_runtime(args.runtime)
    st = rt.status(load_lab(args.lab))
    print(json.dumps(st, indent=2) if args.json else rt.format_status(st))
    return 0


def _lab_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("lab", metavar="LAB", help="labs/<lab>.clab.yml or a lab name")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("validate", help="check a lab file and its users file")
    _lab_arg(p)
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser("up", help="create (or repair) a lab's namespaces and links")
    _lab_arg(p)
    add_runtime_argument(p)
    p.set_defaults(func=cmd_up)

    p = subparsers.add_parser("down", help="destroy a lab: processes, namespaces, links")
    _lab_arg(p)
    add_runtime_argument(p)
    p.set_defaults(func=cmd_down)

    p = subparsers.add_parser("status", help="show a lab's nodes, addresses and links")
    _lab_arg(p)
    add_runtime_argument(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("inventory", help="write labs/clab-<lab>/ansible-inventory.yml")
    _lab_arg(p)
    add_runtime_argument(p, help="connection vars for this runtime (default netns)")
    p.set_defaults(func=cmd_inventory)

