"""The Key Manager's timers (thread ``km-timers``): idle sessions time out, terminated ones
are forgotten, old undelivered keys and delivery records expire, session gauges and link
telemetry are published."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from qkdtwin.key_manager.sessions import (
    KEY_EXCHANGING,
    OPERATIVE,
    TERMINATED,
    USER_ACCEPTED,
    Session,
)
from qkdtwin.key_manager.shared import Part, Shared

log = logging.getLogger("qkdtwin.key_manager")


class Housekeeping(Part):
    def __init__(self, sh: Shared, release: Callable[[Session], None]) -> None:
        super().__init__(sh)
        self.stop = sh.stop
        self.release = release

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True, name="km-timers").start()

    def _loop(self) -> None:
        last_slow = 0.0
        while not self.stop.wait(0.25):
            try:
                now = time.monotonic()
                self._time_out(now)
                if now - last_slow > 5.0:
                    last_slow = now
                    self._slow()
            except Exception:
                log.exception("housekeeping failed")

    def _time_out(self, now: float) -> None:
        for s in self.sessions.all():
            if (s.live and s.apps and s.state == OPERATIVE
                    and now - s.last_activity > s.timeout_s):
                if self.sessions.transition(s, TERMINATED, "timeout"):
                    self.control.close_request(s.session_id, "timeout")
                    self.release(s)

    def _slow(self) -> None:
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
