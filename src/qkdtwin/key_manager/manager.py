"""The Key Manager: one object tying sessions, pools, scheduler, relay and control together.

The HTTP layers (etsi014, etsi004, kmapi) validate input and call the methods here; every
refusal is a :class:`KmError` that they turn into the right ETSI answer.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from qkdtwin.bus import Bus
from qkdtwin.key_manager import relay as rl
from qkdtwin.key_manager.alarms import COMPROMISED, Alarm, BadAlarm, LinkAlarms
from qkdtwin.key_manager.config import KmConfig
from qkdtwin.key_manager.control import Control, ControlUnavailable
from qkdtwin.key_manager.forwarding import Entry, ForwardingTable
from qkdtwin.key_manager.identity import Identity
from qkdtwin.key_manager.keystore import (
    E2EKey,
    KeyConflict,
    KeyStore,
    NotFound,
    Withdrawal,
    WrongOwner,
    via_text,
)
from qkdtwin.key_manager.linkpool import LinkPool
from qkdtwin.key_manager.metrics import Metrics
from qkdtwin.key_manager.peers import HttpClient, PeerError
from qkdtwin.key_manager.scheduler import Job, LinkScheduler
from qkdtwin.key_manager.sessions import (
    KEY_EXCHANGING,
    OPERATIVE,
    TERMINATED,
    USER_ACCEPTED,
    Session,
    SessionTable,
    session_id_014,
)
from qkdtwin.key_manager.token_bucket import TokenBucket

log = logging.getLogger("qkdtwin.key_manager")
RELAY_BATCH = 512  # end-to-end keys per relay message
MAX_RUN_AHEAD = 1024  # ETSI 004: how far beyond the stream's front an index may be asked
RELAY_RETRY_S = (1.0, 8.0)  # first and longest wait before an unacknowledged relay is resent
RESYNC_GAP_S = 1.0  # at most one config_resync per session and second


class KmError(Exception):
    """A refused request. ``kind`` picks the HTTP status / ETSI 004 code in the API layer."""

    HTTP = {"bad_request": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404,
            "conflict": 409, "gone": 410, "refused": 400, "unavailable": 503, "rate": 503,
            "insufficient": 503}

    def __init__(self, kind: str, message: str, details: list[dict[str, Any]] | None = None,
                 status004: int | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or []
        self.status004 = status004
        self.extra = extra or {}

    @property
    def http(self) -> int:
        return self.HTTP[self.kind]


@dataclass
class OpenResult:
    status: int
    session: Session
    message: str


class KeyManager:
    def __init__(self, cfg: KmConfig, bus: Bus | None = None) -> None:
        self.cfg = cfg
        self.node = cfg.node
        self.store = KeyStore(cfg.data_dir / "km.sqlite")
        self.metrics = Metrics()
        self.control = Control(cfg.node, bus, cfg.control_timeout_s)
        self.peers = HttpClient(cfg.ca, cfg.cert, cfg.key, pool=cfg.threads)
        self.modules = HttpClient(cfg.ca, cfg.cert, cfg.key, pool=4)
        self.forwarding = ForwardingTable()
        self.sessions = SessionTable(self._on_state, self._save)
        self.pools: dict[str, LinkPool] = {}
        self.pool_by_peer: dict[str, LinkPool] = {}
        self.schedulers: dict[str, LinkScheduler] = {}
        for lc in cfg.links:
            pool = LinkPool(cfg.node, lc, cfg.pool, self.store, self.peers, self.modules,
                            self._pool_changed)
            self.pools[lc.link] = pool
            self.pool_by_peer[lc.peer] = pool
            self.schedulers[lc.link] = LinkScheduler(lc.link, pool.own_bytes)
            self.metrics.pool_bits.labels(link=lc.link).set_function(pool.level_bits)
        self._arrivals = threading.Condition()
        self._stop = threading.Event()
        self._demanded: dict[str, int] = {}
        self._demand_lock = threading.Lock()
        self._ready: dict[str, int] = {}
        self._ready_lock = threading.Lock()
        # relays in flight per session, and when an unacknowledged one may be sent again
        self._inflight: dict[str, int] = {}
        self._retry_at: dict[str, tuple[float, float]] = {}
        self._relay_lock = threading.Lock()
        self._resync_at: dict[str, float] = {}
        self.alarms = LinkAlarms()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KeyManager:
        self._restore()
        for sched in self.schedulers.values():
            sched.start()
        for pool in self.pools.values():
            pool.start()
        self.control.start(self.on_config, self.on_delete, self.on_alarm)
        threading.Thread(target=self._housekeeping, daemon=True, name="km-timers").start()
        threading.Thread(target=self._retry_loop, daemon=True, name="km-relay-retry").start()
        log.info("key manager %s started", self.node,
                 extra={"links": [lc.link for lc in self.cfg.links]})
        return self

    def stop(self, close_store: bool = True) -> None:
        """Stop the background work. A server that may still be finishing requests passes
        ``close_store=False``: every change is committed, the process exit closes the file."""
        self._stop.set()
        for sched in self.schedulers.values():
            sched.stop()
        for pool in self.pools.values():
            pool.stop()
        self.control.stop()
        if close_store:
            self.store.close()

    def _restore(self) -> None:
        """Sessions that were operative before a restart stay so; half-open ones are gone."""
        for d in self.store.load_sessions():
            s = Session.from_dict(d)
            if s.state in (OPERATIVE, KEY_EXCHANGING) and s.role:
                s.state = OPERATIVE
                s.touch()
                self.sessions.put(s)
                cfg = d.get("forwarding") or {}
                self.forwarding.set(s.session_id, Entry(s.role, cfg.get("prev_hop"),
                                                        cfg.get("next_hop")))
            else:
                self.store.delete_session(s.session_id)

    def health(self) -> dict[str, Any]:
        db = self.store.ok()
        return {"ok": db, "node": self.node, "db": db, "broker": self.control.connected,
                "links": {link: {"status": p.status, "pool_bits": p.level_bits()}
                          for link, p in self.pools.items()},
                "sessions": self.sessions.counts(), "alarms": self.alarms.snapshot()}

    # -- state changes -----------------------------------------------------------------------

    def _save(self, s: Session) -> None:
        if s.state == TERMINATED:
            self.store.delete_session(s.session_id)
            return
        d = s.to_dict()
        e = self.forwarding.get(s.session_id)
        if e:
            d["forwarding"] = {"prev_hop": e.prev_hop, "next_hop": e.next_hop}
        self.store.save_session(s.session_id, d)

    def _on_state(self, s: Session, old: str, new: str) -> None:
        self.metrics.transitions.labels(state=new).inc()
        gate = 0.5 if new in (KEY_EXCHANGING, OPERATIVE) and old in (KEY_EXCHANGING,
                                                                      OPERATIVE) else 0.0
        self.control.event("session_state", s.session_id, gate_s=gate, old=old, new=new,
                           api=s.api, role=s.role, reason=s.reason)

    def _begin_exchange(self, s: Session) -> None:
        s.touch()
        with s.cond:
            s.exchanging += 1
        if s.state == OPERATIVE:
            self.sessions.transition(s, KEY_EXCHANGING)

    def _end_exchange(self, s: Session) -> None:
        s.touch()
        with s.cond:
            s.exchanging -= 1
            last = s.exchanging <= 0
        if last and s.state == KEY_EXCHANGING:
            self.sessions.transition(s, OPERATIVE)

    def _pool_changed(self, link: str) -> None:
        sched = self.schedulers.get(link)
        if sched:
            sched.key_arrived()

    # -- control plane in --------------------------------------------------------------------

    def on_config(self, p: dict[str, Any]) -> None:
        """``session_config`` from admission control (new session or ``update``)."""
        sid = p.get("session_id")
        role = p.get("role")
        if not isinstance(sid, str) or role not in ("source", "transit", "destination"):
            log.warning("ignoring malformed session_config", extra={"payload": p})
            return
        prev_hop, next_hop = p.get("prev_hop"), p.get("next_hop")
        for hop in (prev_hop, next_hop):
            if hop is not None and hop not in self.pool_by_peer:
                log.warning("session_config names %s, not a neighbour of %s", hop, self.node,
                            extra={"session_id": sid})
                self.control.event("config_refused", sid, reason=f"{hop} is not a neighbour")
                return
        s = self.sessions.get(sid)
        if s is None or s.state == TERMINATED:
            s = Session(session_id=sid, api=str(p.get("api", "014")), state=OPERATIVE)
            self.sessions.put(s)
            fresh = True
        else:
            fresh = False
        with s.cond:
            s.role = role
            s.priority = int(p.get("priority", s.priority))
            b = p.get("bucket") or {}
            if b:
                if s.bucket is None:
                    s.bucket = TokenBucket(b.get("size_bits", 1e12), b.get("rate_bps", 1e12))
                else:
                    s.bucket.reconfigure(b.get("size_bits", 1e12), b.get("rate_bps", 1e12))
            s.timeout_s = float(p.get("timeout_s", s.timeout_s))
            s.local_sae_id = p.get("local_sae_id") or s.local_sae_id
            s.peer_sae_id = p.get("peer_sae_id") or s.peer_sae_id
            s.user = p.get("user") or s.user
            if p.get("peer_km"):
                s.peer_km = p["peer_km"]
            s.touch()
        old = self.forwarding.set(sid, Entry(role, prev_hop, next_hop))
        if p.get("update") and old is not None:
            self.control.event("forwarding_update", sid, role=role, prev_hop=prev_hop,
                               next_hop=next_hop, old_prev_hop=old.prev_hop,
                               old_next_hop=old.next_hop)
            with self._relay_lock:  # pending relays may go over the new path right away
                self._retry_at.pop(sid, None)
        if s.state == USER_ACCEPTED:
            self.sessions.transition(s, OPERATIVE)
        else:
            self._save(s)
        self.control.event("session_configured", sid, role=role, prev_hop=prev_hop,
                           next_hop=next_hop, priority=s.priority, fresh=fresh)
        if role == "source":
            self._maybe_prefetch(s)

    def on_delete(self, p: dict[str, Any]) -> None:
        sid = p.get("session_id")
        if not isinstance(sid, str):
            return
        s = self.sessions.get(sid)
        self.forwarding.remove(sid)
        if s is not None:
            if p.get("counter_qos"):
                s.qos["counter_qos"] = p["counter_qos"]
            self.sessions.transition(s, TERMINATED, str(p.get("reason", "deleted")))
            self._release(s)
        self.control.deletion_confirm(sid)
        self.control.event("session_deleted", sid, reason=p.get("reason"))

    def _release(self, s: Session) -> None:
        """Free what a terminated session holds. ETSI 014 keys already made for a slave stay
        until their TTL: the master may have them and pass the IDs on later."""
        if s.api == "004":
            self.store.drop_session_keys(s.session_id)
        else:
            self.store.drop_session_keys(s.session_id, "src")
            self.store.drop_session_keys(s.session_id, "pend")
        with self._ready_lock:
            self._ready.pop(s.session_id, None)
        with self._arrivals:
            self._arrivals.notify_all()

    # -- link alarms: quarantine and withdrawal ------------------------------------------------

    def on_alarm(self, topic: str, p: dict[str, Any]) -> None:
        """A retained ``alarm`` from monitoring (docs/architecture.md, Key Manager)."""
        try:
            before, after = self.alarms.apply(topic.rsplit("/", 1)[-1], p)
        except BadAlarm as exc:
            log.warning("ignoring alarm: %s", exc, extra={"topic": topic})
            return
        link = topic.rsplit("/", 1)[-1]
        if after is not None and (before is None or before.kind != after.kind):
            log.warning("%s: no relay over it until it clears", after.describe())
            self.control.event("link_quarantined", None, link=link, alarm=after.kind,
                               since=after.since, reason=p.get("reason"))
        elif after is None and before is not None:
            log.info("alarm of link %s cleared: relays over it again", link)
            self.control.event("link_released", None, link=link, alarm="clear",
                               was=before.kind)
            with self._relay_lock:  # pending relays waiting for this link: try again soon
                self._retry_at.clear()
        if link in self.pools:
            self.metrics.quarantined.labels(link=link).set(0 if after is None else 1)
        if after is not None and after.kind in COMPROMISED:
            # also on a repeated message (e.g. a restarted KM gets the retained alarm): keys
            # stored before, or while this KM was down, go too
            self._withdraw(self.store.withdraw_route(link, after.kind, after.since))

    def _withdraw(self, ws: list[Withdrawal]) -> None:
        """Account for keys the store has just withdrawn: ready counts, metrics, one event
        per session and side, and a refill of the source's prefetch (over the new path once
        admission has re-routed the session)."""
        if not ws:
            return
        groups: dict[tuple[str, str, str], list[Withdrawal]] = {}
        for w in ws:
            groups.setdefault((w.session_id, w.side, w.link), []).append(w)
        refill = []
        for (sid, side, link), g in groups.items():
            idxs = sorted(w.idx for w in g)
            s = self.sessions.get(sid)
            if s is not None and side == "src":
                for size in {w.size for w in g}:
                    self._ready_add(s, size, -sum(1 for w in g if w.size == size))
                refill.append(s)
            self.metrics.withdrawn.labels(link=link, side=side).inc(len(g))
            log.warning("withdrew %d undelivered key(s): they crossed link %s (%s)", len(g),
                        link, g[0].kind, extra={"session_id": sid})
            self.control.event("keys_withdrawn", sid, link=link, alarm=g[0].kind, side=side,
                               count=len(g), first_index=idxs[0], last_index=idxs[-1],
                               indexes=idxs[:64], api=s.api if s else None)
        with self._arrivals:  # GET_KEY waiting for a withdrawn index: look again
            self._arrivals.notify_all()
        for s in refill:
            self._maybe_prefetch(s)

    def _next_link_alarm(self, s: Session) -> Alarm | None:
        e = self.forwarding.get(s.session_id)
        if e is None or e.next_hop is None or e.next_hop not in self.pool_by_peer:
            return None
        return self.alarms.get(self.pool_by_peer[e.next_hop].link)

    @staticmethod
    def _withdrawn_message(what: str, w: Withdrawal) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(w.since))
        return (f"{what} was withdrawn: it crossed link {w.link}, under alarm ({w.kind}) since"
                f" {since}Z")

    # -- establishing a session (AUTHENTICATING → USER_ACCEPTED → OPERATIVE) -------------------

    def authenticate(self, ident: Identity, peer_sae_id: str | None,
                     session_id: str | None = None) -> dict[str, Any]:
        if ident.ou != "sae":
            raise KmError("unauthorized", "client certificate is not an application (SAE)"
                          " certificate", status004=10)
        try:
            rep = self.control.authenticate(ident.as_dict(), peer_sae_id, session_id)
        except ControlUnavailable as exc:
            raise KmError("unavailable", str(exc), status004=4) from None
        if not rep.get("ok"):
            raise KmError("unauthorized", f"SAE {ident.cn} not authorised: "
                          f"{rep.get('reason', 'refused by access control')}", status004=10)
        return rep

    def _establish(self, s: Session, ident: Identity, peer: str, api: str,
                   qos: dict[str, Any], wait_s: float) -> None:
        """Drive a new session to OPERATIVE; on return it may still be USER_ACCEPTED (004)."""
        self.control.event("session_request", s.session_id, api=api, sae_id=ident.cn,
                           peer_sae_id=peer)
        try:
            rep = self.authenticate(ident, peer, s.session_id)
        except KmError as exc:
            self.sessions.transition(s, TERMINATED, exc.message)
            raise
        s.user = rep.get("user") or ident.o
        cap_bits = (rep.get("sla") or {}).get("max_key_size")
        if isinstance(cap_bits, int) and not isinstance(cap_bits, bool) and cap_bits > 0:
            s.qos["sla_max_key_size"] = cap_bits  # ETSI 014 sizes are checked per request
            if api == "014" and cap_bits < s.key_size:
                # the default size (status key_size) within what the user may have
                s.key_size = max(8, cap_bits // 8 * 8)
                qos = {**qos, "key_chunk_size": s.key_size // 8}
        if "priority" not in qos:
            # no priority asked for: the KM default, within what the user's SLA allows
            cap = (rep.get("sla") or {}).get("max_priority")
            prio = self.cfg.default_priority
            if isinstance(cap, int | float) and not isinstance(cap, bool):
                prio = max(0, min(prio, int(cap)))
            qos = {**qos, "priority": prio}
            s.priority = prio
        self.sessions.transition(s, USER_ACCEPTED)
        try:
            self.control.config_request(s.session_id, s.user or "", ident.cn, peer, api, qos)
        except ControlUnavailable as exc:
            self.sessions.transition(s, TERMINATED, str(exc))
            raise KmError("unavailable", str(exc), status004=4) from None
        with s.cond:
            s.cond.wait_for(lambda: s.state != USER_ACCEPTED, wait_s)

    def _wait_live(self, s: Session, wait_s: float) -> None:
        with s.cond:
            s.cond.wait_for(lambda: s.state != USER_ACCEPTED and s.state != "AUTHENTICATING",
                            wait_s)

    def _refusal(self, s: Session) -> KmError:
        reason = s.reason or "session terminated"
        if reason.startswith("not authorised") or "not authorised" in reason:
            return KmError("unauthorized", reason, status004=10)
        return KmError("refused", f"request refused by the control plane: {reason}",
                       status004=7 if s.qos.get("counter_qos") else 4,
                       extra={"qos": s.qos.get("counter_qos")} if s.qos.get("counter_qos")
                       else None)

    # -- ETSI 014 ----------------------------------------------------------------------------

    def open_014(self, ident: Identity, slave: str, priority: int | None) -> Session:
        sid = session_id_014(ident.cn, slave)
        pr = self.cfg.default_priority if priority is None else priority

        def factory() -> Session:
            return Session(session_id=sid, api="014", local_sae_id=ident.cn, peer_sae_id=slave,
                           key_size=self.cfg.key_size, priority=pr, apps={ident.cn: "src"})

        s, created = self.sessions.get_or_create(sid, factory)
        if created:
            qos: dict[str, Any] = {"key_chunk_size": self.cfg.key_size // 8,
                                   "timeout": int(self.cfg.control_timeout_s * 1000)}
            if priority is not None:
                qos["priority"] = priority
            self._establish(s, ident, slave, "014", qos, self.cfg.control_timeout_s)
        else:
            self._wait_live(s, self.cfg.control_timeout_s)
        if s.state == USER_ACCEPTED:
            self.sessions.transition(s, TERMINATED, "admission control did not configure the"
                                     " session in time")
            self.control.close_request(sid, "timeout")
            raise KmError("unavailable", "admission control did not configure the session in"
                          " time")
        if s.state == TERMINATED:
            raise self._refusal(s)
        if s.role != "source":
            raise KmError("refused", f"this KM is not the source of session {sid}")
        return s

    @staticmethod
    def _sla_key_bits(s: Session) -> int | None:
        cap = s.qos.get("sla_max_key_size")
        return cap if isinstance(cap, int) and not isinstance(cap, bool) else None

    def status_014(self, ident: Identity, slave: str) -> dict[str, Any]:
        s = self.open_014(ident, slave, None)
        e = self.forwarding.get(s.session_id)
        ready = self.store.ready_count(s.session_id, "src", s.key_size)
        link_bytes = 0
        if e and e.next_hop and self._next_link_alarm(s) is None:  # none usable under alarm
            link_bytes = self.pool_by_peer[e.next_hop].own_bytes()
        lim = self.cfg.limits
        return {
            "source_KME_ID": self.node,
            # peer_km comes with the configuration (or the first relay acknowledgement)
            "target_KME_ID": s.peer_km or (e.next_hop if e and e.next_hop else self.node),
            "master_SAE_ID": ident.cn, "slave_SAE_ID": slave,
            "key_size": s.key_size,
            "stored_key_count": ready + link_bytes // (s.key_size // 8 + rl.MAC_KEY_BYTES),
            "max_key_count": lim.max_key_count,
            "max_key_per_request": lim.max_keys_per_request,
            "max_key_size": min(lim.max_key_size, self._sla_key_bits(s) or lim.max_key_size),
            "min_key_size": lim.min_key_size,
            "max_SAE_ID_count": 0,
            "status_extension": {"session_id": s.session_id, "priority": s.priority,
                                 "state": s.state},
        }

    def enc_keys(self, ident: Identity, slave: str, number: int, size: int | None,
                 priority: int | None) -> list[E2EKey]:
        s = self.open_014(ident, slave, priority)
        size = s.key_size if size is None else size
        cap = self._sla_key_bits(s)
        if cap is not None and size > cap:
            raise KmError("bad_request", f"size {size} exceeds the {cap} bits the SLA of user"
                          f" {s.user} allows", [{"max_key_size": cap}])
        bits = number * size
        if s.bucket is not None and not s.bucket.take(bits):
            wait = s.bucket.retry_after(bits)
            self.metrics.refused.labels(reason="token_bucket").inc()
            if math.isinf(wait):
                raise KmError("bad_request", f"request of {bits} bits exceeds the session's"
                              f" token bucket of {int(s.bucket.size)} bits")
            raise KmError("rate", "key request rate exceeds the session's token bucket",
                          [{"retry_after_s": round(wait, 3),
                            "rate_bps": s.bucket.rate, "size_bits": s.bucket.size}])
        self._begin_exchange(s)
        try:
            keys = self._take_src(s, number, size, ident.cn)
            if not keys:
                if s.bucket is not None:
                    s.bucket.give_back(bits)
                self.metrics.refused.labels(reason="insufficient").inc()
                raise KmError("insufficient", "not enough key available for this SAE pair"
                              " right now; retry later")
        finally:
            self._end_exchange(s)
        self.control.key_request(s.session_id, bits)
        self.control.event("keys_delivered", s.session_id, gate_s=0.2, api="014",
                           sae_id=ident.cn, number=number, size=size)
        self.metrics.delivered.labels(api="014").inc(number)
        self._maybe_prefetch(s)
        return keys

    # ready (prefetched) ETSI 014 keys of a session's default size, counted in memory so that
    # the hot path does not count rows; loaded from the store on first use
    def _ready_014(self, s: Session) -> int:
        with self._ready_lock:
            n = self._ready.get(s.session_id)
        if n is None:
            n = self.store.ready_count(s.session_id, "src", s.key_size)
            with self._ready_lock:
                self._ready.setdefault(s.session_id, n)
        return n

    def _ready_add(self, s: Session, size: int, n: int) -> None:
        if s.api == "014" and size == s.key_size:
            with self._ready_lock:
                if s.session_id in self._ready:
                    self._ready[s.session_id] += n

    def _take_ready(self, s: Session, size: int, number: int, sae: str) -> list[E2EKey]:
        keys = self.store.take_ready(s.session_id, size, number, sae)
        if keys:
            self._ready_add(s, size, -len(keys))
        return keys

    def _take_src(self, s: Session, number: int, size: int, sae: str) -> list[E2EKey]:
        keys = self._take_ready(s, size, number, sae)
        deadline = time.monotonic() + self.cfg.request_wait_s
        relay_failed = False
        while not keys:
            left = deadline - time.monotonic()
            if left <= 0 or not s.live:
                if relay_failed:
                    raise KmError("unavailable", "the relay of keys towards the slave's KM"
                                  " did not go through in time; retry later")
                return []
            extra = self.cfg.prefetch_keys if size == s.key_size else 0
            job = self._produce(s, number + extra, size, prefetch=False)
            if not job.done.wait(left):
                job.cancelled = True
                return []
            if job.error is not None:
                log.warning("key production failed: %s", job.error,
                            extra={"session_id": s.session_id})
                if isinstance(job.error, KmError) and job.error.kind == "unavailable" \
                        and job.error.message.startswith("relay to "):
                    # a hop further on could not relay (no link key there yet, a KM
                    # restarting): the keys stay pending and are sent again; wait like for
                    # key, and never show the application the path's internal addresses
                    relay_failed = True
                elif isinstance(job.error, KmError) and job.error.kind != "insufficient":
                    raise job.error
                time.sleep(0.05)
            keys = self._take_ready(s, size, number, sae)
        return keys

    def dec_keys(self, ident: Identity, master: str, key_ids: list[str]) -> list[E2EKey]:
        if ident.ou != "sae":
            raise KmError("unauthorized", "client certificate is not an application (SAE)"
                          " certificate")
        owners = {self.store.owner_of(k) for k in key_ids} - {None}
        if any(o[1] != ident.cn for o in owners):  # keys exist but were made for someone else
            self.metrics.refused.labels(reason="wrong_slave").inc()
            raise KmError("unauthorized", f"SAE {ident.cn} is not the slave SAE these keys"
                          " were made for")
        self.authenticate(ident, master)
        try:
            keys = self.store.take_by_ids(master, ident.cn, key_ids)
        except WrongOwner:
            raise KmError("unauthorized", f"SAE {ident.cn} is not the slave SAE these keys"
                          " were made for") from None
        except NotFound:
            details = []
            for k in key_ids:
                w = self.store.withdrawal(k, "dst")
                if w is not None:
                    details.append({"key_ID": k, "withdrawn": True, "link": w.link,
                                    "alarm": w.kind, "since": w.since,
                                    "message": self._withdrawn_message(f"key {k}", w)})
            raise KmError("bad_request", "one or more keys specified are not found on KME",
                          details) from None
        for sid in {k.session_id for k in keys}:
            s = self.sessions.get(sid)
            if s is not None:
                s.touch()
        self.control.event("keys_delivered", keys[0].session_id, gate_s=0.2, api="014",
                           sae_id=ident.cn, number=len(keys), side="slave")
        self.metrics.delivered.labels(api="014").inc(len(keys))
        return keys

    # -- ETSI 004 ----------------------------------------------------------------------------

    def open_connect(self, ident: Identity, source: str, destination: str,
                     qos: dict[str, Any], stream_id: str | None) -> OpenResult:
        if ident.cn not in (source, destination):
            raise KmError("unauthorized", f"SAE {ident.cn} is neither source nor destination",
                          status004=10)
        peer = destination if ident.cn == source else source
        sid = stream_id or str(uuid.uuid4())
        chunk = int(qos.get("key_chunk_size") or self.cfg.key_size // 8)
        wait_s = min(self.cfg.request_wait_s, (qos.get("timeout") or 1000) / 1000.0)
        existing = self.sessions.get(sid)
        if existing is not None and existing.state != TERMINATED:
            s = existing
            if ident.cn in s.apps or s.api != "004":
                return OpenResult(5, s, "key_stream_id already in use")
            if not (s.local_sae_id in (ident.cn, peer) and s.peer_sae_id in (ident.cn, peer)):
                return OpenResult(5, s, "key_stream_id already in use")
            # the second application of a pair on this KM (or config came first)
            self.authenticate(ident, peer, sid)
            s.apps[ident.cn] = "?"
            if s.live:
                return OpenResult(0, s, "connected")
            try:
                self.control.config_request(sid, s.user or ident.o or "", ident.cn, peer, "004",
                                            self._qos_out(qos, chunk))
            except ControlUnavailable as exc:
                raise KmError("unavailable", str(exc), status004=4) from None
            self._wait_live(s, wait_s)
        else:
            s = Session(session_id=sid, api="004", local_sae_id=ident.cn, peer_sae_id=peer,
                        key_size=chunk * 8, priority=int(qos.get("priority",
                                                                 self.cfg.default_priority)),
                        qos=dict(qos), apps={ident.cn: "?"})
            self.sessions.put(s)
            self._establish(s, ident, peer, "004", self._qos_out(qos, chunk), wait_s)
        if s.state == TERMINATED:
            err = self._refusal(s)
            if err.status004 == 7:
                return OpenResult(7, s, err.message)
            raise err
        if s.live:
            return OpenResult(0, s, "connected")
        return OpenResult(1, s, "connected; peer application not connected yet")

    @staticmethod
    def _qos_out(qos: dict[str, Any], chunk: int) -> dict[str, Any]:
        out = {k: qos[k] for k in ("max_bps", "min_bps", "jitter", "priority", "timeout", "ttl")
               if k in qos}
        out["key_chunk_size"] = chunk
        return out

    def _side(self, s: Session, sae: str) -> str:
        if s.role == "source" and sae == s.local_sae_id:
            return "src"
        return "dst"

    def get_key(self, ident: Identity, sid: str, index: int | None,
                meta_size: int | None) -> dict[str, Any]:
        s = self.sessions.get(sid)
        if s is None or ident.cn not in s.apps:
            raise KmError("not_found", f"no key stream {sid} open for SAE {ident.cn}",
                          status004=10)
        if s.state == TERMINATED:
            return {"status": 4, "message": f"key stream closed: {s.reason}"}
        if not s.live:
            return {"status": 3, "message": "peer application not yet connected"}
        side = self._side(s, ident.cn)
        pos_name = f"pos:{sid}:{side}"
        for _ in range(8):  # the next position moves on while its chunk is withdrawn
            out = self._get_chunk(s, ident, side, pos_name, index, meta_size)
            if out is not None:
                return out
        return {"status": 2, "message": "insufficient key available"}

    def _get_chunk(self, s: Session, ident: Identity, side: str, pos_name: str,
                   index: int | None, meta_size: int | None) -> dict[str, Any] | None:
        """One GET_KEY attempt; None when the next position's chunk was withdrawn while
        waiting for it (ask again for the next one)."""
        sid = s.session_id
        if index is None:  # withdrawn indexes are skipped alike on both sides
            idx = self.store.next_index(sid, side, self.store.counter(pos_name))
        else:
            idx = index
            front = max(self.store.max_idx(sid), self.store.counter(pos_name))
            if idx > front + MAX_RUN_AHEAD:
                # it would make the source relay (and block its link for) that many chunks
                raise KmError("bad_request", f"index {idx} is more than {MAX_RUN_AHEAD} chunks"
                              f" ahead of the key stream (at {front})", status004=10)
        key_id = f"{sid}:{idx}"
        w = self.store.withdrawal(key_id, side)
        if w is not None:
            raise KmError("gone", self._withdrawn_message(f"key at index {idx}", w),
                          [{"index": idx, "link": w.link, "alarm": w.kind, "since": w.since}],
                          status004=10)
        if self.store.was_delivered(key_id, side):
            raise KmError("conflict", f"key at index {idx} was already delivered",
                          status004=10)
        meta = {"index": idx, "size_bits": s.key_size, "session_id": sid}
        meta_len = len(json.dumps(meta))
        if meta_size is not None and meta_size < meta_len:
            return {"status": 8, "message": "metadata buffer too small",
                    "metadata": {"size": meta_len}}
        bits = s.key_size
        if s.bucket is not None and not s.bucket.take(bits):
            self.metrics.refused.labels(reason="token_bucket").inc()
            return {"status": 9, "message": "rate limited by the session's token bucket"
                    " (non-ETSI status)", "retry_after_s": round(s.bucket.retry_after(bits), 3)}
        self._begin_exchange(s)
        try:
            chunk = self._take_chunk(s, side, idx, ident.cn, s.qos.get("timeout"))
        finally:
            self._end_exchange(s)
        if chunk is None:
            if s.bucket is not None:
                s.bucket.give_back(bits)
            if self.store.withdrawal(key_id, side) is not None:
                if index is None:
                    return None
                return self._get_chunk(s, ident, side, pos_name, index, meta_size)  # -> 410
            return {"status": 2, "message": "insufficient key available", "index": idx}
        with self.store.tx() as db:
            cur = self.store.counter(pos_name)
            if idx >= cur:
                self.store.bump(db, pos_name, idx + 1 - cur)
        self.control.key_request(sid, bits)
        self.control.event("keys_delivered", sid, gate_s=0.2, api="004", sae_id=ident.cn,
                           index=idx)
        self.metrics.delivered.labels(api="004").inc()
        if side == "src":
            self._maybe_prefetch(s)
        return {"status": 0, "key_buffer": base64.b64encode(chunk.key).decode(), "index": idx,
                "metadata": meta}

    def _take_chunk(self, s: Session, side: str, idx: int, sae: str,
                    timeout_ms: Any) -> E2EKey | None:
        wait = self.cfg.request_wait_s
        if isinstance(timeout_ms, int | float) and timeout_ms > 0:
            wait = min(wait, timeout_ms / 1000.0)
        deadline = time.monotonic() + wait
        chunk = self.store.take_chunk(s.session_id, side, idx, sae)
        asked = False
        while chunk is None and time.monotonic() < deadline and s.live:
            if not asked:
                asked = True
                self._demand_chunks(s, idx)
            with self._arrivals:
                self._arrivals.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            chunk = self.store.take_chunk(s.session_id, side, idx, sae)
            if chunk is None and self.store.withdrawal(f"{s.session_id}:{idx}", side):
                break
        return chunk

    def _demand_chunks(self, s: Session, idx: int) -> None:
        """Make sure chunks up to ``idx`` are (being) produced: locally at the source, else by
        asking the previous hop, which passes the demand on towards the source."""
        e = self.forwarding.get(s.session_id)
        if e is None:
            return
        if e.role == "source":
            have = self.store.max_idx(s.session_id)
            if idx > have:
                self._produce(s, idx - have + self.cfg.prefetch_chunks, s.key_size,
                              prefetch=False)
            return
        if e.prev_hop is None:
            return
        pool = self.pool_by_peer[e.prev_hop]
        try:
            self.peers.post(f"{pool.lc.peer_url}/kmapi/v1/demand",
                            {"session_id": s.session_id, "from_km": self.node, "index": idx},
                            timeout=2)
        except PeerError as exc:
            log.warning("demand towards %s failed: %s", e.prev_hop, exc)

    def demand(self, caller: str, sid: str, idx: int) -> None:
        """A next hop asks for chunks up to ``idx`` of a stream."""
        e = self._entry(sid)
        if e is None or e.next_hop != caller:
            raise KmError("forbidden", f"{caller} is not the next hop of session {sid}")
        s = self.sessions.get(sid)
        if s is None or not s.live:
            raise KmError("not_found", f"session {sid} is not live here")
        if e.role == "source":
            with self._demand_lock:
                if self._demanded.get(sid, -1) >= idx:
                    return
                self._demanded[sid] = idx
            self._demand_chunks(s, idx)
        else:
            self._demand_chunks(s, idx)

    def close(self, ident: Identity, sid: str) -> dict[str, Any]:
        s = self.sessions.get(sid)
        if s is None or ident.cn not in s.apps:
            raise KmError("not_found", f"no key stream {sid} open for SAE {ident.cn}",
                          status004=10)
        s.apps.pop(ident.cn, None)
        self.control.close_request(sid, "closed")
        if not s.apps:
            self.sessions.transition(s, TERMINATED, "closed by the application")
            self._release(s)
        return {"status": 0, "message": "closed"}

    # -- key production at the source (runs in the link's priority scheduler) ---------------

    def _produce(self, s: Session, n: int, size: int, prefetch: bool) -> Job:
        e = self.forwarding.get(s.session_id)
        if e is not None and e.next_hop in self.pool_by_peer:
            # one job never needs more than a quarter of what the link's pool can hold (a
            # bigger one would wait at the head of the queue for ever); callers ask again
            pool = self.pool_by_peer[e.next_hop]
            fit = pool.pc.max_keys * pool.key_bytes // 4 // (size // 8 + rl.MAC_KEY_BYTES)
            n = max(1, min(n, fit))

        def run() -> int:
            return self._make_keys(s, n, size)

        alarm = self._next_link_alarm(s)
        if alarm is not None:  # nothing to make until admission re-routes or the alarm clears
            job = Job(priority=s.priority, prefetch=prefetch, session_id=s.session_id,
                      need_bytes=0, run=run)
            job.error = KmError("unavailable", f"{alarm.describe()}: no key is relayed over it;"
                                " waiting for the control plane to re-route the session")
            job.done.set()
            return job

        if e is None or e.next_hop is None:  # both applications on this KM
            job = Job(priority=s.priority, prefetch=prefetch, session_id=s.session_id,
                      need_bytes=0, run=run)
            job.sort_key = ()
            try:
                job.result = run()
            except Exception as exc:
                job.error = exc
            job.done.set()
            return job
        pool = self.pool_by_peer[e.next_hop]
        need = n * size // 8 + rl.MAC_KEY_BYTES
        need = math.ceil(need / pool.key_bytes) * pool.key_bytes
        return self.schedulers[pool.link].submit(Job(
            priority=s.priority, prefetch=prefetch, session_id=s.session_id, need_bytes=need,
            run=run, alive=lambda: s.live))

    def _maybe_prefetch(self, s: Session) -> None:
        if not s.live or s.role != "source":
            return
        if s.api == "004":
            target = self.cfg.prefetch_chunks
            ahead = self.store.ready_count(s.session_id, "src")
            size = s.key_size
        else:
            target = self.cfg.prefetch_keys
            ahead = self._ready_014(s)
            size = s.key_size
        if target <= 0 or ahead >= (target + 1) // 2 or s.prefetching:
            return
        s.prefetching = True
        job = self._produce(s, target - ahead, size, prefetch=True)

        def clear() -> None:
            job.done.wait()
            s.prefetching = False
        threading.Thread(target=clear, daemon=True).start()

    def _make_keys(self, s: Session, n: int, size: int) -> int:
        done = 0
        while done < n:  # bounded messages: at most RELAY_BATCH keys each
            done += self._make_batch(s, min(RELAY_BATCH, n - done), size)
        return done

    def _make_batch(self, s: Session, n: int, size: int) -> int:
        if not s.live:
            raise KmError("refused", "session no longer live")
        e = self.forwarding.get(s.session_id)
        if e is None or e.role != "source":
            raise KmError("refused", "this KM is not the source of the session")
        alarm = self._next_link_alarm(s)
        if alarm is not None:
            raise KmError("unavailable", f"{alarm.describe()}: no key is relayed over it")
        with self.store.tx() as db:
            first = self.store.bump(db, f"idx:{s.session_id}", n)
            keys = []
            for i in range(n):
                idx = first + i
                kid = f"{s.session_id}:{idx}" if s.api == "004" else str(uuid.uuid4())
                keys.append(E2EKey(kid, s.session_id, idx, size, s.local_sae_id or "",
                                   s.peer_sae_id or "", os.urandom(size // 8)))
            if e.next_hop is not None:
                # pending until acknowledged, in the same transaction as the index bump: a
                # failed relay or a killed KM leaves them here to be sent again, never a gap
                self.store.put_e2e(db, "pend", keys)
        if e.next_hop is None:
            with self.store.tx() as db:
                self.store.put_e2e(db, "dst", keys)
                self.store.put_e2e(db, "src", keys)
            self._ready_add(s, size, n)
            s.peer_km = self.node
            with self._arrivals:
                self._arrivals.notify_all()
            return n
        try:
            self._relay(s, e.next_hop, keys)
        except KmError as exc:
            if exc.kind == "insufficient" and s.api == "014":
                # nothing left this KM and ETSI 014 key IDs carry no index: forget them
                # instead of piling up pending keys while the link pool is short
                self.store.drop_keys([k.key_id for k in keys], "pend")
            raise
        return n

    def _relay(self, s: Session, next_hop: str, keys: list[E2EKey], retry: bool = False
               ) -> None:
        """Send pending keys towards the destination; on its acknowledgement they become
        ready. Every attempt (also a retry) encrypts with fresh link key."""
        t0 = time.monotonic()
        header = {"session_id": s.session_id, "source_km": self.node, "api": s.api,
                  "initiator_sae_id": s.local_sae_id or "",
                  "target_sae_ids": [s.peer_sae_id or ""]}
        sid = s.session_id
        with self._relay_lock:
            self._inflight[sid] = self._inflight.get(sid, 0) + 1
        try:
            ack = self._send_hop(header, next_hop, keys)
        except KmError:
            with self._relay_lock:
                first, _ = self._retry_at.get(sid, (0.0, 0.0))
                if first == 0.0:  # the first failure: retry after the shortest wait
                    self._retry_at[sid] = (time.monotonic() + RELAY_RETRY_S[0],
                                           min(RELAY_RETRY_S[0] * 2, RELAY_RETRY_S[1]))
            raise
        finally:
            with self._relay_lock:
                self._inflight[sid] -= 1
                if not self._inflight[sid]:
                    del self._inflight[sid]
        self._acknowledged(s, self.pool_by_peer[next_hop].link, keys, ack)
        if ack.get("destination_km"):
            with s.cond:
                s.peer_km = ack["destination_km"]
                s.cond.notify_all()
        self.metrics.relay_seconds.observe(time.monotonic() - t0)
        self.control.event("relay_ack", sid, keys=len(keys), destination_km=s.peer_km,
                           ms=round((time.monotonic() - t0) * 1000, 2), retry=retry)
        with self._arrivals:
            self._arrivals.notify_all()

    def _acknowledged(self, s: Session, first_link: str, keys: list[E2EKey],
                      ack: dict[str, Any]) -> None:
        """Pending keys the destination acknowledged become ready with their route, unless
        the route crossed a link under a QBER alarm here, or the destination says it
        withdrew them (a retry of keys whose first copy crossed such a link)."""
        route = ack.get("route")
        if not (isinstance(route, list) and route and all(isinstance(x, str) and x and "|" not
                                                          in x for x in route)):
            route = [first_link]  # a destination without route tracking
        elif route[0] != first_link:
            log.warning("acknowledged route %s does not start with %s", route, first_link,
                        extra={"session_id": s.session_id})
        gone: dict[str, tuple[str, str]] = {}
        for w in ack.get("withdrawn_key_IDs") or []:
            if isinstance(w, dict) and isinstance(w.get("key_ID"), str):
                gone[w["key_ID"]] = (str(w.get("link") or ""), str(w.get("alarm") or ""))
        ws: list[Withdrawal] = []
        for link, kind in set(gone.values()):
            a = self.alarms.get(link)
            ws += self.store.withdraw_keys([k for k, lk in gone.items() if lk == (link, kind)],
                                           "pend", link, kind or (a.kind if a else "qber_high"),
                                           a.since if a else time.time())
        keys = [k for k in keys if k.key_id not in gone]
        if keys and self.store.acknowledge([k.key_id for k in keys], via_text(route)):
            for size in {k.size for k in keys}:
                self._ready_add(s, size, sum(1 for k in keys if k.size == size))
        # checked after the commit: an alarm that came in meanwhile either shows here or its
        # withdraw_route already found these keys
        alarm = self.alarms.first_in(route)
        if keys and alarm is not None and alarm.kind in COMPROMISED:
            ws += self.store.withdraw_keys([k.key_id for k in keys], "src", alarm.link,
                                           alarm.kind, alarm.since)
        self._withdraw(ws)

    def _retry_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._retry_relays()
            except Exception:
                log.exception("relay retry failed")

    def _retry_relays(self) -> None:
        """Send unacknowledged relays again (after a failed attempt or a restart), with a
        growing wait per session while its next hop keeps failing."""
        now = time.monotonic()
        # keys younger than the first wait may still be on their first attempt
        born_before = time.time() - RELAY_RETRY_S[0]
        for sid in self.store.pending_sessions(born_before):
            with self._relay_lock:
                if self._inflight.get(sid):
                    continue
                at, wait = self._retry_at.get(sid, (0.0, RELAY_RETRY_S[0]))
                if at > now:
                    continue
                self._retry_at[sid] = (now + wait, min(wait * 2, RELAY_RETRY_S[1]))
            s = self.sessions.get(sid)
            e = self.forwarding.get(sid)
            if s is None or s.state == TERMINATED:
                self.store.drop_session_keys(sid, "pend")
                continue
            if not s.live or e is None or e.role != "source" or e.next_hop is None:
                continue
            keys = self.store.pending_keys(sid, RELAY_BATCH, born_before)
            if not keys:
                continue
            try:
                self._relay(s, e.next_hop, keys, retry=True)
            except KmError as exc:
                log.warning("relay retry of %d key(s) failed: %s", len(keys), exc.message,
                            extra={"session_id": sid})
                continue
            with self._relay_lock:
                self._retry_at.pop(sid, None)
            log.info("relay retry of %d key(s) acknowledged", len(keys),
                     extra={"session_id": sid})

    def _send_hop(self, header: dict[str, Any], next_hop: str, keys: list[E2EKey]
                  ) -> dict[str, Any]:
        pool = self.pool_by_peer[next_hop]
        alarm = self.alarms.get(pool.link)
        if alarm is not None:
            raise KmError("unavailable", f"{alarm.describe()}: no relay is sent over it")
        values = [k.key for k in keys]
        need = rl.pad_bytes_needed(values)
        nkeys = math.ceil(need / pool.key_bytes)
        with self.store.tx() as db:
            taken = self.store.take_own_link_keys(db, pool.link, self.node, nkeys)
        if not taken:
            raise KmError("insufficient", f"not enough link key on {pool.link}")
        pad = b"".join(v for _, v in taken)
        hdr = {**header, "from_km": self.node, "to_km": next_hop, "link": pool.link,
               "link_key_IDs": [k for k, _ in taken],
               "route": [*header.get("route", []), pool.link]}
        entries = [{"key_ID": k.key_id, "index": k.idx, "size": k.size} for k in keys]
        msg = rl.seal(hdr, entries, values, pad)
        self.metrics.relay.labels(step="send").inc()
        self.control.event("relay_send", header["session_id"], to_km=next_hop, link=pool.link,
                           keys=len(keys), link_keys=len(taken))
        try:
            return self.peers.post(f"{pool.lc.peer_url}/kmapi/v1/ext_keys", msg,
                                   timeout=self.cfg.request_wait_s)
        except PeerError as exc:
            raise KmError("unavailable", f"relay to {next_hop} failed: {exc}") from None

    # -- KM-to-KM in -------------------------------------------------------------------------

    def ext_keys(self, caller: str, msg: Any) -> dict[str, Any]:
        msg = rl.validate_message(msg)
        sid, link = msg["session_id"], msg["link"]
        pool = self.pools.get(link)
        if msg["from_km"] != caller or msg["to_km"] != self.node or pool is None \
                or pool.lc.peer != caller:
            raise rl.RelayError(403, f"{caller} may not send on link {link} to {self.node}")
        e = self._entry(sid)
        if e is None:
            raise rl.RelayError(409, f"no forwarding entry for session {sid}")
        if e.prev_hop != caller:
            raise rl.RelayError(403, f"{caller} is not the previous hop of session {sid}")
        try:
            with self.store.tx() as db:
                pads = self.store.take_peer_link_keys(db, link, caller, msg["link_key_IDs"])
        except NotFound as exc:
            raise rl.RelayError(400, str(exc)) from None
        values = rl.open_sealed(msg, b"".join(pads))
        for k, v in zip(msg["keys"], values, strict=True):
            if k["size"] != len(v) * 8:
                raise rl.RelayError(400, f"key {k['key_ID']} is not {k['size']} bits")
        # checked once the MAC has proven the route; the link keys are used up either way
        route = rl.route_of(msg)
        alarm = self.alarms.first_in(route)
        if alarm is not None:
            self.metrics.refused.labels(reason="link_alarm").inc()
            self.control.event("relay_refused", sid, from_km=caller, link=alarm.link,
                               alarm=alarm.kind, route=route)
            if alarm.link == link:
                raise rl.RelayError(503, f"{alarm.describe()}: {self.node} accepts no relay"
                                    " over it until the alarm clears")
            raise rl.RelayError(409, f"the relay crossed link {alarm.link}, under alarm"
                                f" ({alarm.kind}): refused")
        s = self.sessions.get(sid)
        if s is not None:
            s.touch()
        if e.role == "destination":
            if s is not None and s.local_sae_id and msg["target_sae_ids"][0] != s.local_sae_id:
                raise rl.RelayError(403, f"session {sid} ends at {s.local_sae_id}, not at"
                                    f" {msg['target_sae_ids'][0]}")
            via = via_text(route)
            keys = [E2EKey(k["key_ID"], sid, k["index"], k["size"], msg["initiator_sae_id"],
                           msg["target_sae_ids"][0], v, via)
                    for k, v in zip(msg["keys"], values, strict=True)]
            try:
                new, gone = self.store.receive(keys)
            except KeyConflict as exc:
                raise rl.RelayError(409, f"key {exc} already present with another value"
                                    ) from None
            dup = len(keys) - new - len(gone)
            alarm = self.alarms.first_in(route)  # one that came in while storing (see above)
            if alarm is not None and alarm.kind in COMPROMISED:
                late = self.store.withdraw_keys([k.key_id for k in keys], "dst", alarm.link,
                                                alarm.kind, alarm.since)
                self._withdraw(late)
                gone += late
            with self._arrivals:
                self._arrivals.notify_all()
            self.metrics.relay.labels(step="receive").inc()
            # a retried relay (its acknowledgement was lost): keys already held or delivered
            # are acknowledged again, never stored or delivered twice
            self.control.event("relay_receive", sid, from_km=caller, keys=len(keys),
                               indexes=[k.idx for k in keys],
                               source_km=msg["source_km"], duplicates=dup,
                               withdrawn=len(gone), route=route)
            gone_ids = {w.key_id for w in gone}
            return {"ack": True, "destination_km": self.node, "route": route,
                    "key_IDs": [{"key_ID": k.key_id} for k in keys if k.key_id not in gone_ids],
                    "withdrawn_key_IDs": [{"key_ID": w.key_id, "link": w.link,
                                           "alarm": w.kind} for w in gone]}
        if e.role == "transit" and e.next_hop:
            self.metrics.relay.labels(step="forward").inc()
            self.control.event("relay_forward", sid, from_km=caller, to_km=e.next_hop,
                               keys=len(values))
            keys = [E2EKey(k["key_ID"], sid, k["index"], k["size"], "", "", v)
                    for k, v in zip(msg["keys"], values, strict=True)]
            header = {k: msg[k] for k in ("session_id", "source_km", "api", "initiator_sae_id",
                                          "target_sae_ids")}
            header["route"] = route
            try:
                return self._send_hop(header, e.next_hop, keys)
            except KmError as exc:
                raise rl.RelayError(503, exc.message) from None
        raise rl.RelayError(409, f"{self.node} is the {e.role} of session {sid}")

    def _entry(self, sid: str) -> Entry | None:
        """The forwarding entry of a session a neighbour names. Unknown here (e.g. its
        session_config was published while this KM was down or not yet subscribed): ask
        admission to send it again, and wait for it a while."""
        e = self.forwarding.get(sid)
        if e is not None:
            return e
        now = time.monotonic()
        with self._relay_lock:
            ask = now - self._resync_at.get(sid, -RESYNC_GAP_S) >= RESYNC_GAP_S
            if ask:
                if len(self._resync_at) > 1000:
                    self._resync_at = {k: t for k, t in self._resync_at.items()
                                       if now - t < RESYNC_GAP_S}
                self._resync_at[sid] = now
        if ask:
            self.control.config_resync(sid)
        return self.forwarding.wait(sid, self.cfg.control_timeout_s)

    def link_keys(self, caller: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("link"), str):
            raise KmError("bad_request", "link_keys body needs link and keys")
        pool = self.pools.get(body["link"])
        if pool is None or pool.lc.peer != caller or pool.lc.side != "b":
            raise KmError("forbidden", f"{caller} may not announce keys of {body['link']}")
        keys = body.get("keys")
        if not isinstance(keys, list) or not all(
                isinstance(k, dict) and isinstance(k.get("key_ID"), str)
                and k.get("owner") in (self.node, caller) for k in keys):
            raise KmError("bad_request", "keys must be a list of {key_ID, owner}")
        try:
            n = pool.receive(keys)
        except PeerError as exc:
            raise KmError("bad_request" if exc.status and exc.status < 500 else "unavailable",
                          f"module: {exc}") from None
        return {"ok": True, "stored": n}

    # -- housekeeping ------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        last_slow = 0.0
        while not self._stop.wait(0.25):
            try:
                now = time.monotonic()
                for s in self.sessions.all():
                    if (s.live and s.apps and s.state == OPERATIVE
                            and now - s.last_activity > s.timeout_s):
                        if self.sessions.transition(s, TERMINATED, "timeout"):
                            self.control.close_request(s.session_id, "timeout")
                            self._release(s)
                if now - last_slow > 5.0:
                    last_slow = now
                    self.sessions.purge()
                    self.store.expire_e2e(time.time() - self.cfg.undelivered_ttl_s)
                    # delivery records outlive the keys they guard by a day
                    self.store.prune_records(time.time() - self.cfg.undelivered_ttl_s - 86400)
                    counts = self.sessions.counts()
                    for state in (OPERATIVE, KEY_EXCHANGING, USER_ACCEPTED, TERMINATED):
                        self.metrics.sessions.labels(state=state).set(counts.get(state, 0))
                    for link, pool in self.pools.items():
                        n = sum(1 for e in self.forwarding.snapshot().values()
                                if e.next_hop == pool.lc.peer or e.prev_hop == pool.lc.peer)
                        self.control.telemetry(link, pool_bits=pool.level_bits(), sessions=n,
                                               status=pool.status)
            except Exception:
                log.exception("housekeeping failed")
