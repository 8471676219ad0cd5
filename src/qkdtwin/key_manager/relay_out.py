"""Relay out: pending end-to-end keys sealed with link key and posted to the next hop
(``/kmapi/v1/ext_keys``), the destination's acknowledgement, and the loop that sends
unacknowledged relays again. Transit KMs use :meth:`RelayOut.send_hop` to pass a relay on."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from qkdtwin.key_manager import relay as rl
from qkdtwin.key_manager.alarms import COMPROMISED
from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.keystore import E2EKey, Withdrawal, via_text
from qkdtwin.key_manager.peers import PeerError
from qkdtwin.key_manager.sessions import TERMINATED, Session
from qkdtwin.key_manager.shared import RELAY_RETRY_S, Part, Shared

log = logging.getLogger("qkdtwin.key_manager")
RELAY_BATCH = 512  # end-to-end keys per relay message


class RelayOut(Part):
    def __init__(self, sh: Shared) -> None:
        super().__init__(sh)
        # accounts for keys the store withdrew (the link alarms' part); set by the coordinator
        self.withdraw: Callable[[list[Withdrawal]], None] = lambda ws: None

    def start(self) -> None:
        threading.Thread(target=self._retry_loop, daemon=True, name="km-relay-retry").start()

    def relay(self, s: Session, next_hop: str, keys: list[E2EKey], retry: bool = False
              ) -> None:
        """Send pending keys towards the destination; on its acknowledgement they become
        ready. Every attempt (also a retry) encrypts with fresh link key."""
        t0 = time.monotonic()
        header = {"session_id": s.session_id, "source_km": self.node, "api": s.api,
                  "initiator_sae_id": s.local_sae_id or "",
                  "target_sae_ids": [s.peer_sae_id or ""]}
        sid = s.session_id
        self.retries.begin(sid)
        try:
            ack = self.send_hop(header, next_hop, keys)
        except KmError:
            self.retries.failed(sid)
            raise
        finally:
            self.retries.end(sid)
        self._acknowledged(s, self.pool_by_peer[next_hop].link, keys, ack)
        if ack.get("destination_km"):
            with s.cond:
                s.peer_km = ack["destination_km"]
                s.cond.notify_all()
        self.metrics.relay_seconds.observe(time.monotonic() - t0)
        self.control.event("relay_ack", sid, keys=len(keys), destination_km=s.peer_km,
                           ms=round((time.monotonic() - t0) * 1000, 2), retry=retry)
        self.sh.notify_arrivals()

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
                self.ready.add(s, size, sum(1 for k in keys if k.size == size))
        # checked after the commit: an alarm that came in meanwhile either shows here or its
        # withdraw_route already found these keys
        alarm = self.alarms.first_in(route)
        if keys and alarm is not None and alarm.kind in COMPROMISED:
            ws += self.store.withdraw_keys([k.key_id for k in keys], "src", alarm.link,
                                           alarm.kind, alarm.since)
        self.withdraw(ws)

    def _retry_loop(self) -> None:
        while not self.sh.stop.wait(0.5):
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
            if not self.retries.due(sid, now):
                continue
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
                self.relay(s, e.next_hop, keys, retry=True)
            except KmError as exc:
                log.warning("relay retry of %d key(s) failed: %s", len(keys), exc.message,
                            extra={"session_id": sid})
                continue
            self.retries.forget(sid)
            log.info("relay retry of %d key(s) acknowledged", len(keys),
                     extra={"session_id": sid})

    def send_hop(self, header: dict[str, Any], next_hop: str, keys: list[E2EKey]
                 ) -> dict[str, Any]:
        """Seal ``keys`` with fresh link key towards ``next_hop`` and post them; its answer."""
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
        self.store.durable()  # the pad's keys stay used after a host crash: never a second pad
        try:
            return self.peers.post(f"{pool.lc.peer_url}/kmapi/v1/ext_keys", msg,
                                   timeout=self.cfg.request_wait_s)
        except PeerError as exc:
            raise KmError("unavailable", f"relay to {next_hop} failed: {exc}") from None
