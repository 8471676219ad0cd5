"""KM-to-KM input behind the ``kmapi`` blueprint: relays of end-to-end keys arriving from
the previous hop (stored at the destination, passed on by a transit), link-key
announcements from the ``a`` end of a link, and ETSI 004 chunk demand from the next hop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from qkdtwin.key_manager import relay as rl
from qkdtwin.key_manager.alarms import COMPROMISED
from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.forwarding import Entry
from qkdtwin.key_manager.keystore import E2EKey, KeyConflict, NotFound, Withdrawal, via_text
from qkdtwin.key_manager.peers import PeerError
from qkdtwin.key_manager.relay_out import RelayOut
from qkdtwin.key_manager.sessions import Session
from qkdtwin.key_manager.shared import Part, Shared

RESYNC_GAP_S = 1.0  # at most one config_resync per session and second


class RelayIn(Part):
    def __init__(self, sh: Shared, relay_out: RelayOut,
                 withdraw: Callable[[list[Withdrawal]], None],
                 demand_chunks: Callable[[Session, int], None]) -> None:
        super().__init__(sh)
        self.relay_out = relay_out
        self.withdraw = withdraw
        self.demand_chunks = demand_chunks
        # own bookkeeping (lock held only inside entry() / demand())
        self._lock = threading.Lock()
        self._resync_at: dict[str, float] = {}
        self._demanded: dict[str, int] = {}

    def ext_keys(self, caller: str, msg: Any) -> dict[str, Any]:
        """A relay from ``caller``: the destination's acknowledgement (stored here, or the
        answer of the hop this transit passed it on to)."""
        msg = rl.validate_message(msg)
        e, values, route = self._open(caller, msg)
        s = self.sessions.get(msg["session_id"])
        if s is not None:
            s.touch()
        if e.role == "destination":
            return self._store(caller, msg, s, values, route)
        if e.role == "transit" and e.next_hop:
            return self._forward(caller, msg, e.next_hop, values, route)
        raise rl.RelayError(409, f"{self.node} is the {e.role} of session {msg['session_id']}")

    def _open(self, caller: str, msg: dict[str, Any]) -> tuple[Entry, list[bytes], list[str]]:
        """Check who sent the relay over which link, and open it with the link keys it
        names; its forwarding entry, key values and route."""
        sid, link = msg["session_id"], msg["link"]
        pool = self.pools.get(link)
        if msg["from_km"] != caller or msg["to_km"] != self.node or pool is None \
                or pool.lc.peer != caller:
            raise rl.RelayError(403, f"{caller} may not send on link {link} to {self.node}")
        e = self.entry(sid)
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
        return e, values, route

    def _store(self, caller: str, msg: dict[str, Any], s: Session | None,
               values: list[bytes], route: list[str]) -> dict[str, Any]:
        """At the destination: store the keys, then acknowledge them with their route."""
        sid = msg["session_id"]
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
        alarm = self.alarms.first_in(route)  # one that came in while storing (see _open)
        if alarm is not None and alarm.kind in COMPROMISED:
            late = self.store.withdraw_keys([k.key_id for k in keys], "dst", alarm.link,
                                            alarm.kind, alarm.since)
            self.withdraw(late)
            gone += late
        self.sh.notify_arrivals()
        self.metrics.relay.labels(step="receive").inc()
        # a retried relay (its acknowledgement was lost): keys already held or delivered
        # are acknowledged again, never stored or delivered twice
        # the key IDs of ETSI 014 keys (an ETSI 004 key's ID is <session>:<index>): when a
        # key arrived, for the soak's check that none is delivered after a link's alarm
        ids = {"key_IDs": [k.key_id for k in keys]} if msg["api"] == "014" else {}
        self.control.event("relay_receive", sid, from_km=caller, keys=len(keys),
                           indexes=[k.idx for k in keys],
                           source_km=msg["source_km"], duplicates=dup,
                           withdrawn=len(gone), route=route, **ids)
        gone_ids = {w.key_id for w in gone}
        return {"ack": True, "destination_km": self.node, "route": route,
                "key_IDs": [{"key_ID": k.key_id} for k in keys if k.key_id not in gone_ids],
                "withdrawn_key_IDs": [{"key_ID": w.key_id, "link": w.link,
                                       "alarm": w.kind} for w in gone]}

    def _forward(self, caller: str, msg: dict[str, Any], next_hop: str, values: list[bytes],
                 route: list[str]) -> dict[str, Any]:
        """At a transit: seal the keys again towards the next hop; its answer goes back."""
        sid = msg["session_id"]
        self.metrics.relay.labels(step="forward").inc()
        self.control.event("relay_forward", sid, from_km=caller, to_km=next_hop,
                           keys=len(values))
        keys = [E2EKey(k["key_ID"], sid, k["index"], k["size"], "", "", v)
                for k, v in zip(msg["keys"], values, strict=True)]
        header = {k: msg[k] for k in ("session_id", "source_km", "api", "initiator_sae_id",
                                      "target_sae_ids")}
        header["route"] = route
        try:
            return self.relay_out.send_hop(header, next_hop, keys)
        except KmError as exc:
            raise rl.RelayError(503, exc.message) from None

    def entry(self, sid: str) -> Entry | None:
        """The forwarding entry of a session a neighbour names. Unknown here (e.g. its
        session_config was published while this KM was down or not yet subscribed): ask
        admission to send it again, and wait for it a while."""
        e = self.forwarding.get(sid)
        if e is not None:
            return e
        now = time.monotonic()
        with self._lock:
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
        """The ``a`` end's KM announces link key IDs it pulled; take them from our module."""
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

    def demand(self, caller: str, sid: str, idx: int) -> None:
        """A next hop asks for chunks up to ``idx`` of a stream."""
        e = self.entry(sid)
        if e is None or e.next_hop != caller:
            raise KmError("forbidden", f"{caller} is not the next hop of session {sid}")
        s = self.sessions.get(sid)
        if s is None or not s.live:
            raise KmError("not_found", f"session {sid} is not live here")
        if e.role == "source":
            with self._lock:
                if self._demanded.get(sid, -1) >= idx:
                    return
                self._demanded[sid] = idx
        self.demand_chunks(s, idx)
