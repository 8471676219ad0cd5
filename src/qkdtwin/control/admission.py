"""Admission Control: the per-session cycle of DESIGN.md §6.

``config_request`` → SLA check (profile from Access Control) → ``accepted`` (waiting for the
peer; nothing reserved) → both registered (or ETSI 014: the master alone) → path with
reservation from the Routing Element → one ``session_config`` per KM on its own topic →
``active`` with an inactivity timer reset by ``key_request`` → ``close_request`` / timer /
an endpoint's unsolicited ``deletion_confirm`` → ``terminating``: ``session_delete`` to every
KM of the route, confirmations collected (or given up after ``confirm_timeout_s``),
reservation released, VIRT link removed → ``terminated``. A KM that missed its delete (down
or cut off meanwhile) asks with ``config_resync`` when it reconnects and is sent it again.

On an alarm for a link, active sessions using it are re-routed: KMs that stay on the path
get ``session_config`` with ``update: true`` when their hops change, KMs new on the path a
fresh config, KMs that leave it ``session_delete`` with reason ``rerouted``. A session with
no other path is ended (``link_down``/``qber_high``) or kept (``qber_suspicious``).

Sessions live in memory and in SQLite (``<data_dir>/admission.db``), so a restart of the
element or of the broker loses none. Config keys: ``peer_wait_s`` (60), ``inactivity_timeout_s``
(120), ``confirm_timeout_s`` (10),
``request_timeout_s`` (5), ``sdn`` {url, ca, cert, key} (VIRT links; default certs from
``broker``), ``db``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from typing import Any

import requests
from prometheus_client import Counter, Gauge

from qkdtwin import bus
from qkdtwin import messages as m
from qkdtwin.bus import Message, RequestTimeout
from qkdtwin.control.common import Element
from qkdtwin.control.session_store import LIVE, SessionStore
from qkdtwin.control.sla import bucket_for, check_qos
from qkdtwin.etsi015 import SDN_BASE
from qkdtwin.service import run_service

log = logging.getLogger("qkdtwin.admission")

BLOCKING = ("link_down", "qber_high")


def hop_entries(path: list[str], s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The forwarding entry of every KM on ``path`` (each KM knows only prev/next hop)."""
    src, dst = s["source"], s["destination"]
    out = {}
    for i, km in enumerate(path):
        role = "source" if i == 0 else "destination" if i == len(path) - 1 else "transit"
        local = src["sae_id"] if role == "source" else dst["sae_id"] if role == "destination" \
            else None
        peer = dst["sae_id"] if role == "source" else src["sae_id"] if role == "destination" \
            else None
        # peer_km: the KME at the other end, the ETSI 014 status target_KME_ID
        peer_km = path[-1] if role == "source" else path[0] if role == "destination" else None
        out[km] = {"role": role, "prev_hop": path[i - 1] if i > 0 else None,
                   "next_hop": path[i + 1] if i < len(path) - 1 else None,
                   "local_sae_id": local, "peer_sae_id": peer, "peer_km": peer_km}
    return out


