"""The Key Manager's coordinator: it builds the shared state (:class:`shared.Shared`) and
the parts that use it, starts and stops them, and holds what belongs to no single part
(restart recovery, health, persisting sessions and reporting their state changes).

Parts, one job each (the HTTP blueprints call the first three directly):

- ``etsi014``: :class:`service014.Etsi014Service` (status, enc_keys, dec_keys);
- ``etsi004``: :class:`service004.Etsi004Service` (open_connect, get_key, close);
- ``relay_in``: :class:`relay_in.RelayIn`, KM-to-KM input (ext_keys, link_keys, demand);
- ``production``: :class:`production.KeyProduction`, key production at the source and
  prefetch, with ``relay_out``: :class:`relay_out.RelayOut` (relay to the next hop, its
  acknowledgement, the retry loop);
- ``quarantine``: :class:`quarantine.Quarantine`, link alarms (quarantine, withdrawal);
- ``control_in``: :class:`control_in.ControlInput` (session_config, session_delete);
- ``housekeeping``: :class:`housekeeping.Housekeeping` (timeouts, expiry, telemetry);
- ``establish``: :class:`establish.Establishment`, session set-up shared by 014 and 004.

Locking rules
-------------

Which lock guards what:

- ``SessionTable._lock``: the table of sessions (held only inside its methods).
- ``SessionTable._order`` (re-entrant): serialises all state transitions, so that the
  ``session_state`` events leave in the order of the changes. It is held while a transition
  calls back :meth:`KeyManager._save` (a store write) and :meth:`KeyManager._on_state`
  (metrics, an MQTT publish): these callbacks must not take any other KM lock.
- ``Session.cond`` (one per session): the session's state and counters (``exchanging``),
  its configuration fields and ``peer_km``; waited on for state changes (session set-up).
- ``KeyStore._lock`` (re-entrant): the SQLite connection; ``store.tx()`` holds it for one
  transaction.
- ``ForwardingTable._cond``, ``LinkAlarms._lock``, ``ReadyCounts._lock``,
  ``RelayRetries._lock``, ``Control._lock``, ``TokenBucket._lock``, the ``arrivals``
  condition and the parts' own locks (``RelayIn._lock``: config_resync gate and ETSI 004
  demand; ``LinkScheduler._cond``; ``LinkPool._rx_lock``) guard only their own fields.

Lock order: ``SessionTable._order`` → ``Session.cond``; ``SessionTable._order`` → the store,
``Control._lock`` and the bus. Every other lock is a leaf: held only inside its owner's
methods, and nothing else is called while it is held (``LinkPool._rx_lock`` alone spans a
request to the QKD module). Hence:

- never call ``SessionTable.transition`` (or begin/end_exchange) with ``Session.cond`` held;
- never hold a KM lock across an HTTP request to a peer or a module, an MQTT request, or a
  wait for a job — the waits that do block (``Session.cond``, ``arrivals``, the forwarding
  table) are ``Condition.wait`` calls, which release their lock.

Which callbacks run on which threads:

- HTTP worker threads (cheroot, ``threads``): the blueprints and through them the ETSI
  014/004 services and ``relay_in``; a transit's worker waits for the next hop's answer.
- MQTT worker threads (``bus.Bus`` pool): ``control_in.on_config``/``on_delete`` and
  ``quarantine.on_alarm`` (which may withdraw keys and queue a refill).
- ``sched-<link>`` (one per outgoing link): production jobs, i.e. making keys, relaying
  them and handling the acknowledgement (which may withdraw keys and queue a refill).
- ``km-relay-retry``: :meth:`RelayOut._retry_relays`; ``km-timers``: housekeeping;
  ``pool-<link>`` threads: link-key pulls, which call :meth:`KeyManager._pool_changed`.
- Transitions run on whichever thread changes the state; their callbacks run there, under
  ``SessionTable._order``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from qkdtwin.bus import Bus
from qkdtwin.key_manager.alarms import LinkAlarms
from qkdtwin.key_manager.config import KmConfig
from qkdtwin.key_manager.control import Control
from qkdtwin.key_manager.control_in import ControlInput
from qkdtwin.key_manager.establish import Establishment
from qkdtwin.key_manager.forwarding import Entry, ForwardingTable
from qkdtwin.key_manager.housekeeping import Housekeeping
from qkdtwin.key_manager.keystore import KeyStore
from qkdtwin.key_manager.linkpool import LinkPool
from qkdtwin.key_manager.metrics import Metrics
from qkdtwin.key_manager.peers import HttpClient
from qkdtwin.key_manager.production import KeyProduction
from qkdtwin.key_manager.quarantine import Quarantine
from qkdtwin.key_manager.relay_in import RelayIn
from qkdtwin.key_manager.relay_out import RelayOut
from qkdtwin.key_manager.scheduler import LinkScheduler
from qkdtwin.key_manager.service004 import Etsi004Service
from qkdtwin.key_manager.service014 import Etsi014Service
from qkdtwin.key_manager.sessions import (
    KEY_EXCHANGING,
    OPERATIVE,
    TERMINATED,
    Session,
    SessionTable,
)
from qkdtwin.key_manager.shared import ReadyCounts, RelayRetries, Shared

log = logging.getLogger("qkdtwin.key_manager")


class KeyManager:
    def __init__(self, cfg: KmConfig, bus: Bus | None = None) -> None:
        self.cfg = cfg
        self.node = cfg.node
        self.store = KeyStore(cfg.data_dir / "km.sqlite")
        self.metrics = Metrics()
        self.control = Control(cfg.node, bus, cfg.control_timeout_s)
        self.forwarding = ForwardingTable()
        self.sessions = SessionTable(self._on_state, self._save)
        self.alarms = LinkAlarms()
        self.pools: dict[str, LinkPool] = {}
        self.pool_by_peer: dict[str, LinkPool] = {}
        self.schedulers: dict[str, LinkScheduler] = {}
        peers = HttpClient(cfg.ca, cfg.cert, cfg.key, pool=cfg.threads)
        modules = HttpClient(cfg.ca, cfg.cert, cfg.key, pool=4)
        for lc in cfg.links:
            pool = LinkPool(cfg.node, lc, cfg.pool, self.store, peers, modules,
                            self._pool_changed)
            self.pools[lc.link] = pool
            self.pool_by_peer[lc.peer] = pool
            self.schedulers[lc.link] = LinkScheduler(lc.link, pool.own_bytes)
            self.metrics.pool_bits.labels(link=lc.link).set_function(pool.level_bits)
        self._stop = threading.Event()
        sh = self.shared = Shared(
            cfg=cfg, store=self.store, metrics=self.metrics, control=self.control, peers=peers,
            sessions=self.sessions, forwarding=self.forwarding, pools=self.pools,
            pool_by_peer=self.pool_by_peer, schedulers=self.schedulers, alarms=self.alarms,
            ready=ReadyCounts(self.store), retries=RelayRetries(),
            arrivals=threading.Condition(), stop=self._stop)
        self.relay_out = RelayOut(sh)
        self.production = KeyProduction(sh, self.relay_out)
        self.quarantine = Quarantine(sh, refill=self.production.maybe_prefetch)
        self.relay_out.withdraw = self.quarantine.withdraw
        self.establish = Establishment(sh)
        self.etsi014 = Etsi014Service(sh, self.establish, self.production)
        self.etsi004 = Etsi004Service(sh, self.establish, self.production, self.release)
        self.relay_in = RelayIn(sh, self.relay_out, self.quarantine.withdraw,
                                self.etsi004.demand_chunks)
        self.control_in = ControlInput(sh, self.production, self._save, self.release)
        self.housekeeping = Housekeeping(sh, self.release)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KeyManager:
        self._restore()
        for sched in self.schedulers.values():
            sched.start()
        for pool in self.pools.values():
            pool.start()
        self.control.start(self.control_in.on_config, self.control_in.on_delete,
                           self.quarantine.on_alarm, self.control_in.on_revoked,
                           held_sessions=self._held_sessions)
        self.housekeeping.start()
        self.relay_out.start()
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

    def _held_sessions(self) -> list[str]:
        """Live sessions with a forwarding entry here (checked with admission on connect)."""
        return [s.session_id for s in self.sessions.all()
                if s.live and self.forwarding.get(s.session_id) is not None]

    def health(self) -> dict[str, Any]:
        db = self.store.ok()
        return {"ok": db, "node": self.node, "db": db, "broker": self.control.connected,
                "links": {link: {"status": p.status, "pool_bits": p.level_bits()}
                          for link, p in self.pools.items()},
                "sessions": self.sessions.counts(), "alarms": self.alarms.snapshot()}

    # -- shared by the parts -----------------------------------------------------------------

    def _save(self, s: Session) -> None:
        """Persist a session with its forwarding entry (a terminated one is deleted)."""
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

    def _pool_changed(self, link: str) -> None:
        sched = self.schedulers.get(link)
        if sched:
            sched.key_arrived()

    def release(self, s: Session) -> None:
        """Free what a terminated session holds. ETSI 014 keys already made for a slave stay
        until their TTL: the master may have them and pass the IDs on later."""
        if s.api == "004":
            self.store.drop_session_keys(s.session_id)
        else:
            self.store.drop_session_keys(s.session_id, "src")
            self.store.drop_session_keys(s.session_id, "pend")
        self.shared.ready.forget(s.session_id)
        self.shared.notify_arrivals()
