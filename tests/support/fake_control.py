"""A small stand-in for the control plane (access + admission control) that follows the MQTT
contract of docs/architecture.md, for Key Manager tests before the real elements exist.

Access: an SAE is accepted if it is in ``users`` with the right O (user) and the user is
active. Admission: routes over ``links`` (shortest path), sends ``session_config`` to every KM
on the path (014 at once, 004 once both applications registered), deletes on close request.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from qkdtwin import bus as topics
from qkdtwin.bus import BrokerConfig, Bus


class FakeControl:
    __test__ = False

    def __init__(self, broker_cfg: BrokerConfig, users: dict[str, dict[str, Any]],
                 links: list[tuple[str, str]], bucket: dict[str, Any] | None = None,
                 timeout_s: float = 60.0) -> None:
        # users: {sae_id: {"user": name, "km": km, "active": bool, "max_priority": int}}
        self.users = users
        self.links = links
        self.bucket = bucket or {"size_bits": 10**9, "rate_bps": 10**9}
        self.timeout_s = timeout_s
        self.bus = Bus(broker_cfg, "ctl")
        self.sessions: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.confirms: list[tuple[str, str]] = []
        self.paths: dict[str, list[str]] = {}
        self.configs: dict[tuple[str, str], dict[str, Any]] = {}
        # km → True: its first session_config is not published (lost, as for a KM that is
        # not yet subscribed); config_resync still answers
        self.drop_configs: dict[str, bool] = {}
        self._lock = threading.Lock()

    def start(self) -> FakeControl:
        self.bus.subscribe(topics.ACCESS_IN, self._on_access)
        self.bus.subscribe(topics.ADMISSION_IN, self._on_admission)
        self.bus.subscribe(f"{topics.PREFIX}/events/#", lambda t, p, m: self.events.append(p))
        self.bus.start()
        assert self.bus.wait_connected(10)
        time.sleep(0.3)  # let the subscriptions settle
        return self

    def stop(self) -> None:
        self.bus.stop()

    def path(self, a: str, b: str) -> list[str] | None:
        adj: dict[str, list[str]] = {}
        for x, y in self.links:
            adj.setdefault(x, []).append(y)
            adj.setdefault(y, []).append(x)
        prev: dict[str, str | None] = {a: None}
        q = deque([a])
        while q:
            n = q.popleft()
            if n == b:
                out = [n]
                while prev[out[-1]] is not None:
                    out.append(prev[out[-1]])
                return out[::-1]
            for m in adj.get(n, []):
                if m not in prev:
                    prev[m] = n
                    q.append(m)
        return None

    def _on_access(self, topic: str, p: dict[str, Any], msg) -> None:
        self.log.append(p)
        sae = p.get("sae_id")
        u = self.users.get(sae)
        if u is None:
            rep = {"ok": False, "reason": f"unknown SAE {sae}"}
        elif not u.get("active", True):
            rep = {"ok": False, "reason": f"user {u['user']} is disabled"}
        elif (p.get("cert") or {}).get("o") != u["user"]:
            rep = {"ok": False, "reason": "certificate O does not name the SAE's user"}
        elif p.get("peer_sae_id") and p["peer_sae_id"] not in self.users:
            rep = {"ok": False, "reason": f"unknown peer SAE {p['peer_sae_id']}"}
        else:
            rep = {"ok": True, "user": u["user"], "sae_id": sae,
                   "sla": {"max_priority": u.get("max_priority", 9),
                           **({"max_key_size": u["max_key_size"]} if "max_key_size" in u
                              else {})}}
        self.bus.reply(msg, {"type": "auth_result", **rep})

    def _on_admission(self, topic: str, p: dict[str, Any], msg) -> None:
        self.log.append(p)
        kind = p.get("type")
        sid = p.get("session_id")
        if kind == "config_request":
            self._config_request(p)
        elif kind == "close_request":
            self.delete(sid, p.get("reason", "closed"))
        elif kind == "deletion_confirm":
            with self._lock:
                self.confirms.append((p["km"], sid))
        elif kind == "config_resync":
            self._resync(sid, p["km"])

    def _config_request(self, p: dict[str, Any]) -> None:
        sid = p["session_id"]
        with self._lock:
            s = self.sessions.setdefault(sid, {"regs": [], "api": p["api"], "configured": False})
            s["regs"].append(p)
            regs = list(s["regs"])
            if s["configured"]:
                return
            if p["api"] == "004" and len({r["sae_id"] for r in regs}) < 2:
                return
            s["configured"] = True
        first = regs[0]
        peer = self.users.get(first["peer_sae_id"])
        if peer is None:
            self._reject(first["km"], sid, f"rejected: unknown peer SAE {first['peer_sae_id']}")
            return
        src_km, dst_km = first["km"], peer["km"]
        path = self.path(src_km, dst_km)
        if path is None:
            self._reject(src_km, sid, "rejected: no path")
            return
        self.paths[sid] = path
        qos = first.get("qos") or {}
        prio = min(int(qos.get("priority", 5)),
                   self.users[first["sae_id"]].get("max_priority", 9))
        for i, km in enumerate(path):
            role = "source" if i == 0 else "destination" if i == len(path) - 1 else "transit"
            if len(path) == 1:
                role = "source"
            local = first["sae_id"] if i == 0 else first["peer_sae_id"] if i == len(path) - 1 \
                else None
            cfg = {
                "type": "session_config", "session_id": sid, "role": role,
                "prev_hop": path[i - 1] if i > 0 else None,
                "next_hop": path[i + 1] if i < len(path) - 1 else None,
                "priority": prio, "bucket": dict(self.bucket), "timeout_s": self.timeout_s,
                "local_sae_id": local,
                "peer_sae_id": first["peer_sae_id"] if i == 0 else first["sae_id"],
                "peer_km": path[-1] if i == 0 else path[0] if role == "destination" else None,
                "user": first["user"], "api": first["api"], "update": False}
            with self._lock:
                self.configs[(sid, km)] = cfg
            if self.drop_configs.get(km):
                continue  # a test's lost message: the KM never sees it
            self.bus.publish(topics.km_config(km), cfg)

    def _resync(self, sid: str, km: str) -> None:
        """Send a KM's config of a live session again (admission's config_resync)."""
        with self._lock:
            cfg = self.configs.get((sid, km))
        if cfg is not None:
            self.bus.publish(topics.km_config(km), cfg)

    def _reject(self, km: str, sid: str, reason: str) -> None:
        with self._lock:
            self.sessions.pop(sid, None)
        self.bus.publish(topics.km_delete(km), {"type": "session_delete", "session_id": sid,
                                                "reason": reason})

    def delete(self, sid: str, reason: str) -> None:
        with self._lock:
            self.sessions.pop(sid, None)
        for km in self.paths.pop(sid, []):
            self.bus.publish(topics.km_delete(km), {"type": "session_delete", "session_id": sid,
                                                    "reason": reason})

    def reroute(self, sid: str, new_path: list[str]) -> None:
        """Move a live session onto another path (update: true on the endpoints)."""
        old = self.paths.get(sid, [])
        for km in set(old) - set(new_path):
            self.bus.publish(topics.km_delete(km), {"type": "session_delete", "session_id": sid,
                                                    "reason": "rerouted"})
        for i, km in enumerate(new_path):
            role = "source" if i == 0 else "destination" if i == len(new_path) - 1 else "transit"
            self.bus.publish(topics.km_config(km), {
                "type": "session_config", "session_id": sid, "role": role,
                "prev_hop": new_path[i - 1] if i > 0 else None,
                "next_hop": new_path[i + 1] if i < len(new_path) - 1 else None,
                "priority": 5, "bucket": dict(self.bucket), "timeout_s": self.timeout_s,
                "update": km in old})
        self.paths[sid] = new_path

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [p for p in list(self.log) if p.get("type") == kind]

    def event_kinds(self, element: str | None = None) -> list[str]:
        return [e["kind"] for e in list(self.events)
                if element is None or e.get("element") == element]
