"""Commands run inside the nodes of a deployed lab, through its runtime: a link's interfaces
set down/up (cutting and restoring a link) and supervisorctl (killing, stopping, starting
and restarting a node's programs)."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.labops.lab import DeployedLab

SUPERVISOR_CONF = "/etc/qkdtwin/supervisord.conf"
RESTART_WAIT = 60.0  # s for supervisord to restart a killed program


def run_in_node(lab: DeployedLab, node: str, argv: list[str],
                timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``argv`` inside ``node``; UserError when the runtime's tool is missing or the
    command cannot be started."""
    tool = lab.runtime.exec_tool
    if shutil.which(tool) is None:
        raise UserError(f"{tool} is not available on this host")
    full = lab.node_argv(node, argv)
    try:
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{' '.join(full)}: {exc}") from None


# --------------------------------------------------------------------------- links


def interface_argv(ifname: str, up: bool) -> list[str]:
    """The command (inside a node) that sets one of its interfaces up or down."""
    return ["ip", "link", "set", "dev", ifname, "up" if up else "down"]


def set_link(lab: DeployedLab, link: dict[str, Any], up: bool) -> dict[str, Any]:
    """Set both ends of a QKD link (an inventory ``qkdtwin_qkd_links`` entry) down or up."""
    done = []
    for end in ("a", "b"):
        node, ifname = link[end], link[f"{end}_interface"]
        r = run_in_node(lab, node, interface_argv(ifname, up), timeout=15)
        if r.returncode != 0:
            argv = lab.node_argv(node, interface_argv(ifname, up))
            raise UserError(f"{' '.join(argv)} failed: {r.stderr.strip() or r.returncode}")
        done.append(f"{node}:{ifname}")
    return {"link": link["id"], "state": "up" if up else "down", "interfaces": done}


# --------------------------------------------------------------------------- programs


def supervisorctl_argv(python: str, action: str, program: str) -> list[str]:
    """supervisorctl for ``action`` (inside a node); ``kill`` is SIGKILL."""
    verb = ["signal", "KILL", program] if action == "kill" else [action, program]
    return [python, "-m", "supervisor.supervisorctl", "-c", SUPERVISOR_CONF, *verb]


def supervisorctl(lab: DeployedLab, node: str, action: str, program: str) -> tuple[int, str]:
    r = run_in_node(lab, node, supervisorctl_argv(lab.node_python, action, program))
    return r.returncode, (r.stdout + r.stderr).strip()


def program_action(lab: DeployedLab, node: str, action: str, program: str) -> dict[str, Any]:
    """Kill, stop, start or restart a program of a node's supervisord. After a kill, wait
    until supervisord runs it again (autorestart) and say after how long."""
    start = time.monotonic()
    code, out = supervisorctl(lab, node, action, program)
    # supervisorctl exits non-zero on an error but also prints "ERROR" with exit 0 in
    # some versions; treat both as a failure.
    if code != 0 or "ERROR" in out:
        raise UserError(f"supervisorctl {action} {program} on {node} failed: {out or code}")
    detail: dict[str, Any] = {"node": node, "program": program, "output": out}
    if action == "kill":
        while True:
            _, status = supervisorctl(lab, node, "status", program)
            if "RUNNING" in status:
                detail["running_again_s"] = round(time.monotonic() - start, 2)
                break
            if time.monotonic() - start > RESTART_WAIT:
                raise UserError(f"{program} on {node} is not running again "
                                f"{RESTART_WAIT:.0f} s after the kill: {status}")
            time.sleep(0.5)
    return detail
