"""Faults a scenario injects into a deployed lab, through :mod:`qkdtwin.labops`.

- ``link_down`` / ``link_up``: the link's point-to-point interfaces set down/up at both ends,
  inside the nodes (:meth:`qkdtwin.labops.operations.LabOperator.set_link`).
- ``eve`` / ``eve_off``: the intercept-resend eavesdropper of a QKD link, through
  ``qkdtwin eve``'s mechanism (:func:`qkdtwin.labops.eve.set_eve`, waits for the module's
  confirmation).
- ``kill`` (SIGKILL; supervisord restarts the program: the fault is done when it runs
  again), ``stop``, ``start``, ``restart``: a program of a node's supervisord, with
  ``supervisorctl`` run inside the node (:func:`qkdtwin.labops.nodes.program_action`).
"""

from __future__ import annotations

from typing import Any

from qkdtwin.labops.eve import set_eve
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.labops.operations import LabOperator
from qkdtwin.scenario.model import Fault


class FaultInjector:
    """Applies faults to one deployed lab."""

    def __init__(self, lab: DeployedLab) -> None:
        self.lab = lab
        self.ops = LabOperator(lab)

    def apply(self, fault: Fault) -> dict[str, Any]:
        """Inject one fault; raises UserError with the reason when it could not be applied."""
        if fault.action in ("link_down", "link_up"):
            return self.ops.set_link(self.ops.link_id(fault.link or ""),
                                     fault.action == "link_up")
        if fault.action in ("eve", "eve_off"):
            fraction = fault.fraction if fault.action == "eve" else 0.0
            t = set_eve(self.lab, fault.link or "", fraction, timeout=15.0)
            return {"link": t.get("link"), "eve_fraction": t.get("eve_fraction"),
                    "qber": t.get("qber")}
        return self.ops.program(fault.node or "", fault.action, fault.program or "")
