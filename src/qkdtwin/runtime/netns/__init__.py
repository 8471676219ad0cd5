"""The embedded `netns` runtime: a lab as network namespaces on this host.

- node -> namespace `clab-<lab>-<node>` with `lo` up and `eth0` (veth) in the lab bridge,
- lab -> management bridge (`bridge_name()`), holding the first address of the mgmt subnet,
- link -> veth pair created directly inside the two namespaces with the topology's names,
- `vars.impairment` -> netem when the kernel has it, else tbf (rate) + nftables (loss).

Every step inspects before it changes, so `up` is idempotent and repairs a partly built
lab. What `up` created is recorded in `clab-<lab>/runtime.json` so `down` also removes
nodes that were later deleted from the topology. Point-to-point addresses are left to
Ansible (role `common`, host var `qkdtwin_interfaces`), as with containerlab.

Modules: `system` (commands, host facts), `nodes` (namespaces, mgmt bridge and veths),
`links` (point-to-point veths), `impair` (netem/tbf/nftables), `report` (status), `state`
(runtime.json); this one drives them (`NetnsRuntime`: create, down).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qkdtwin.runtime.base import Log, Runtime, UpResult
from qkdtwin.runtime.netns.impair import apply_impairments
from qkdtwin.runtime.netns.links import ensure_link
from qkdtwin.runtime.netns.nodes import (
    ETC_NETNS,
    ETC_QKDTWIN,
    bridge_name,
    check_subnet,
    ensure_bridge,
    ensure_etc_qkdtwin,
    ensure_node,
    mgmt_host_ifname,
)
from qkdtwin.runtime.netns.report import format_status, status
from qkdtwin.runtime.netns.state import load_state, save_state, state_path
from qkdtwin.runtime.netns.system import (
    RuntimeFailure,
    host_link,
    namespaces,
    ns_pids,
    require_root,
    run,
)
from qkdtwin.topology import Lab

__all__ = ["NetnsRuntime", "RuntimeFailure", "bridge_name", "mgmt_host_ifname", "namespaces",
           "ns_pids", "state_path"]


class NetnsRuntime(Runtime):
    """Network namespaces, veths and a bridge on this host (root)."""

    name = "netns"
    description = "this host"
    exec_tool = "ip"

    def create(self, lab: Lab, log: Log = print) -> UpResult:
        """Create what is missing of the lab and repair what is broken; return warnings."""
        require_root()
        check_subnet(lab)
        result = UpResult()
        ns_names = [lab.namespace(n) for n in lab.nodes]
        state = load_state(lab)
        known = sorted(set(state.get("namespaces", [])) | set(ns_names))
        state.update({"runtime": self.name, "lab": lab.name, "topology": str(lab.path),
                      "bridge": bridge_name(lab), "namespaces": known})
        save_state(lab, state)  # before any change, so `down` can clean up a failed `up`

        ensure_etc_qkdtwin(log)
        ensure_bridge(lab, log, result)
        existing = namespaces()
        for node in lab.nodes:
            ensure_node(lab, node, existing, log, result)
        for link in lab.links:
            ensure_link(lab, link, log, result)
        apply_impairments(lab, log, result)

        state["warnings"] = result.warnings
        state["up_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        save_state(lab, state)
        log(f"up: {result.changes} change(s)" if result.changes else "up: nothing to change")
        return result

    def up_summary(self, lab: Lab, result: UpResult) -> str:
        return (f"lab {lab.name} is up: {len(lab.nodes)} nodes, {len(lab.links)} links"
                + (f", {len(result.warnings)} warning(s)" if result.warnings else ""))

    def down(self, lab: Lab, log: Log = print) -> None:
        """Remove every trace of the lab on the host except its artefacts directory."""
        require_root()
        state = load_state(lab)
        known = set(state.get("namespaces", [])) | {lab.namespace(n) for n in lab.nodes}
        # Only names of this lab: a stale state file must not make us delete another lab's.
        known = {ns for ns in known if self.owns(lab, ns)}
        present = namespaces() & known
        _stop_processes(sorted(present), log)
        for ns in sorted(present):
            run(["ip", "netns", "del", ns])
            log(f"{ns}: namespace removed (with its veths and nftables table)")
        _remove_host_side(lab, state, known, log)
        if state_path(lab).exists():
            state_path(lab).unlink()
        if lab.lab_dir.exists():
            log(f"down: lab {lab.name} removed; artefacts kept in {lab.lab_dir} "
                f"(inventory, pki, node data, logs)")
        else:
            log(f"down: lab {lab.name} removed")

    def status(self, lab: Lab) -> dict[str, Any]:
        return status(lab, self.name)

    def format_status(self, st: dict[str, Any]) -> str:
        return format_status(st)

    def exec_argv(self, lab: Lab, node: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.node_name(lab, node), *argv]

    def node_python(self) -> str:
        # Nodes share the host's file system, so the controller's venv Python runs modules.
        return sys.executable

    def connection_vars(self, lab: Lab, node: str, python: str) -> dict[str, Any]:
        return {"ansible_connection": "netns", "qkdtwin_netns": self.node_name(lab, node),
                "ansible_python_interpreter": python}

    def data_dir(self, lab: Lab, node: str) -> str:
        return str(lab.lab_dir / "nodes" / node)


def _remove_host_side(lab: Lab, state: dict[str, Any], known: set[str], log: Log) -> None:
    """Host ends of the mgmt veths, the bridge and the per-node /etc/netns directories."""
    for node in lab.nodes:  # host ends of mgmt veths normally die with their peers
        host_if = mgmt_host_ifname(lab, node)
        if host_link(host_if) is not None:
            run(["ip", "link", "del", host_if], check=False)
    for br in {bridge_name(lab), state.get("bridge") or bridge_name(lab)}:
        info = host_link(br)
        if info is not None and info.get("linkinfo", {}).get("info_kind") == "bridge":
            run(["ip", "link", "del", br])
            log(f"bridge {br}: removed")
    for ns in sorted(known):
        d = ETC_NETNS / ns
        if d.exists():
            shutil.rmtree(d)
            log(f"{d}: removed")
    _remove_if_empty(ETC_NETNS)
    if ETC_QKDTWIN.is_dir() and not any(ETC_NETNS.glob("*/qkdtwin")):
        _remove_if_empty(ETC_QKDTWIN)


def _remove_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass


def _lab_pids(nss: list[str]) -> dict[str, list[int]]:
    me = os.getpid()
    return {ns: [p for p in ns_pids(ns) if p != me] for ns in nss}


def _stop_processes(nss: list[str], log: Log, grace: float = 5.0) -> None:
    """SIGTERM every process of the lab at once (supervisord stops its children), wait,
    then SIGKILL what is left."""
    first = {ns: pids for ns, pids in _lab_pids(nss).items() if pids}
    if not first:
        return
    left = first
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        for pids in left.values():
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while True:
            left = {ns: pids for ns, pids in _lab_pids(list(left)).items() if pids}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not left:
            break
    for ns, pids in sorted(first.items()):
        log(f"{ns}: stopped {len(pids)} process(es)")
    if left:
        raise RuntimeFailure(f"processes survived SIGKILL: {left}")
