"""The runtimes by name, and the one ``--runtime`` option every command shares.

    rt = get_runtime(args.runtime)      # a Runtime instance
    rt.up(lab); rt.exec_argv(lab, "km0", ["ip", "link"])

A new backend registers its class here (``register(MyRuntime)``); callers, argparse choices
and help texts pick it up without change.
"""

from __future__ import annotations

import argparse

from qkdtwin.errors import UserError
from qkdtwin.runtime.base import Runtime
from qkdtwin.runtime.clab import ClabRuntime
from qkdtwin.runtime.netns import NetnsRuntime

DEFAULT_RUNTIME = "netns"
RUNTIMES: dict[str, type[Runtime]] = {}


def register(cls: type[Runtime]) -> type[Runtime]:
    """Make a backend available by its ``name`` (usable as a class decorator)."""
    RUNTIMES[cls.name] = cls
    return cls


register(NetnsRuntime)
register(ClabRuntime)


def runtime_names() -> tuple[str, ...]:
    return tuple(RUNTIMES)


def get_runtime(name: str = DEFAULT_RUNTIME) -> Runtime:
    """The backend called ``name`` (UserError for an unknown one)."""
    cls = RUNTIMES.get(name)
    if cls is None:
        raise UserError(f"unknown runtime {name!r} (known: {', '.join(RUNTIMES)})")
    return cls()


def runtime_help() -> str:
    """``netns (default, this host) or clab (containerlab + Docker)``"""
    parts = [f"{n} ({'default, ' if n == DEFAULT_RUNTIME else ''}{c.description})"
             for n, c in RUNTIMES.items()]
    return " or ".join(parts)


def add_runtime_argument(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--runtime NAME`` with the registered backends as choices."""
    p.add_argument("--runtime", choices=runtime_names(), default=DEFAULT_RUNTIME,
                   help=help or runtime_help())
