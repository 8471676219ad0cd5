"""One object for operating a deployed lab: what the dashboard's controls and a scenario's
faults do (the eavesdropper, cutting and restoring links, a node's programs)."""

from __future__ import annotations

from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.labops.eve import set_eve
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.labops.nodes import program_action, set_link


class LabOperator:
    def __init__(self, lab: DeployedLab) -> None:
        self.lab = lab
        self.links = {lk["id"]: lk for lk in lab.qkd_links}  # id -> {a, b, a_interface, ...}

    def link(self, link_id: str) -> dict[str, Any]:
        lk = self.links.get(link_id)
        if lk is None:
            raise UserError(f"no QKD link {link_id} in lab {self.lab.name}")
        return lk

    def link_id(self, spec: str) -> str:
        """The id of the QKD link `A:B` (either order)."""
        a, _, b = spec.partition(":")
        for lid, lk in self.links.items():
            if {lk["a"], lk["b"]} == {a, b}:
                return lid
        raise UserError(f"lab {self.lab.name} has no QKD link {spec}")

    def eve(self, link_id: str, fraction: float, timeout: float = 10.0) -> dict[str, Any]:
        """Switch the intercept-resend eavesdropper; returns the module's confirmation."""
        lk = self.link(link_id)
        if not 0.0 <= fraction <= 1.0:
            raise UserError("the eavesdropper's fraction must be in [0, 1]")
        return set_eve(self.lab, f"{lk['a']}:{lk['b']}", fraction, timeout=timeout)

    def set_link(self, link_id: str, up: bool) -> dict[str, Any]:
        """Set both ends of a link down (cut) or up (restore)."""
        return set_link(self.lab, self.link(link_id), up)

    def program(self, node: str, action: str, program: str) -> dict[str, Any]:
        """kill (and wait for the restart), stop, start or restart a node's program."""
        return program_action(self.lab, node, action, program)
