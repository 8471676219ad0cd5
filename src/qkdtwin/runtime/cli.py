"""Subcommands of the lab runtime: validate, up, down, status, inventory."""

from __future__ import annotations

import argparse
import json
import os
import sys

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
    print(f"{path.name}: OK: lab {lab.name}, {len(lab.nodes)} nodes, {len(lab.links)} links "
          f"({len(lab.qkd_links)} QKD), {users}, {apps} applications")
    return 0


def cmd_inventory(args: argparse.Namespace) -> int:
    from qkdtwin.runtime.inventory import write_inventory

    lab = load_lab(args.lab)
    from qkdtwin.runtime.clab import NODE_PYTHON  # the image's interpreter for clab nodes

    python = NODE_PYTHON if args.runtime == "clab" else None
    path = write_inventory(lab, runtime=args.runtime, python=python)
    _say(f"inventory: wrote {path}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from qkdtwin.runtime import netns
    from qkdtwin.runtime.inventory import write_inventory

    lab = load_lab(args.lab)
    if getattr(args, "runtime", "netns") == "clab":
        from qkdtwin.runtime import clab
        return clab.cli_up(lab, log=_say)
    result = netns.up(lab, log=_say)
    path = write_inventory(lab, runtime="netns")
    _say(f"inventory: {path}")
    for w in result.warnings:
        _say(f"WARNING: {w}")
    _say(f"lab {lab.name} is up: {len(lab.nodes)} nodes, {len(lab.links)} links"
         + (f", {len(result.warnings)} warning(s)" if result.warnings else ""))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from qkdtwin.runtime import netns

    lab = load_lab(args.lab)
    if getattr(args, "runtime", "netns") == "clab":
        from qkdtwin.runtime import clab
        return clab.cli_down(lab, log=_say)
    netns.down(lab, log=_say)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from qkdtwin.runtime import netns

    lab = load_lab(args.lab)
    if getattr(args, "runtime", "netns") == "clab":
        from qkdtwin.runtime import clab
        return clab.cli_status(lab, as_json=args.json)
    st = netns.status(lab)
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(netns.format_status(st))
    return 0


def _lab_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("lab", metavar="LAB", help="labs/<lab>.clab.yml or a lab name")


def _runtime_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=("netns", "clab"), default="netns",
                   help="netns (default, this host) or clab (containerlab + Docker)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("validate", help="check a lab file and its users file")
    _lab_arg(p)
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser("up", help="create (or repair) a lab's namespaces and links")
    _lab_arg(p)
    _runtime_arg(p)
    p.set_defaults(func=cmd_up)

    p = subparsers.add_parser("down", help="destroy a lab: processes, namespaces, links")
    _lab_arg(p)
    _runtime_arg(p)
    p.set_defaults(func=cmd_down)

    p = subparsers.add_parser("status", help="show a lab's nodes, addresses and links")
    _lab_arg(p)
    _runtime_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("inventory", help="write labs/clab-<lab>/ansible-inventory.yml")
    _lab_arg(p)
    p.add_argument("--runtime", choices=("netns", "clab"), default="netns",
                   help="connection vars for this runtime (default netns)")
    p.set_defaults(func=cmd_inventory)

