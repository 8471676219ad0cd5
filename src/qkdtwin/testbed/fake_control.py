"""A small stand-in for the control plane (access + admission control) that follows the MQTT
contract of docs/architecture.md, for Key Manager tests before the real elements exist.

Access: an SAE is accepted if it is in ``users`` with the right O (user) and the user is
active. Admission: routes over ``links`` with the Routing Element's path search
(control.topodb), sends ``session_config`` with admission's hop entries
(control.admission.hop_entries) to every KM on the path (014 at once, 004 once both
applications registered), deletes on close request. Payloads are qkdtwin.messages classes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from qkdtwin import bus as topics
from qkdtwin import messages as m
from qkdtwin.bus import BrokerConfig, Bus
from qkdtwin.control.admission import hop_entries
from qkdtwin.control.topodb import TopologyDB


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
        self.firsts: dict[str, m.ConfigRequest] = {}  # session -> its first config_request
        # routing: the production topology DB over ``links`` (all up, no metrics)
        self._topo = TopologyDB()
        self._topo.set_topology({
            "nodes": [{"id": n} for n in sorted({n for lk in links for n in lk})],
            "links": [{"id": f"{a}-{b}", "a": a, "b": b} for a, b in links]})
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
        """The production Routing Element's shortest path (every link equal: no metrics)."""
        if a == b:
            return [a]
        res = self._topo.find_path(a, b, backup=False)
        return res["path"] if res["ok"] else None

    def _on_access(self, topic: str, p: dict[str, Any], msg) -> None:
        self.log.append(p)
        req = m.decode(p, m.Authenticate)
        u = self.users.get(req.sae_id)
        if u is None:
            rep = m.AuthResult(ok=False, reason=f"unknown SAE {req.sae_id}")
        elif not u.get("active", True):
            rep = m.AuthResult(ok=False, reason=f"user {u['user']} is disabled")
        elif req.cert.get("o") != u["user"]:
            rep = m.AuthResult(ok=False, reason="certificate O does not name the SAE's user")
        elif req.peer_sae_id and req.peer_sae_id not in self.users:
            rep = m.AuthResult(ok=False, reason=f"unknown peer SAE {req.peer_sae_id}")
        else:
            rep = m.AuthResult(ok=True, user=u["user"], sae_id=req.sae_id, sla={
                "max_priority": u.get("max_priority", 9),
                **({"max_key_size": u["max_key_size"]} if "max_key_size" in u else {})})
        self.bus.reply(msg, rep.to_payload())

    def _on_admission(self, topic: str, p: dict[str, Any], msg) -> None:
        self.log.append(p)
        req = m.decode_any(p, m.ADMISSION_IN)
        if isinstance(req, m.ConfigRequest):
            self._config_request(req)
        elif isinstance(req, m.CloseRequest):
            self.delete(req.session_id, req.reason)
        elif isinstance(req, m.DeletionConfirm):
            with self._lock:
                self.confirms.append((req.km, req.session_id))
        elif isinstance(req, m.ConfigResync):
            self._resync(req.session_id, req.km)

    def _config_request(self, p: m.ConfigRequest) -> None:
        sid = p.session_id
        with self._lock:
            s = self.sessions.setdefault(sid, {"regs": [], "api": p.api, "configured": False})
            s["regs"].append(p)
            regs = list(s["regs"])
            if s["configured"]:
                return
            if p.api == "004" and len({r.sae_id for r in regs}) < 2:
                return
            s["configured"] = True
        first = regs[0]
        peer = self.users.get(str(first.peer_sae_id))
        if peer is None:
            self._reject(first.km, sid, f"rejected: unknown peer SAE {first.peer_sae_id}")
            return
        src_km, dst_km = first.km, peer["km"]
        path = self.path(src_km, dst_km)
        if path is None:
            self._reject(src_km, sid, "rejected: no path")
            return
        self.paths[sid] = path
        qos = first.qos or {}
        prio = min(int(qos.get("priority", 5)),
                   self.users[str(first.sae_id)].get("max_priority", 9))
        self.firsts[sid] = first
        for km, cfg in self._configs(sid, path, prio, update=set()).items():
            with self._lock:
                self.configs[(sid, km)] = cfg
            if self.drop_configs.get(km):
                continue  # a test's lost message: the KM never sees it
            self.bus.publish(topics.km_config(km), cfg)

    def _configs(self, sid: str, path: list[str], priority: int, update: set[str]
                 ) -> dict[str, dict[str, Any]]:
        """The session_config of every KM on ``path``, with admission's hop entries."""
        first = self.firsts[sid]
        ends = {"source": {"sae_id": first.sae_id}, "destination": {"sae_id": first.peer_sae_id}}
        return {km: m.SessionConfig(
            session_id=sid, **entry, priority=priority, bucket=dict(self.bucket),
            timeout_s=self.timeout_s, user=first.user, api=first.api,
            update=km in update).to_payload()
            for km, entry in hop_entries(path, ends).items()}

    def _resync(self, sid: str, km: str) -> None:
        """Send a KM's config of a live session again (admission's config_resync)."""
        with self._lock:
            cfg = self.configs.get((sid, km))
        if cfg is not None:
            self.bus.publish(topics.km_config(km), cfg)

    def _delete(self, km: str, sid: str, reason: str) -> None:
        self.bus.publish(topics.km_delete(km),
                         m.SessionDelete(session_id=sid, reason=reason).to_payload())

    def _reject(self, km: str, sid: str, reason: str) -> None:
        with self._lock:
            self.sessions.pop(sid, None)
        self._delete(km, sid, reason)

    def delete(self, sid: str, reason: str) -> None:
        with self._lock:
            self.sessions.pop(sid, None)
        for km in self.paths.pop(sid, []):
            self._delete(km, sid, reason)

    def reroute(self, sid: str, new_path: list[str]) -> None:
        """Move a live session onto another path (update: true on the KMs that stay)."""
        old = self.paths.get(sid, [])
        for km in set(old) - set(new_path):
            self._delete(km, sid, "rerouted")
        for km, cfg in self._configs(sid, new_path, 5, update=set(old)).items():
            self.bus.publish(topics.km_config(km), cfg)
        self.paths[sid] = new_path

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [p for p in list(self.log) if p.get("type") == kind]

    def event_kinds(self, element: str | None = None) -> list[str]:
        return [e["kind"] for e in list(self.events)
                if element is None or e.get("element") == element]
