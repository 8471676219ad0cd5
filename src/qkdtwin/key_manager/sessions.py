"""Sessions of a Key Manager and their state machine (DESIGN.md §6).

AUTHENTICATING → USER_ACCEPTED → OPERATIVE ⇄ KEY_EXCHANGING → TERMINATED; a refusal at any
step also ends in TERMINATED. Sessions configured by the control plane without a local
application (transit KMs, the ETSI 014 slave's KM) start in OPERATIVE.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qkdtwin.key_manager.token_bucket import TokenBucket

AUTHENTICATING = "AUTHENTICATING"
USER_ACCEPTED = "USER_ACCEPTED"
OPERATIVE = "OPERATIVE"
KEY_EXCHANGING = "KEY_EXCHANGING"
TERMINATED = "TERMINATED"

TRANSITIONS = {
    AUTHENTICATING: {USER_ACCEPTED, TERMINATED},
    USER_ACCEPTED: {OPERATIVE, TERMINATED},
    OPERATIVE: {KEY_EXCHANGING, TERMINATED, OPERATIVE},
    KEY_EXCHANGING: {OPERATIVE, KEY_EXCHANGING, TERMINATED},
    TERMINATED: set(),
}

_NS = uuid.UUID("6f1c3a52-8d0e-4b7e-9a51-2c4d5e6f7a8b")


@functools.lru_cache(maxsize=4096)
def session_id_014(master: str, slave: str) -> str:
    """The session id a KM derives for an ETSI 014 (master, slave) pair: ``014-`` and 32 hex
    digits, never a UUID, so that no ETSI 004 key stream (whose ids are UUIDs) can take the
    id of a 014 pair and block it (issue 13, M6)."""
    return "014-" + uuid.uuid5(_NS, f"014|{master}|{slave}").hex


class InvalidTransition(RuntimeError):
    pass


@dataclass
class Session:
    session_id: str
    api: str                                 # "014" or "004"
    state: str = AUTHENTICATING
    role: str | None = None                  # source | transit | destination
    local_sae_id: str | None = None
    peer_sae_id: str | None = None
    user: str | None = None
    priority: int = 5
    bucket: TokenBucket | None = None
    timeout_s: float = 60.0
    key_size: int = 256                      # bits: 014 default size, 004 chunk size
    peer_km: str | None = None
    qos: dict[str, Any] = field(default_factory=dict)
    apps: dict[str, str] = field(default_factory=dict)   # local SAE → 'src' | 'dst'
    # local SAE → SHA-256 fingerprint of the certificate access control accepted for it
    certs: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    last_activity: float = field(default_factory=time.monotonic)
    cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    prefetching: bool = False
    exchanging: int = 0                      # requests in flight (KEY_EXCHANGING while > 0)
    terminated_at: float | None = None

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def ended_for(self, user: str, sae_ids: set[str]) -> bool:
        """Whether a revocation of ``user`` (and its applications ``sae_ids``) ends this."""
        return self.state != TERMINATED and (
            self.user == user or self.local_sae_id in sae_ids or self.peer_sae_id in sae_ids
            or any(a in sae_ids for a in self.apps))

    @property
    def live(self) -> bool:
        return self.state in (OPERATIVE, KEY_EXCHANGING)

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "api": self.api, "state": self.state,
                "role": self.role, "local_sae_id": self.local_sae_id,
                "peer_sae_id": self.peer_sae_id, "user": self.user, "priority": self.priority,
                "bucket": ({"size_bits": self.bucket.size, "rate_bps": self.bucket.rate}
                           if self.bucket else None),
                "timeout_s": self.timeout_s, "key_size": self.key_size,
                "peer_km": self.peer_km, "qos": self.qos, "apps": self.apps,
                "certs": self.certs, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Session:
        b = d.get("bucket")
        return cls(session_id=d["session_id"], api=d["api"], state=d["state"], role=d["role"],
                   local_sae_id=d.get("local_sae_id"), peer_sae_id=d.get("peer_sae_id"),
                   user=d.get("user"), priority=d.get("priority", 5),
                   bucket=TokenBucket(b["size_bits"], b["rate_bps"]) if b else None,
                   timeout_s=d.get("timeout_s", 60.0), key_size=d.get("key_size", 256),
                   peer_km=d.get("peer_km"), qos=d.get("qos") or {}, apps=d.get("apps") or {},
                   certs=d.get("certs") or {}, reason=d.get("reason"))


class SessionTable:
    """All sessions of this KM, with state changes reported to ``on_change``."""

    def __init__(self, on_change: Callable[[Session, str, str], None],
                 save: Callable[[Session], None]) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._on_change = on_change
        self._save = save
        # transitions (and their events) of all sessions happen one at a time, so that events
        # leave in the order of the changes
        self._order = threading.RLock()

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def put(self, s: Session) -> None:
        with self._lock:
            self._sessions[s.session_id] = s

    def get_or_create(self, session_id: str, factory: Callable[[], Session]
                      ) -> tuple[Session, bool]:
        """The existing session unless terminated; else a new one from ``factory``."""
        with self._lock:
            s = self._sessions.get(session_id)
            if s is not None and s.state != TERMINATED:
                return s, False
            s = factory()
            self._sessions[session_id] = s
            return s, True

    def all(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def transition(self, s: Session, new: str, reason: str | None = None) -> bool:
        """Move ``s`` to ``new``; False if it is already terminated (nothing changes)."""
        with self._order:
            return self._transition(s, new, reason)

    def _transition(self, s: Session, new: str, reason: str | None) -> bool:
        with s.cond:
            old = s.state
            if old == TERMINATED:
                return False
            if new not in TRANSITIONS[old]:
                raise InvalidTransition(f"{old} → {new}")
            s.state = new
            if reason:
                s.reason = reason
            if new == TERMINATED:
                s.terminated_at = time.monotonic()
            s.cond.notify_all()
        if old != new:
            if new in (OPERATIVE, TERMINATED, USER_ACCEPTED) and not (
                    old == KEY_EXCHANGING and new == OPERATIVE):
                self._save(s)
            self._on_change(s, old, new)
        return True

    def begin_exchange(self, s: Session) -> None:
        """A key request of ``s`` starts: KEY_EXCHANGING while any is in flight."""
        s.touch()
        with s.cond:
            s.exchanging += 1
        if s.state == OPERATIVE:
            self.transition(s, KEY_EXCHANGING)

    def end_exchange(self, s: Session) -> None:
        """A key request of ``s`` is answered: back to OPERATIVE after the last one."""
        s.touch()
        with s.cond:
            s.exchanging -= 1
            last = s.exchanging <= 0
        if last and s.state == KEY_EXCHANGING:
            self.transition(s, OPERATIVE)

    def purge(self, older_than_s: float = 600.0) -> None:
        """Forget sessions terminated long ago."""
        limit = time.monotonic() - older_than_s
        with self._lock:
            for sid in [k for k, s in self._sessions.items()
                        if s.terminated_at is not None and s.terminated_at < limit]:
                del self._sessions[sid]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.all():
            out[s.state] = out.get(s.state, 0) + 1
        return out
