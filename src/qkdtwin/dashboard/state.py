"""The dashboard's live picture of a lab, fed by the bus: topology, per-link metrics and
alarms, sessions with their paths, and the recent event stream.

Everything arrives as MQTT messages (docs/architecture.md); :meth:`LiveState.feed` takes one
``(topic, payload)`` and :meth:`LiveState.snapshot` returns the JSON the page polls. The
static part (KMs and QKD links) comes from the lab's inventory, so the graph is there before
the SDN controller publishes anything.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from qkdtwin.bus import PREFIX
from qkdtwin.events import Event, categorize
from qkdtwin.session_fold import SessionFold

MAX_EVENTS = 500
ENDED_KEEP_S = 60.0  # terminated sessions stay listed (greyed) this long


class LiveState:
    def __init__(self, lab: str, nodes: dict[str, dict[str, Any]],
                 qkd_links: list[dict[str, Any]]) -> None:
        self.lab = lab
        self._lock = threading.Lock()
        self.nodes: dict[str, dict[str, Any]] = {
            n: {"id": n, "roles": list(v.get("roles") or []), "mgmt_ipv4": v.get("mgmt_ipv4"),
                "pos": v.get("pos"), "status": None, "last_seen": None}
            for n, v in nodes.items()}
        self.links: dict[str, dict[str, Any]] = {}
        for lk in qkd_links:
            self.links[lk["id"]] = {
                "id": lk["id"], "a": lk["a"], "b": lk["b"], "type": "PHYS",
                "a_interface": lk.get("a_interface"), "b_interface": lk.get("b_interface"),
                "status": None, "qber": None, "skr_bps": None, "stored_bits": None,
                "eve_fraction": None, "module_status": None, "pool_bits": {},
                "alarm": None, "alarm_ts": None, "cut": False, "telemetry_ts": None}
        self._fold = SessionFold(live=True)  # the sessions, as the bus tells them
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.seq = 0
        self.connected = False
        self.messages = 0

    # -- input --

    def feed(self, topic: str, payload: dict[str, Any]) -> None:
        rest = topic[len(PREFIX) + 1:] if topic.startswith(PREFIX + "/") else topic
        channel = rest.split("/", 1)[0]
        with self._lock:
            self.messages += 1
            if channel == "telemetry":
                self._telemetry(payload)
            elif channel == "alarm":
                self._alarm(rest.split("/", 1)[-1], payload)
                self._event(topic, payload)
            elif channel == "topology":
                self._topology(payload)
            elif channel == "events":
                self._session_event(payload)
                self._event(topic, payload)

    def replay(self, events: list[Event]) -> int:
        """Feed recorded events (oldest first), e.g. the lab's current recording, so that a
        dashboard opened late still knows the live sessions and the recent events."""
        for ev in events:
            if ev.channel in ("events", "alarm"):
                self.feed(ev.topic, ev.payload)
        with self._lock:
            self.messages = 0
        return len(events)

    def note(self, kind: str, **fields: Any) -> None:
        """An operator action of the dashboard itself, into the event stream."""
        with self._lock:
            self._event(f"{PREFIX}/events/dashboard", {"type": "event", "ts": time.time(),
                                                       "element": "dashboard", "kind": kind,
                                                       **fields})

    def set_cut(self, link: str, cut: bool) -> None:
        with self._lock:
            if link in self.links:
                self.links[link]["cut"] = cut

    def _link(self, link_id: Any) -> dict[str, Any] | None:
        return self.links.get(link_id) if isinstance(link_id, str) else None

    def _telemetry(self, p: dict[str, Any]) -> None:
        lk = self._link(p.get("link"))
        if lk is None:
            return
        lk["telemetry_ts"] = p.get("ts", time.time())
        if p.get("source") == "km":
            if isinstance(p.get("node"), str) and isinstance(p.get("pool_bits"), int | float):
                lk["pool_bits"][p["node"]] = p["pool_bits"]
            return
        # QKD module telemetry: the a end emulates the channel, prefer it; b fills gaps
        is_a = p.get("node") == lk["a"]
        for k in ("qber", "skr_bps", "stored_bits", "eve_fraction"):
            if k in p and (is_a or lk.get(k) is None):
                lk[k] = p[k]
        if "status" in p and (is_a or lk.get("module_status") is None):
            lk["module_status"] = p["status"]

    def _alarm(self, link_id: str, p: dict[str, Any]) -> None:
        lk = self._link(p.get("link") or link_id)
        if lk is None:
            return
        kind = p.get("kind")
        lk["alarm"] = None if kind == "clear" else kind
        lk["alarm_ts"] = p.get("ts", time.time())

    def _topology(self, p: dict[str, Any]) -> None:
        for n in p.get("nodes") or []:
            if isinstance(n, dict) and n.get("id") in self.nodes:
                self.nodes[n["id"]]["status"] = n.get("status")
        for lk in p.get("links") or []:
            if not isinstance(lk, dict):
                continue
            mine = self._link(lk.get("id"))
            if mine is not None:
                mine["status"] = lk.get("status")

    def _session_event(self, p: dict[str, Any]) -> None:
        el = p.get("element")
        if isinstance(el, str) and el in self.nodes:
            self.nodes[el]["last_seen"] = p.get("ts")
        sid = p.get("session_id")
        if isinstance(sid, str):
            self._fold.feed(sid, p.get("kind"), el, p.get("ts", time.time()), p)

    def _event(self, topic: str, p: dict[str, Any]) -> None:
        self.seq += 1
        ev = Event(float(p.get("ts") or time.time()), topic, p)
        self.events.append({"seq": self.seq, "ts": ev.ts, "element": ev.element,
                            "kind": ev.kind, "category": categorize(ev),
                            "session_id": ev.session_id,
                            "detail": {k: v for k, v in p.items()
                                       if k not in ("type", "ts", "element", "kind",
                                                    "session_id")}})

    # -- output --

    def link_state(self, lk: dict[str, Any]) -> str:
        if lk["cut"]:
            return "cut"
        if lk["alarm"] == "link_down" or lk["status"] == "down":
            return "down"
        if lk["alarm"]:
            return "alarm"
        if lk["module_status"] == "connecting":
            return "connecting"  # the two modules of the link are not talking (yet)
        if lk["skr_bps"] is None and not lk["pool_bits"] and lk["status"] is None:
            return "unknown"
        return "up"

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        with self._lock:
            for sid in [s for s, v in self._fold.sessions.items()
                        if v.has_ended and now - v.ended > ENDED_KEEP_S]:
                self._fold.forget(sid)
            links = [{**lk, "pool_bits": dict(lk["pool_bits"]), "state": self.link_state(lk)}
                     for lk in self.links.values()]
            return {"lab": self.lab, "now": now, "connected": self.connected,
                    "messages": self.messages, "seq": self.seq,
                    "nodes": [dict(n) for n in self.nodes.values()], "links": links,
                    "sessions": sorted((s.live_view() for s in self._fold.sessions.values()),
                                       key=lambda s: s["started"])}

    def events_after(self, seq: int, limit: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["seq"] > seq][-limit:]
