"""The `qkdtwin` command.

Each area of the project contributes its subcommands through a `register(subparsers)`
function in its own `cli` module; this file only assembles them and turns errors into
one clear line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from qkdtwin.errors import UserError

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = (
    "qkdtwin.runtime.cli",      # validate, up, down, status, inventory, deploy
    "qkdtwin.topology.cli",     # generate
    "qkdtwin.deploy",           # deploy
    "qkdtwin.quantum.cli",      # keyrate
    "qkdtwin.control.cli",      # users
    "qkdtwin.qkd_module.cli",   # eve
    "qkdtwin.sae.cli",          # sae (application client, ETSI 014/004)
    "qkdtwin.recorder",         # record (the lab's event recorder)
    "qkdtwin.timeline",         # timeline
    "qkdtwin.dashboard.cli",    # dashboard
    "qkdtwin.scenario.cli",     # scenario (application pairs + faults, key checks)
    "qkdtwin.demo",             # demo (deploy, paper-fig4, summary, timeline)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkdtwin",
        description="Digital twin of a QKD network with a virtualized key-management plane.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # an area not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"qkdtwin {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qkdtwin {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
