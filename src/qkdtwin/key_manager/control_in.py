"""Control plane in: ``session_config`` (a new session, or ``update`` after re-routing) and
``session_delete`` from admission control, applied to the sessions and the forwarding
table; ``revocation`` of a disabled user from access control, which ends its sessions."""

from __future__ import annotations

import logging
from collections.abc import Callable

from qkdtwin.key_manager.forwarding import Entry
from qkdtwin.key_manager.production import KeyProduction
from qkdtwin.key_manager.sessions import OPERATIVE, TERMINATED, USER_ACCEPTED, Session
from qkdtwin.key_manager.shared import Part, Shared
from qkdtwin.key_manager.token_bucket import TokenBucket
from qkdtwin.messages import Revocation, SessionConfig, SessionDelete

log = logging.getLogger("qkdtwin.key_manager")


class ControlInput(Part):
    def __init__(self, sh: Shared, production: KeyProduction,
                 save: Callable[[Session], None], release: Callable[[Session], None]) -> None:
        super().__init__(sh)
        self.production = production
        self.save = save
        self.release = release

    def on_config(self, m: SessionConfig) -> None:
        """``session_config`` from admission control (new session or ``update``)."""
        sid, role, prev_hop, next_hop = m.session_id, m.role, m.prev_hop, m.next_hop
        if role not in ("source", "transit", "destination"):
            log.warning("ignoring malformed session_config: role %r", role,
                        extra={"payload": m.to_payload()})
            return
        for hop in (prev_hop, next_hop):
            if hop is not None and hop not in self.pool_by_peer:
                log.warning("session_config names %s, not a neighbour of %s", hop, self.node,
                            extra={"session_id": sid})
                self.control.event("config_refused", sid, reason=f"{hop} is not a neighbour")
                return
        s = self.sessions.get(sid)
        fresh = s is None or s.state == TERMINATED
        if s is None or s.state == TERMINATED:
            s = Session(session_id=sid, api=m.api or "014", state=OPERATIVE)
            self.sessions.put(s)
        self._configure(s, m)
        old = self.forwarding.set(sid, Entry(role, prev_hop, next_hop))
        if m.update and old is not None:
            self.control.event("forwarding_update", sid, role=role, prev_hop=prev_hop,
                               next_hop=next_hop, old_prev_hop=old.prev_hop,
                               old_next_hop=old.next_hop)
            self.retries.forget(sid)  # pending relays may go over the new path right away
        if s.state == USER_ACCEPTED:
            self.sessions.transition(s, OPERATIVE)
        else:
            self.save(s)
        self.control.event("session_configured", sid, role=role, prev_hop=prev_hop,
                           next_hop=next_hop, priority=s.priority, fresh=fresh)
        if role == "source":
            self.production.maybe_prefetch(s)

    @staticmethod
    def _configure(s: Session, m: SessionConfig) -> None:
        """The session's settings from its configuration (what it leaves out stays)."""
        with s.cond:
            s.role = m.role
            s.priority = m.priority
            b = m.bucket
            if b:
                if s.bucket is None:
                    s.bucket = TokenBucket(b.get("size_bits", 1e12), b.get("rate_bps", 1e12))
                else:
                    s.bucket.reconfigure(b.get("size_bits", 1e12), b.get("rate_bps", 1e12))
            s.timeout_s = m.timeout_s
            s.local_sae_id = m.local_sae_id or s.local_sae_id
            s.peer_sae_id = m.peer_sae_id or s.peer_sae_id
            s.user = m.user or s.user
            if m.peer_km:
                s.peer_km = m.peer_km
            s.touch()

    def on_revoked(self, m: Revocation) -> None:
        """A user disabled at access control: its applications' cached authentications go,
        and every session of the user or of one of its applications ends here at once (each
        KM of the path does the same; ``close_request`` lets admission free the path)."""
        saes = set(m.sae_ids)
        self.control.forget_auth(m.user, saes)
        for s in self.sessions.all():
            if not s.ended_for(m.user, saes):
                continue
            reason = f"not authorised any more: user {m.user} {m.reason.removeprefix('user ')}"
            if self.sessions.transition(s, TERMINATED, reason):
                self.forwarding.remove(s.session_id)
                self.release(s)
                self.control.close_request(s.session_id, "revoked")
                self.control.event("session_revoked", s.session_id, user=m.user)

    def on_delete(self, m: SessionDelete) -> None:
        """``session_delete``: the session ends here; confirmed to admission control."""
        sid = m.session_id
        s = self.sessions.get(sid)
        self.forwarding.remove(sid)
        if s is not None:
            if m.counter_qos:
                s.qos["counter_qos"] = m.counter_qos
            self.sessions.transition(s, TERMINATED, m.reason)
            self.release(s)
        self.control.deletion_confirm(sid)
        self.control.event("session_deleted", sid, reason=m.reason)
