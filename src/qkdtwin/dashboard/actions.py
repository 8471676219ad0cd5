"""Demonstration controls of the dashboard on a deployed lab: the eavesdropper of a QKD link
(through `qkdtwin eve`'s mechanism, :func:`qkdtwin.qkd_module.cli.set_eve`) and cutting or
restoring a link (its point-to-point interfaces set down/up at both ends, inside the nodes).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from qkdtwin.errors import UserError


def interface_command(runtime: str, container: str, ifname: str, up: bool) -> list[str]:
    """The command that sets a node's interface up or down in the lab's runtime."""
    ip = ["ip", "link", "set", "dev", ifname, "up" if up else "down"]
    if runtime == "clab":
        return ["docker", "exec", container, *ip]
    return ["ip", "netns", "exec", container, *ip]


class LabActions:
    def __init__(self, lab_ref: str, lab_name: str, runtime: str,
                 links: dict[str, dict[str, Any]]) -> None:
        self.lab_ref = lab_ref
        self.lab_name = lab_name
        self.runtime = runtime
        self.links = links  # link id -> {a, b, a_interface, b_interface}

    def _link(self, link_id: str) -> dict[str, Any]:
        lk = self.links.get(link_id)
        if lk is None:
            raise UserError(f"no QKD link {link_id} in lab {self.lab_name}")
        return lk

    def eve(self, link_id: str, fraction: float) -> dict[str, Any]:
        """Switch the intercept-resend eavesdropper; returns the module's confirmation."""
        from qkdtwin.qkd_module.cli import set_eve

        lk = self._link(link_id)
        if not 0.0 <= fraction <= 1.0:
            raise UserError("the eavesdropper's fraction must be in [0, 1]")
        return set_eve(self.lab_ref, f"{lk['a']}:{lk['b']}", fraction, timeout=10.0)

    def set_link(self, link_id: str, up: bool) -> dict[str, Any]:
        """Set both ends of a link down (cut) or up (restore)."""
        lk = self._link(link_id)
        tool = "docker" if self.runtime == "clab" else "ip"
        if shutil.which(tool) is None:
            raise UserError(f"{tool} is not available on this host")
        done = []
        for end in ("a", "b"):
            node, ifname = lk[end], lk[f"{end}_interface"]
            argv = interface_command(self.runtime, f"clab-{self.lab_name}-{node}", ifname, up)
            r = subprocess.run(argv, capture_output=True, text=True, timeout=15)
            if r.returncode != 0:
                raise UserError(f"{' '.join(argv)} failed: {r.stderr.strip() or r.returncode}")
            done.append(f"{node}:{ifname}")
        return {"link": link_id, "state": "up" if up else "down", "interfaces": done}
