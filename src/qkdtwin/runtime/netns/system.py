"""The system commands of the netns runtime and the host facts they read (`ip -j`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

from qkdtwin.errors import UserError


class RuntimeFailure(UserError):
    """A system command failed while building or removing a lab."""


def run(argv: list[str], *, check: bool = True, input: str | None = None,
        ) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"command not found: {argv[0]} (install iproute2/nftables)") \
            from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeFailure(f"timed out: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeFailure(f"`{' '.join(argv)}` failed: {msg[-1] if msg else proc.returncode}")
    return proc


def run_json(argv: list[str]) -> list[dict]:
    """The JSON list a `-j` command prints; [] when it fails or prints nothing."""
    proc = run(argv, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return []


def short_ifname(prefix: str, *parts: str) -> str:
    """A stable host-side interface name of at most 15 characters."""
    digest = hashlib.sha1("/".join(parts).encode()).hexdigest()
    return (prefix + digest)[:12]


def namespaces() -> set[str]:
    return {e["name"] for e in run_json(["ip", "-j", "netns", "list"])}


def host_link(name: str) -> dict | None:
    info = run_json(["ip", "-d", "-j", "link", "show", "dev", name])
    return info[0] if info else None


def ns_links(ns: str) -> dict[str, dict]:
    return {e["ifname"]: e for e in run_json(["ip", "-n", ns, "-d", "-j", "link", "show"])}


def ns_addrs(ns: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in run_json(["ip", "-n", ns, "-j", "addr", "show"]):
        out[e["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in e.get("addr_info", [])
                            if a.get("family") == "inet"]
    return out


def ns_pids(ns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in proc.stdout.split() if x.isdigit()]


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the netns runtime needs root (network namespaces, veths, bridges)")
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            raise UserError(f"`{tool}` not found: install iproute2")
