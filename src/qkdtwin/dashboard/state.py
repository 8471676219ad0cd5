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
from qkdtwin.events import Event, categorize, path_from_hops

MAX_EVENTS = 500
ENDED_KEEP_S = 60.0  # terminated sessions stay listed (greyed) this long


class LiveState:
    def __init__(self, lab: str, nodes: dict[str, dict[str, Any]],
                 qkd_links: list[dict[str, Any]]) -> None:
        self.lab = lab
        self._lock = threading.Lock()
        self.nodes: dict[str, dict[str, Any]] = {
            n: {"id": n, "roles": list(v.get("roles") or []), "mgmt_ipv4": v.get("mgmt_ipv4"),
                "status": None, "last_seen": None} for n, v in nodes.items()}
        self.links: dict[str, dict[str, Any]] = {}
        for lk in qkd_links:
            self.links[lk["id"]] = {
                "id": lk["id"], "a": lk["a"], "b": lk["b"], "type": "PHYS",
                "a_interface": lk.get("a_interface"), "b_interface": lk.get("b_interface"),
                "status": None, "qber": None, "skr_bps": None, "stored_bits": None,
                "eve_fraction": None, "module_status": None, "pool_bits": {},
                "alarm": None, "alarm_ts": None, "cut": False, "telemetry_ts": None}
        self.sessions: dict[str, dict[str, Any]] = {}
        self._hops: dict[str, dict[str, dict[str, Any]]] = {}
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
        sid, kind = p.get("session_id"), p.get("kind")
        if not isinstance(sid, str):
            return
        ts = p.get("ts", time.time())
        s = self.sessions.get(sid)
        starts = kind in ("config_request_received", "session_request")
        if s is not None and starts and s["state"] in ("terminated", "rejected"):
            s = None  # the same id again (ETSI 014 ids come from the SAE pair): a new session
            self._hops.pop(sid, None)
        if s is None:
            if kind not in ("config_request_received", "session_request", "session_accepted",
                            "path_assigned", "session_active", "session_configured"):
                return
            s = self.sessions[sid] = {"id": sid, "saes": None, "user": None, "api": None,
                                      "path": None, "links": None, "state": "requested",
                                      "keys": 0, "reroutes": 0, "old_path": None,
                                      "started": ts, "updated": ts, "reason": None}
        s["updated"] = ts
        if kind in ("config_request_received", "session_request") and s["saes"] is None:
            s["saes"] = [p.get("sae_id"), p.get("peer_sae_id")]
            s["api"] = s["api"] or p.get("api")
        elif kind == "session_accepted":
            s["user"], s["api"] = p.get("user"), p.get("api") or s["api"]
            s["state"] = "accepted"
        elif kind in ("path_assigned", "session_active", "session_rerouted"):
            if isinstance(p.get("path"), list):
                if kind == "session_rerouted":
                    s["old_path"] = p.get("old_path") or s["path"]
                    s["reroutes"] += 1
                    s["reroute_link"] = p.get("link")
                s["path"] = p["path"]
            if isinstance(p.get("links"), list):
                s["links"] = p["links"]
            s["state"] = "active"
        elif kind in ("session_configured", "forwarding_update") and isinstance(el, str):
            hops = self._hops.setdefault(sid, {})
            hops[el] = p
            derived = path_from_hops(hops)
            if derived and (s["path"] is None or s.get("path_from_kms")):
                if s["path"] and derived != s["path"] and kind == "forwarding_update":
                    s["old_path"] = s["path"]
                    s["reroutes"] += 1
                s["path"], s["path_from_kms"] = derived, True
            if s["state"] == "requested":
                s["state"] = "active"
        elif kind == "keys_delivered" and p.get("side") != "slave":
            n = p.get("number", 1)
            s["keys"] += n if isinstance(n, int) else 1
        elif kind in ("session_terminated", "session_rejected"):
            s["state"] = "terminated" if kind == "session_terminated" else "rejected"
            s["reason"] = p.get("reason")
            s["ended"] = ts
        elif kind == "session_state" and p.get("new") == "TERMINATED" and s["state"] != "active":
            s["state"], s["reason"], s["ended"] = "terminated", p.get("reason"), ts

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
            for sid in [s for s, v in self.sessions.items()
                        if v.get("ended") and now - v["ended"] > ENDED_KEEP_S]:
                self.sessions.pop(sid, None)
                self._hops.pop(sid, None)
            links = [{**lk, "pool_bits": dict(lk["pool_bits"]), "state": self.link_state(lk)}
                     for lk in self.links.values()]
            return {"lab": self.lab, "now": now, "connected": self.connected,
                    "messages": self.messages, "seq": self.seq,
                    "nodes": [dict(n) for n in self.nodes.values()], "links": links,
                    "sessions": sorted((dict(s) for s in self.sessions.values()),
                                       key=lambda s: s["started"])}

    def events_after(self, seq: int, limit: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["seq"] > seq][-limit:]
