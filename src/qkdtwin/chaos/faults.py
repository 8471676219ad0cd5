"""The soak's random faults, one at a time at random moments (seeded), each applied with the
scenario's fault injector (:class:`qkdtwin.scenario.faults.FaultInjector`, i.e.
:mod:`qkdtwin.labops`):

- ``km_kill``: SIGKILL of a KM's ``key_manager`` (supervisord restarts it);
- ``control_kill``: SIGKILL of a control element (sdn, access, admission, routing, monitor);
- ``broker_restart``: ``supervisorctl restart mosquitto`` on the broker node;
- ``link_cut``: a QKD link's interfaces down at both ends, restored after a while;
- ``eve``: the intercept-resend eavesdropper on a link, switched off after a while.

A cut or an eavesdropper is always undone, also when the soak is stopped meanwhile.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.scenario.faults import FaultInjector
from qkdtwin.scenario.model import ROLE_PROGRAMS, Fault

KINDS = ("km_kill", "control_kill", "broker_restart", "link_cut", "eve")
CONTROL_ROLES = ("sdn", "access", "admission", "routing", "monitor")
Log = Callable[[str], None]


@dataclass
class FaultRecord:
    kind: str
    target: str
    start: float  # epoch
    end: float | None = None
    ok: bool | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "start": round(self.start, 3),
                "seconds": None if self.end is None else round(self.end - self.start, 2),
                "ok": self.ok, "error": self.error}


class ChaosFaults:
    def __init__(self, lab: Any, seed: int, log: Log, *, gap_s: tuple[float, float] = (5, 25),
                 hold_s: tuple[float, float] = (10, 30), kinds: tuple[str, ...] = KINDS,
                 injector: Any = None, on_change: Callable[[bool], None] = lambda on: None
                 ) -> None:
        self.lab = lab
        self.rng = random.Random(f"{seed}:faults")
        self.log = log
        self.gap_s, self.hold_s, self.kinds = gap_s, hold_s, kinds
        self.injector = injector or FaultInjector(lab)
        self.on_change = on_change  # True when a fault starts, False when it is over
        self.stop = threading.Event()
        self.records: list[FaultRecord] = []
        nodes = lab.nodes
        self.kms = lab.kms
        self.controls = sorted((n, r) for n, info in nodes.items()
                               for r in (info.get("roles") or []) if r in CONTROL_ROLES)
        self.brokers = sorted(n for n, info in nodes.items()
                              if "broker" in (info.get("roles") or []))
        self.links = sorted(f"{lk['a']}:{lk['b']}" for lk in lab.qkd_links)
        self._thread: threading.Thread | None = None

    def counts(self) -> dict[str, int]:
        return dict(Counter(r.kind for r in self.records))

    def failed(self) -> dict[str, int]:
        return dict(Counter(r.kind for r in self.records if r.ok is False))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="faults")
        self._thread.start()

    def finish(self, timeout: float = 180.0) -> None:
        """Stop after the current fault (undone) and wait."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self.stop.wait(self.rng.uniform(*self.gap_s)):
            kind = self.rng.choice(self.kinds)
            self.on_change(True)
            try:
                self._one(kind)
            finally:
                self.on_change(False)

    def _apply(self, rec: FaultRecord, fault: Fault) -> bool:
        try:
            d = self.injector.apply(fault)
            if isinstance(d, dict):
                rec.detail[fault.action] = {k: v for k, v in d.items() if k != "output"}
            return True
        except UserError as exc:
            rec.ok, rec.error = False, str(exc)[:300]
            self.log(f"fault {rec.kind} {rec.target}: {fault.action} FAILED: {rec.error}")
            return False

    def _hold(self) -> None:
        """Keep a cut or an eavesdropper for a while (shorter when the soak stops)."""
        self.stop.wait(self.rng.uniform(*self.hold_s))

    def _one(self, kind: str) -> None:
        steps: list[Fault]
        if kind == "km_kill":
            target = self.rng.choice(self.kms)
            steps = [Fault(0, "kill", node=target, program=ROLE_PROGRAMS["km"])]
        elif kind == "control_kill":
            target, role = self.rng.choice(self.controls)
            steps = [Fault(0, "kill", node=target, program=ROLE_PROGRAMS[role])]
        elif kind == "broker_restart":
            target = self.rng.choice(self.brokers)
            steps = [Fault(0, "restart", node=target, program=ROLE_PROGRAMS["broker"])]
        elif kind == "link_cut":
            target = self.rng.choice(self.links)
            steps = [Fault(0, "link_down", link=target), Fault(0, "link_up", link=target)]
        else:
            target = self.rng.choice(self.links)
            frac = round(self.rng.uniform(0.6, 1.0), 2)
            steps = [Fault(0, "eve", link=target, fraction=frac),
                     Fault(0, "eve_off", link=target)]
            target = f"{target} ({frac:.0%})"
        rec = FaultRecord(kind, target, time.time())
        self.records.append(rec)
        self.log(f"fault {kind} {target}")
        ok = self._apply(rec, steps[0])
        if len(steps) == 2:
            if ok:
                self._hold()
            # undo also when applying failed halfway (e.g. one end of a link down), and
            # insist: a link left cut or eavesdropped would spoil the rest of the soak
            undone = False
            for _ in range(5):
                if (undone := self._apply(rec, steps[1])):
                    break
                time.sleep(5.0)
            ok = ok and undone
        rec.end = time.time()
        if ok:
            rec.ok = True
            again = rec.detail.get("kill", {}).get("running_again_s")
            extra = f", running again after {again:.1f} s" if again is not None else ""
            self.log(f"fault {kind} {target}: done in {rec.end - rec.start:.1f} s{extra}")