class AdmissionControl(Element):
    role = "admission"
    default_port = 9102

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.peer_wait_s = float(config.get("peer_wait_s", 60))
        self.inactivity_s = float(config.get("inactivity_timeout_s", 120))
        self.confirm_timeout_s = float(config.get("confirm_timeout_s", 10))
        self.req_timeout = float(config.get("request_timeout_s", 5))
        self.store = SessionStore(str(config.get("db") or self.data_dir / "admission.db"))
        self.lock = threading.RLock()
        self.sessions: dict[str, dict[str, Any]] = {s["session_id"]: s
                                                    for s in self.store.live()}
        self._last_reset_event: dict[str, float] = {}
        self._sdn = self._sdn_client(config)
        self.m_sessions = Gauge("qkdtwin_admission_sessions", "sessions by state", ["state"],
                                registry=self.registry)
        for st in (*LIVE, "terminating"):
            self.m_sessions.labels(st).set_function(
                lambda st=st: sum(1 for s in list(self.sessions.values()) if s["state"] == st))
        self.m_outcomes = Counter("qkdtwin_admission_outcomes", "session outcomes",
                                  ["outcome"], registry=self.registry)

    def _sdn_client(self, config: dict[str, Any]) -> dict[str, Any] | None:
        sdn = config.get("sdn")
        if not sdn or not sdn.get("url"):
            return None
        b = config["broker"]
        return {"url": sdn["url"].rstrip("/"), "verify": sdn.get("ca") or b.get("ca"),
                "cert": (sdn.get("cert") or b.get("cert"), sdn.get("key") or b.get("key"))}

    # -- lifecycle --

    def setup(self) -> None:
        self.bus.subscribe(bus.ADMISSION_IN, self.on_message)
        self.bus.subscribe(bus.alarm("+"), self.on_alarm)
        # after the subscriptions (the bus sends them first): KMs check their sessions again
        self.bus.on_connected(lambda: self.bus.publish(
            bus.ADMISSION_UP, m.AdmissionUp(epoch=uuid.uuid4().hex).to_payload(), retain=True))
        threading.Thread(target=self._timer_loop, daemon=True, name="admission-timers").start()
        resume = [s for s in self.sessions.values() if s["state"] == "routing"]
        for s in resume:  # crashed between "both registered" and "configured"
            threading.Thread(target=self.route, args=(s["session_id"],), daemon=True).start()

    def healthz(self) -> dict[str, Any]:
        with self.lock:
            states: dict[str, int] = {}
            for s in self.sessions.values():
                states[s["state"]] = states.get(s["state"], 0) + 1
        return {**super().healthz(), "sessions": states}

    def _save(self, s: dict[str, Any]) -> None:
        self.store.save(s)
        if s["state"] == "terminated":
            self.sessions.pop(s["session_id"], None)

    # -- messages from KMs --

    def on_message(self, topic: str, p: dict[str, Any], msg: Message) -> None:
        """On admission/in/<km>, which only KM <km> may write (ACL): the topic names the KM."""
        self.count(str(p.get("type")))
        req = m.decode_any(p, m.ADMISSION_IN)  # a refused payload: logged by the bus
        sid, km = req.session_id, req.km  # type: ignore[attr-defined]
        if not sid or not km:
            raise m.BadMessage(f"{req.TYPE}: empty session_id or km", req.TYPE)
        publisher = bus.admission_in_km(topic)
        if km != publisher:
            raise m.BadMessage(f"{req.TYPE}: km {km!r} is not the publisher {publisher!r} "
                               f"(topic {topic})", req.TYPE)
        if isinstance(req, m.ConfigRequest):
            self.config_request(req)
        elif isinstance(req, m.KeyRequest):
            self.key_request(sid, km)
        elif isinstance(req, m.CloseRequest):
            self.close(sid, km, "close_request")
        elif isinstance(req, m.DeletionConfirm):
            self.deletion_confirm(sid, km)
        elif isinstance(req, m.ConfigResync):
            self.config_resync(sid, km)

    def delete(self, km: str, sid: str, reason: str, counter: dict | None = None) -> None:
        """Send one KM the ``session_delete`` of a session."""
        self.bus.publish(bus.km_delete(km), m.SessionDelete(
            session_id=sid, reason=reason, counter_qos=counter or None).to_payload())

    def reject(self, sid: str, km: str, reason: str, counter: dict | None = None) -> None:
        self.delete(km, sid, reason, counter)
        self.m_outcomes.labels("rejected").inc()
        self.event("session_rejected", sid, km=km, reason=reason, counter_qos=counter)

    def _ask(self, topic: str, body: m.Message, reply: type[m.M]) -> m.M | m.ErrorReply | None:
        """The reply to a request: ``reply``, an ErrorReply (refused or malformed answer),
        or None when nobody answered in time."""
        try:
            raw = self.bus.request(topic, body.to_payload(), timeout=self.req_timeout)
        except RequestTimeout:
            return None
        try:
            return m.decode_any(raw, (reply, m.ErrorReply))  # type: ignore[return-value]
        except m.BadMessage as exc:
            log.warning("malformed reply on %s: %s", topic, exc.reason,
                        extra={"topic": topic, "reason": exc.reason})
            return m.ErrorReply(reason=f"malformed reply: {exc.reason}")

    def _live_sessions_of(self, user: str, sid: str) -> int:
        """Live sessions of ``user`` besides ``sid`` (a peer joins, it is not a new one)."""
        return sum(1 for s in self.sessions.values()
                   if s["state"] in LIVE and s["user"] == user and s["session_id"] != sid)

    def _sla_check(self, p: m.ConfigRequest, sid: str, km: str
                   ) -> tuple[dict | None, str | None]:
        """(effective qos, None) or (None, reason already sent to the KM)."""
        user, sae, peer = p.user, p.sae_id, p.peer_sae_id
        if not (user and sae and peer):
            self.reject(sid, km, "rejected: config_request needs user, sae_id, peer_sae_id")
            return None, "bad"
        prof = self._ask(bus.ACCESS_IN, m.ProfileRequest(user=user), m.ProfileReply)
        if prof is None:
            self.reject(sid, km, "rejected: access control did not answer")
            return None, "access"
        if not isinstance(prof, m.ProfileReply) or not prof.ok or prof.status != "active":
            self.reject(sid, km, f"rejected: user {user} unknown or disabled")
            return None, "user"
        app = next((a for a in prof.applications or [] if a.get("sae_id") == sae), None)
        if app is None:
            self.reject(sid, km, f"rejected: {sae} is not an application of {user}")
            return None, "sae"
        if app.get("km") != km:  # a KM asks only for the applications attached to it
            self.reject(sid, km, f"rejected: {sae} is attached to {app.get('km')}, not {km}")
            return None, "sae"
        with self.lock:
            live = self._live_sessions_of(user, sid)
        try:
            d = check_qos(p.qos, prof.sla or {}, peer, live)
        except (ArithmeticError, ValueError, TypeError, KeyError) as exc:
            # whatever a QoS or profile value does to the check, the KM gets an answer
            log.warning("SLA check of %s failed: %r", sid, exc, extra={"session_id": sid})
            self.reject(sid, km, f"rejected: qos could not be checked ({type(exc).__name__})")
            return None, "sla"
        if not d.ok:
            self.reject(sid, km, d.reason or "rejected", d.counter_qos)
            return None, "sla"
        return d.qos, None

    def config_request(self, p: m.ConfigRequest) -> None:
        sid, km, api = p.session_id, p.km, p.api
        self.event("config_request_received", sid, km=km, sae_id=p.sae_id,
                   peer_sae_id=p.peer_sae_id, user=p.user, api=api)
        with self.lock:
            s = self.sessions.get(sid)
            if s is not None:
                for end in ("source", "destination"):
                    e = s.get(end)
                    if e and e["km"] == km and e["sae_id"] == p.sae_id:
                        # a repeat (KM restarted or 014 slave side): resend what it needs
                        if s["state"] == "active" and km in s.get("entries", {}):
                            self._send_config(s, km, update=False)
                        self.event("config_request_repeated", sid, km=km, state=s["state"])
                        return
                if s["state"] != "accepted" or s.get("destination"):
                    self.reject(sid, km, "rejected: key_stream_id already in use")
                    return
        qos, err = self._sla_check(p, sid, km)
        if err:
            return
        if s is None:
            self._new_session(p, api, qos)
        else:
            self._peer_registered(sid, p, qos)

    def _new_session(self, p: m.ConfigRequest, api: str, qos: dict[str, Any]) -> None:
        sid, km = p.session_id, p.km
        now = time.time()
        # Not the QoS timeout: in ETSI 004 that bounds how long OPEN_CONNECT blocks, after
        # which the application holds a status-1 session that its peer may still join.
        wait = self.peer_wait_s
        s = {"session_id": sid, "state": "accepted", "api": api, "user": p.user,
             "qos": qos, "created": now, "deadline": now + wait,
             "source": {"km": km, "sae_id": p.sae_id}, "destination": None,
             "peer_sae_id": p.peer_sae_id, "path": [], "links": [], "entries": {}}
        if api == "014":
            look = self._ask(bus.ACCESS_IN, m.LookupSae(sae_id=str(p.peer_sae_id)), m.SaeReply)
            if not isinstance(look, m.SaeReply) or not look.ok or look.status != "active" \
                    or not look.km:
                self.reject(sid, km, f"rejected: peer application {p.peer_sae_id} unknown "
                                     "or disabled")
                return
            s["destination"] = {"km": look.km, "sae_id": p.peer_sae_id}
        with self.lock:
            if sid in self.sessions:  # lost a race with the peer's request: treat as peer
                pass
            else:
                self.sessions[sid] = s
                self._save(s)
                self.event("session_accepted", sid, km=km, user=s["user"], api=api,
                           waiting_for_peer=api != "014", qos=qos)
                if api != "014":
                    return
                s["state"] = "routing"
                self._save(s)
        if sid in self.sessions and self.sessions[sid] is not s:
            self._peer_registered(sid, p, qos)
            return
        self.route(sid)

    def _peer_registered(self, sid: str, p: m.ConfigRequest, qos: dict[str, Any]) -> None:
        km = p.km
        with self.lock:
            s = self.sessions.get(sid)
            if s is None or s["state"] != "accepted" or s.get("destination"):
                self.reject(sid, km, "rejected: key_stream_id already in use")
                return
            if p.sae_id != s["peer_sae_id"] or p.peer_sae_id != s["source"]["sae_id"]:
                self.reject(sid, km, "rejected: the applications of this key_stream_id do not "
                                     "match")
                return
            s["destination"] = {"km": km, "sae_id": p.sae_id}
            s["state"] = "routing"
            self._save(s)
            self.event("peer_registered", sid, km=km, sae_id=p.sae_id)
        self.route(sid)

    # -- routing and configuration --

    def route(self, sid: str) -> None:
        s = self.sessions.get(sid)
        if s is None:
            return
        src, dst = s["source"]["km"], s["destination"]["km"]
        rate = float(s["qos"].get("min_bps") or 0)
        res = self._path(sid, src, dst, rate, [])
        with self.lock:
            if self.sessions.get(sid) is not s or s["state"] != "routing":
                if res is not None and res.ok:  # closed while we asked: give the booking back
                    self._release(sid)
                return
            if res is None or not res.ok:
                reason = "rejected: " + ((res and res.reason) or "routing did not answer")
                for end in ("source", "destination"):
                    self.reject(sid, s[end]["km"], reason)
                s["state"] = "terminated"
                s["end_reason"] = reason
                self._save(s)
                return
            s["path"], s["links"] = res.path, res.links
            s["entries"] = hop_entries(s["path"], s)
            s["bucket"] = bucket_for(s["qos"])
            s["timeout_s"] = self.inactivity_s
            self.event("path_assigned", sid, path=s["path"], links=s["links"], rate_bps=rate,
                       backup=(res.backup or {}).get("path"))
            for km in s["path"]:
                self._send_config(s, km, update=False)
            s["state"] = "active"
            s["last_activity"] = time.time()
            s["deadline"] = s["last_activity"] + self.inactivity_s
            self._save(s)
            self.m_outcomes.labels("admitted").inc()
            self.event("session_active", sid, path=s["path"], timeout_s=self.inactivity_s)
        self._virt_link(s)

    def _path(self, sid: str, src: str, dst: str, rate: float, exclude: list[str]
              ) -> m.PathReply | None:
        """A reserved path from the Routing Element (None: no answer, or a malformed one)."""
        res = self._ask(bus.ROUTING_IN, m.PathRequest(
            session_id=sid, src=src, dst=dst, rate_bps=rate, exclude_links=exclude,
            reserve=True), m.PathReply)
        if isinstance(res, m.ErrorReply):
            return m.PathReply(ok=False, session_id=sid, reason=res.reason)
        if res is not None and res.ok and not (res.path and res.links is not None):
            return m.PathReply(ok=False, session_id=sid, reason="path reply without a path")
        return res

    def _release(self, sid: str) -> None:
        self.bus.publish(bus.ROUTING_IN, m.Release(session_id=sid).to_payload())

    def _send_config(self, s: dict[str, Any], km: str, update: bool) -> None:
        e = s["entries"][km]
        body = m.SessionConfig(
            session_id=s["session_id"], **e, priority=int(s["qos"].get("priority", 0)),
            bucket=s["bucket"], timeout_s=s["timeout_s"], user=s["user"], update=update,
            api=s["api"], qos=s["qos"])
        self.bus.publish(bus.km_config(km), body.to_payload())
        self.event("config_sent", s["session_id"], km=km, role=e["role"],
                   prev_hop=e["prev_hop"], next_hop=e["next_hop"], update=update)

    def _virt_link(self, s: dict[str, Any], delete: bool = False) -> None:
        """Register (or remove) the VIRT link of a relayed session at the SDN controller."""
        if self._sdn is None:
            return
        sid, src = s["session_id"], s["source"]["km"]
        lid = f"virt-{sid}"
        url = f"{self._sdn['url']}{SDN_BASE}/{src}/qkd_links/qkd_link/{lid}"
        relayed = len(s.get("path", [])) > 2
        try:
            if delete or not relayed:
                if not s.get("virt_link"):
                    return
                r = requests.delete(url, verify=self._sdn["verify"], cert=self._sdn["cert"],
                                    timeout=self.req_timeout)
                s["virt_link"] = None
                self.event("virt_link_deleted", sid, link=lid, status=r.status_code)
            else:
                path = s["path"]
                body = {"qkd_link": {
                    "qkdl_id": lid, "qkdl_type": "VIRT", "qkdl_status": "up",
                    "qkdl_local": {"qkdn_id": src},
                    "qkdl_remote": {"qkdn_id": s["destination"]["km"]},
                    "virt_prev_hop": None, "virt_next_hop": [path[1]], "virt_hops": path,
                    "virt_bandwidth": float(s["qos"].get("min_bps") or 0), "session_id": sid}}
                r = requests.put(url, json=body, verify=self._sdn["verify"],
                                 cert=self._sdn["cert"], timeout=self.req_timeout)
                r.raise_for_status()
                s["virt_link"] = lid
                self.event("virt_link_registered", sid, link=lid, hops=path)
        except requests.RequestException as exc:
            self.event("virt_link_failed", sid, link=lid, error=str(exc)[:200])
        with self.lock:
            if s["state"] != "terminated":
                self._save(s)

    # -- activity, close, deletion --

    def config_resync(self, sid: str, km: str) -> None:
        """A KM asks for its forwarding entry of a session: one a neighbour relays on and it
        lacks (its session_config was published while it was down or not yet subscribed),
        or one it holds after a restart or reconnection. An active session with the KM on
        its path: that KM's entry again. A session that ended, or left that KM when it was
        re-routed, while the KM could not hear the delete: ``session_delete`` again, so
        nothing outlives its session at admission. Sessions still being set up: ignored."""
        with self.lock:
            s = self.sessions.get(sid)
            state = s["state"] if s is not None else "terminated"
            if state == "active" and km in (s.get("entries") or {}):
                self._send_config(s, km, update=False)
                return
            if state in ("accepted", "routing"):
                self.event("config_resync_ignored", sid, km=km,
                           reason=f"session is {state}, not configured yet")
                return
            if state == "active":
                reason = "rerouted"
            else:  # terminating, or terminated (no longer in memory) or never known here
                reason = (s or {}).get("end_reason") or "terminated"
            self.delete(km, sid, reason)
            self.event("deletion_resent", sid, km=km, reason=reason, state=state)

    def _off_path(self, s: dict[str, Any], km: str, what: str) -> bool:
        """``km`` is not on the session's path (before routing: its endpoints): refused."""
        ends = [e["km"] for e in (s["source"], s["destination"]) if e]
        if km in (s.get("path", []) if s["state"] == "active" else ends):
            return False
        self.event("message_refused", s["session_id"], km=km, msg_type=what,
                   reason=f"{km} is not on the path of this session")
        return True

    def key_request(self, sid: str, km: str) -> None:
        with self.lock:
            s = self.sessions.get(sid)
            if s is None or s["state"] != "active":
                return
            if self._off_path(s, km, "key_request"):
                return
            s["last_activity"] = time.time()
            s["deadline"] = s["last_activity"] + s.get("timeout_s", self.inactivity_s)
            self._save(s)
            # one timer_reset event per session and second is enough for a timeline
            if s["last_activity"] - self._last_reset_event.get(sid, 0) >= 1.0:
                self._last_reset_event[sid] = s["last_activity"]
                self.event("timer_reset", sid, km=km)

    def close(self, sid: str, km: str | None, why: str) -> None:
        """Close request, timer expiry or an endpoint gone: delete on every KM."""
        with self.lock:
            s = self.sessions.get(sid)
            if s is None or s["state"] not in LIVE:
                return
            if km is not None and self._off_path(s, km, why):
                return
            self.event("close_received" if why == "close_request" else "session_" + why, sid,
                       km=km, state=s["state"])
            if s["state"] == "active":
                targets = list(s["path"])
            else:
                targets = [e["km"] for e in (s["source"], s["destination"]) if e]
            reason = "timeout" if why == "timeout" else "closed"
            if why == "endpoint_gone":  # that KM has already deleted and confirmed
                targets = [t for t in targets if t != km]
            for t in targets:
                r = reason if (t == km or why == "timeout") else "peer closed"
                self.delete(t, sid, r)
                self.event("deletion_sent", sid, km=t, reason=r)
            had_path = s["state"] == "active"
            s["state"] = "terminating"
            s["end_reason"] = reason
            s["pending_confirms"] = list(targets)
            s["deadline"] = time.time() + self.confirm_timeout_s
            self._save(s)
            if not s["pending_confirms"]:
                self._finish(s)
        if had_path:
            self._release(sid)
            self._virt_link(s, delete=True)

    def deletion_confirm(self, sid: str, km: str) -> None:
        with self.lock:
            s = self.sessions.get(sid)
            if s is None:
                self.event("deletion_confirmed", sid, km=km, known=False)
                return
            if s["state"] == "terminating":
                if km in s["pending_confirms"]:
                    s["pending_confirms"].remove(km)
                self.event("deletion_confirmed", sid, km=km)
                if not s["pending_confirms"]:
                    self._finish(s)
                else:
                    self._save(s)
                return
            ends = [e["km"] for e in (s["source"], s["destination"]) if e]
            if km in s.get("rerouted_from", []):
                s["rerouted_from"].remove(km)
                self._save(s)
                self.event("deletion_confirmed", sid, km=km, rerouted=True)
                return
        if km in ends:  # the KM ended the session itself (its timer): end it everywhere
            self.close(sid, km, "endpoint_gone")

    def _finish(self, s: dict[str, Any]) -> None:
        missing = s.get("pending_confirms") or []
        s["state"] = "terminated"
        s["ended"] = time.time()
        self._save(s)
        self._last_reset_event.pop(s["session_id"], None)
        self.m_outcomes.labels("terminated").inc()
        self.event("session_terminated", s["session_id"], reason=s.get("end_reason"),
                   unconfirmed=missing or None)

    def _timer_loop(self) -> None:
        while not self._stop.wait(0.2):
            now = time.time()
            with self.lock:
                due = [s for s in self.sessions.values() if s.get("deadline", now + 1) <= now]
            for s in due:
                try:
                    if s["state"] in ("accepted", "active"):
                        self.close(s["session_id"], None, "timeout")
                    elif s["state"] == "terminating":
                        with self.lock:
                            self.event("deletion_unconfirmed", s["session_id"],
                                       kms=s["pending_confirms"])
                            self._finish(s)
                except Exception:  # a timer bug must not stop the timers
                    log.exception("timer handling of %s failed", s["session_id"])

    # -- alarms and re-routing --

    def on_alarm(self, topic: str, p: dict[str, Any], msg: Message) -> None:
        self.count("alarm")
        alarm = m.decode(p, m.LinkAlarm)
        link, kind = alarm.link, alarm.kind
        if kind not in (*BLOCKING, "qber_suspicious"):
            return
        with self.lock:
            hit = [s["session_id"] for s in self.sessions.values()
                   if s["state"] == "active" and link in s["links"]]
        if hit:
            self.event("alarm_received", None, link=link, alarm=kind, sessions=hit)
        for sid in hit:
            self.reroute(sid, link, kind)

    def reroute(self, sid: str, link: str, kind: str) -> None:
        s = self.sessions.get(sid)
        if s is None:
            return
        res = self._path(sid, s["source"]["km"], s["destination"]["km"],
                         float(s["qos"].get("min_bps") or 0), [link])
        with self.lock:
            if self.sessions.get(sid) is not s or s["state"] != "active" \
                    or link not in s["links"]:
                return
            if res is None or not res.ok:
                why = (res and res.reason) or "routing did not answer"
                self.event("reroute_failed", sid, link=link, alarm=kind, reason=why)
                if kind in BLOCKING:
                    self._end_for_alarm(s, link)
                return
            old_path, old_entries = s["path"], s["entries"]
            s["path"], s["links"] = res.path, res.links
            s["entries"] = hop_entries(s["path"], s)
            # new KMs first (ready to relay), then changed entries, then KMs leaving
            for km in s["path"]:
                if km not in old_entries:
                    self._send_config(s, km, update=False)
            for km in s["path"]:
                if km in old_entries and old_entries[km] != s["entries"][km]:
                    self._send_config(s, km, update=True)
            gone = [km for km in old_path if km not in s["entries"]]
            for km in gone:
                self.delete(km, sid, "rerouted")
                self.event("deletion_sent", sid, km=km, reason="rerouted")
            s["rerouted_from"] = s.get("rerouted_from", []) + gone
            self._save(s)
            self.event("session_rerouted", sid, link=link, alarm=kind, old_path=old_path,
                       path=s["path"], links=s["links"])
        self._virt_link(s)

    def _end_for_alarm(self, s: dict[str, Any], link: str) -> None:
        sid = s["session_id"]
        reason = f"link alarm: no path avoiding {link}"
        for t in s["path"]:
            self.delete(t, sid, reason)
            self.event("deletion_sent", sid, km=t, reason=reason)
        s["state"] = "terminating"
        s["end_reason"] = reason
        s["pending_confirms"] = list(s["path"])
        s["deadline"] = time.time() + self.confirm_timeout_s
        self._save(s)
        self._release(sid)
        threading.Thread(target=self._virt_link, args=(s, True), daemon=True).start()


def main(config: dict[str, Any]) -> None:
    AdmissionControl(config).serve_forever()


if __name__ == "__main__":
    sys.exit(run_service(main, "qkdtwin Admission Control element"))
