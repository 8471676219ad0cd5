"""What a soak reads back from the lab for the invariants (netns runtime: the nodes' data and
the recorder's events are under ``labs/clab-<lab>/``):

- each KM store's ``delivered`` and ``withdrawn`` tables (which links each key crossed, when
  it was delivered or withdrawn) and its live sessions (``sessions`` table), read-only;
- the recorder's events: monitoring's alarms (``alarm/<link>``) and the KMs'
  ``relay_receive`` events (when each relayed key arrived at its destination KM);
- each KM's ``/healthz`` session counts by state (operator certificate);
- after teardown: namespaces and processes of the lab that are still there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from qkdtwin.chaos.invariants import AlarmMsg, KmDelivery, KmSession, KmWithdrawal
from qkdtwin.errors import UserError
from qkdtwin.events import load_events


def km_store(lab_dir: Path, km: str) -> Path | None:
    found = sorted((lab_dir / "nodes" / km).glob("**/km.sqlite"))
    return found[0] if found else None


def _via(text: str) -> tuple[str, ...]:
    return tuple(x for x in (text or "").split("|") if x)


def read_km(lab_dir: Path, km: str, since: float
            ) -> tuple[list[KmDelivery], list[KmWithdrawal], list[KmSession]]:
    """A KM's deliveries and withdrawals from ``since`` on, and the sessions it holds."""
    path = km_store(lab_dir, km)
    if path is None:
        raise UserError(f"no key store of {km} under {lab_dir / 'nodes' / km}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        deliveries = [KmDelivery(km, r[0], r[1], r[2], r[3], r[4], _via(r[5])) for r in
                      db.execute("SELECT key_id, side, session_id, sae, ts, via FROM delivered"
                                 " WHERE ts >= ?", (since,))]
        withdrawals = [KmWithdrawal(km, *r) for r in db.execute(
            "SELECT key_id, side, session_id, link, kind, since, ts FROM withdrawn"
            " WHERE ts >= ?", (since,))]
        sessions = []
        for sid, data in db.execute("SELECT session_id, data FROM sessions"):
            try:
                d = json.loads(data)
            except ValueError:
                d = {}
            sessions.append(KmSession(km, sid, str(d.get("api", "")), str(d.get("state", "")),
                                      live=False))
    finally:
        db.close()
    return deliveries, withdrawals, sessions


def read_events(lab_dir: Path, since: float
                ) -> tuple[list[AlarmMsg], dict[str, float], list[dict[str, Any]]]:
    """Monitoring's alarms (all of them: a span may have begun before ``since``), the first
    arrival of each relayed key at its destination KM, and the KMs' quarantine events."""
    events_dir = lab_dir / "events"
    if not events_dir.is_dir():
        return [], {}, []
    alarms: list[AlarmMsg] = []
    arrivals: dict[str, float] = {}
    quarantine: list[dict[str, Any]] = []
    for ev in load_events(events_dir):
        p = ev.payload
        if ev.channel == "alarm":
            if isinstance(p.get("link"), str) and isinstance(p.get("kind"), str):
                alarms.append(AlarmMsg(p["link"], p["kind"], float(ev.ts)))
            continue
        if ev.ts < since:
            continue
        if p.get("kind") == "relay_receive" and ev.session_id:
            ids = p.get("key_IDs")
            if not isinstance(ids, list):
                ids = [f"{ev.session_id}:{i}" for i in p.get("indexes") or []]
            for kid in ids:
                if isinstance(kid, str) and (kid not in arrivals or ev.ts < arrivals[kid]):
                    arrivals[kid] = float(ev.ts)
        elif p.get("kind") in ("link_quarantined", "link_released"):
            quarantine.append({"ts": round(ev.ts, 3), "km": ev.element, "kind": p["kind"],
                               "link": p.get("link"), "alarm": p.get("alarm")})
    return alarms, arrivals, quarantine


def health_sessions(lab: Any, states: tuple[str, ...]) -> list[KmSession]:
    """Sessions in ``states`` by each KM's /healthz (counts; one record per KM and state)."""
    out = []
    for km, health in lab.km_health(timeout=10).items():
        counts = (health or {}).get("sessions") or {}
        for state in states:
            n = counts.get(state) or 0
            if n:
                out.append(KmSession(km, f"{n} session(s) (healthz)", "", state))
    return out


def leftovers(lab_name: str, lab_dir: Path) -> list[str]:
    """Namespaces ``clab-<lab>-*`` and processes whose command line or working directory
    names the lab, other than this process and its ancestors."""
    out = []
    prefix = f"clab-{lab_name}-"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            out.append(f"namespace {name}")
    mine = _ancestors()
    needles = (str(lab_dir), prefix)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in mine:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(d / "cwd")
        except OSError:
            continue
        if any(n in cmd for n in needles) or cwd.startswith(str(lab_dir)):
            out.append(f"process {d.name}: {cmd.strip()[:160]}")
    return out


def _ancestors() -> set[int]:
    pids = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        pids.add(pid)
    return pids
