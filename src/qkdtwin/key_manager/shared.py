"""The state the Key Manager's parts share, as the coordinator (``manager.KeyManager``) builds
it and hands it to each part; the locking rules are in the coordinator's docstring.

:class:`ReadyCounts` and :class:`RelayRetries` are the two pieces of shared bookkeeping that
are neither in the store nor in a session; each has its own lock, held only inside its
methods.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from qkdtwin.key_manager.alarms import LinkAlarms
from qkdtwin.key_manager.config import KmConfig
from qkdtwin.key_manager.control import Control
from qkdtwin.key_manager.forwarding import ForwardingTable
from qkdtwin.key_manager.keystore import KeyStore
from qkdtwin.key_manager.linkpool import LinkPool
from qkdtwin.key_manager.metrics import Metrics
from qkdtwin.key_manager.peers import HttpClient
from qkdtwin.key_manager.scheduler import LinkScheduler
from qkdtwin.key_manager.sessions import Session, SessionTable

RELAY_RETRY_S = (1.0, 8.0)  # first and longest wait before an unacknowledged relay is resent


class ReadyCounts:
    """Ready (prefetched) ETSI 014 keys of a session's default size, counted in memory so
    that the hot path does not count rows; loaded from the store on first use."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._n: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, s: Session) -> int:
        with self._lock:
            n = self._n.get(s.session_id)
        if n is None:
            n = self._store.ready_count(s.session_id, "src", s.key_size)
            with self._lock:
                self._n.setdefault(s.session_id, n)
        return n

    def add(self, s: Session, size: int, n: int) -> None:
        if s.api == "014" and size == s.key_size:
            with self._lock:
                if s.session_id in self._n:
                    self._n[s.session_id] += n

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._n.pop(session_id, None)


class RelayRetries:
    """Relays in flight per session, and when an unacknowledged one may be sent again."""

    def __init__(self) -> None:
        self._inflight: dict[str, int] = {}
        self._retry_at: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def begin(self, sid: str) -> None:
        with self._lock:
            self._inflight[sid] = self._inflight.get(sid, 0) + 1

    def end(self, sid: str) -> None:
        with self._lock:
            self._inflight[sid] -= 1
            if not self._inflight[sid]:
                del self._inflight[sid]

    def failed(self, sid: str) -> None:
        """A relay of ``sid`` failed: after the first failure, retry after the shortest wait."""
        with self._lock:
            first, _ = self._retry_at.get(sid, (0.0, 0.0))
            if first == 0.0:
                self._retry_at[sid] = (time.monotonic() + RELAY_RETRY_S[0],
                                       min(RELAY_RETRY_S[0] * 2, RELAY_RETRY_S[1]))

    def due(self, sid: str, now: float) -> bool:
        """Whether the retry loop may resend ``sid``'s pending keys now (none in flight, its
        wait over); if so, the next wait doubles (up to the longest)."""
        with self._lock:
            if self._inflight.get(sid):
                return False
            at, wait = self._retry_at.get(sid, (0.0, RELAY_RETRY_S[0]))
            if at > now:
                return False
            self._retry_at[sid] = (now + wait, min(wait * 2, RELAY_RETRY_S[1]))
            return True

    def forget(self, sid: str) -> None:
        """Retry ``sid`` at the next round (acknowledged, or its path changed)."""
        with self._lock:
            self._retry_at.pop(sid, None)

    def clear(self) -> None:
        """Retry every session at the next round (a link alarm cleared)."""
        with self._lock:
            self._retry_at.clear()


@dataclass
class Shared:
    """What several parts read or change; built once by the coordinator."""

    cfg: KmConfig
    store: KeyStore
    metrics: Metrics
    control: Control
    peers: HttpClient                       # KM-to-KM client
    sessions: SessionTable
    forwarding: ForwardingTable
    pools: dict[str, LinkPool]              # by link name
    pool_by_peer: dict[str, LinkPool]       # by neighbour KM
    schedulers: dict[str, LinkScheduler]    # by link name
    alarms: LinkAlarms
    ready: ReadyCounts
    retries: RelayRetries
    arrivals: threading.Condition           # notified whenever end-to-end key may be new
    stop: threading.Event

    @property
    def node(self) -> str:
        return self.cfg.node

    def notify_arrivals(self) -> None:
        with self.arrivals:
            self.arrivals.notify_all()


class Part:
    """The base of the KM's parts: the shared state under the names every part uses (bound
    once at construction, as the coordinator builds the parts after the state)."""

    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.cfg, self.node, self.store, self.metrics = sh.cfg, sh.node, sh.store, sh.metrics
        self.control, self.peers, self.sessions = sh.control, sh.peers, sh.sessions
        self.forwarding, self.pools, self.pool_by_peer = sh.forwarding, sh.pools, sh.pool_by_peer
        self.schedulers, self.alarms, self.arrivals = sh.schedulers, sh.alarms, sh.arrivals
        self.ready, self.retries = sh.ready, sh.retries
