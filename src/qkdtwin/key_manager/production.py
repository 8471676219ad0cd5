"""Key production at the source: end-to-end keys made in the outgoing link's priority
scheduler (``scheduler.LinkScheduler``), stored as pending and handed to the relay
(``relay_out``); prefetch keeps a few ready for the next request."""

from __future__ import annotations

import math
import os
import threading
import uuid

from qkdtwin.key_manager import relay as rl
from qkdtwin.key_manager.alarms import Alarm
from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.keystore import E2EKey
from qkdtwin.key_manager.relay_out import RELAY_BATCH, RelayOut
from qkdtwin.key_manager.scheduler import Job
from qkdtwin.key_manager.sessions import Session
from qkdtwin.key_manager.shared import Part, Shared


class KeyProduction(Part):
    def __init__(self, sh: Shared, relay_out: RelayOut) -> None:
        super().__init__(sh)
        self.relay_out = relay_out

    def next_link_alarm(self, s: Session) -> Alarm | None:
        """The alarm of the link towards the session's next hop, if it is under one."""
        e = self.forwarding.get(s.session_id)
        if e is None or e.next_hop is None or e.next_hop not in self.pool_by_peer:
            return None
        return self.alarms.get(self.pool_by_peer[e.next_hop].link)

    def take_ready(self, s: Session, size: int, number: int, sae: str) -> list[E2EKey]:
        """Ready source keys of ``size`` for the application ``sae`` (maybe fewer, or none)."""
        keys = self.store.take_ready(s.session_id, size, number, sae)
        if keys:
            self.ready.add(s, size, -len(keys))
        return keys

    def affordable_keys(self, s: Session, size: int) -> int:
        """How many keys of ``size`` bits the session's first link pool pays for right now
        (one relay message: the keys and a MAC key); unbounded with no link to cross."""
        e = self.forwarding.get(s.session_id)
        if e is None or e.next_hop is None or e.next_hop not in self.pool_by_peer:
            return 1 << 30
        return max(0, self.pool_by_peer[e.next_hop].own_bytes() - rl.MAC_KEY_BYTES) // (size // 8)

    def produce(self, s: Session, n: int, size: int, prefetch: bool) -> Job:
        """Queue the making (and relay) of ``n`` keys of ``size`` bits; the job is done when
        they are ready or have failed (``job.error``)."""
        e = self.forwarding.get(s.session_id)
        if e is not None and e.next_hop in self.pool_by_peer:
            # one job never needs more than a quarter of what the link's pool can hold (a
            # bigger one would wait at the head of the queue for ever); callers ask again
            pool = self.pool_by_peer[e.next_hop]
            fit = pool.pc.max_keys * pool.key_bytes // 4 // (size // 8 + rl.MAC_KEY_BYTES)
            n = max(1, min(n, fit))

        def run() -> int:
            return self._make_keys(s, n, size)

        alarm = self.next_link_alarm(s)
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

    def maybe_prefetch(self, s: Session) -> None:
        """Refill the source's ready keys of a live session when half or more are gone."""
        if not s.live or s.role != "source":
            return
        if s.api == "004":
            target = self.cfg.prefetch_chunks
            ahead = self.store.ready_count(s.session_id, "src")
            size = s.key_size
        else:
            target = self.cfg.prefetch_keys
            ahead = self.ready.get(s)
            size = s.key_size
        if target <= 0 or ahead >= (target + 1) // 2 or s.prefetching:
            return
        s.prefetching = True
        job = self.produce(s, target - ahead, size, prefetch=True)

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
        alarm = self.next_link_alarm(s)
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
            self.ready.add(s, size, n)
            s.peer_km = self.node
            self.sh.notify_arrivals()
            return n
        try:
            self.relay_out.relay(s, e.next_hop, keys)
        except KmError as exc:
            if exc.kind == "insufficient" and s.api == "014":
                # nothing left this KM and ETSI 014 key IDs carry no index: forget them
                # instead of piling up pending keys while the link pool is short
                self.store.drop_keys([k.key_id for k in keys], "pend")
            raise
        return n
