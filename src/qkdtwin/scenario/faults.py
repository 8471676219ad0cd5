"""Faults a scenario injects into a deployed lab.

- ``link_down`` / ``link_up``: the link's point-to-point interfaces set down/up at both ends,
  inside the nodes (the dashboard's mechanism, :class:`qkdtwin.dashboard.actions.LabActions`).
- ``eve`` / ``eve_off``: the intercept-resend eavesdropper of a QKD link, through
  ``qkdtwin eve``'s mechanism (:func:`qkdtwin.qkd_module.cli.set_eve`, waits for the module's
  confirmation).
- ``kill`` (SIGKILL; supervisord restarts the program: the fault is done when it runs
  again), ``stop``, ``start``, ``restart``: a program of a node's supervisord, with
  ``supervisorctl`` run inside the node.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.scenario.model import Fault

SUPERVISOR_CONF = "/etc/qkdtwin/supervisord.conf"
NETNS_PYTHON_FALLBACK = "python3"
CLAB_PYTHON = "/opt/qkdtwin/venv/bin/python"
RESTART_WAIT = 60.0  # s for supervisord to restart a killed program


def supervisorctl_argv(runtime: str, container: str, python: str, action: str,
                       program: str) -> list[str]:
    """The command that runs supervisorctl for ``action`` inside a node."""
    verb = ["signal", "KILL", program] if action == "kill" else [action, program]
    ctl = [python, "-m", "supervisor.supervisorctl", "-c", SUPERVISOR_CONF, *verb]
    if runtime == "clab":
        return ["docker", "exec", container, *ctl]
    return ["ip", "netns", "exec", container, *ctl]


class FaultInjector:
    """Applies faults to one deployed lab (a :class:`qkdtwin.sae.lab.DeployedLab`)."""

    def __init__(self, lab_ref: str, lab: Any) -> None:
        from qkdtwin.dashboard.actions import LabActions

        self.lab_ref = lab_ref
        self.lab = lab
        self.links = {lk["id"]: lk for lk in lab.qkd_links}
        self.actions = LabActions(lab_ref, lab.name, lab.runtime, self.links)

    def link_id(self, spec: str) -> str:
        a, _, b = spec.partition(":")
        for lid, lk in self.links.items():
            if {lk["a"], lk["b"]} == {a, b}:
                return lid
        raise UserError(f"lab {self.lab.name} has no QKD link {spec}")

    def apply(self, fault: Fault) -> dict[str, Any]:
        """Inject one fault; raises UserError with the reason when it could not be applied."""
        if fault.action in ("link_down", "link_up"):
            return self.actions.set_link(self.link_id(fault.link or ""),
                                         fault.action == "link_up")
        if fault.action in ("eve", "eve_off"):
            from qkdtwin.qkd_module.cli import set_eve

            fraction = fault.fraction if fault.action == "eve" else 0.0
            t = set_eve(self.lab_ref, fault.link or "", fraction, timeout=15.0)
            return {"link": t.get("link"), "eve_fraction": t.get("eve_fraction"),
                    "qber": t.get("qber")}
        return self._supervisor(fault)

    def _ctl(self, fault: Fault, action: str) -> tuple[int, str]:
        runtime = self.lab.runtime
        python = (CLAB_PYTHON if runtime == "clab"
                  else str(self.lab.vars.get("qkdtwin_python") or NETNS_PYTHON_FALLBACK))
        argv = supervisorctl_argv(runtime, self.lab.namespace(fault.node), python, action,
                                  fault.program or "")
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"{' '.join(argv)}: {exc}") from None
        return r.returncode, (r.stdout + r.stderr).strip()

    def _supervisor(self, fault: Fault) -> dict[str, Any]:
        start = time.monotonic()
        code, out = self._ctl(fault, fault.action)
        # supervisorctl exits non-zero on an error but also prints "ERROR" with exit 0 in
        # some versions; treat both as a failure.
        if code != 0 or "ERROR" in out:
            raise UserError(f"supervisorctl {fault.action} {fault.program} on {fault.node} "
                            f"failed: {out or code}")
        detail: dict[str, Any] = {"node": fault.node, "program": fault.program, "output": out}
        if fault.action == "kill":
            # supervisord restarts it (autorestart); say when it runs again, or that it
            # does not
            while True:
                _, status = self._ctl(fault, "status")
                if "RUNNING" in status:
                    detail["running_again_s"] = round(time.monotonic() - start, 2)
                    break
                if time.monotonic() - start > RESTART_WAIT:
                    raise UserError(f"{fault.program} on {fault.node} is not running again "
                                    f"{RESTART_WAIT:.0f} s after the kill: {status}")
                time.sleep(0.5)
        return detail
