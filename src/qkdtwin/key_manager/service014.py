"""The ETSI GS QKD 014 service behind the ``etsi014`` blueprint: status, enc_keys (master)
and dec_keys (slave). One session per (master, slave) pair, opened on first use."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from qkdtwin.key_manager import relay as rl
from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.establish import Establishment
from qkdtwin.key_manager.identity import Identity
from qkdtwin.key_manager.keystore import E2EKey, NotFound, WrongOwner
from qkdtwin.key_manager.production import KeyProduction
from qkdtwin.key_manager.quarantine import withdrawn_message
from qkdtwin.key_manager.sessions import TERMINATED, USER_ACCEPTED, Session, session_id_014
from qkdtwin.key_manager.shared import Part, Shared

log = logging.getLogger("qkdtwin.key_manager")


def sla_key_bits(s: Session) -> int | None:
    """The largest key size the user's SLA allows (None: no cap)."""
    cap = s.qos.get("sla_max_key_size")
    return cap if isinstance(cap, int) and not isinstance(cap, bool) else None


class Etsi014Service(Part):
    def __init__(self, sh: Shared, establish: Establishment, production: KeyProduction
                 ) -> None:
        super().__init__(sh)
        self.establish = establish
        self.production = production

    def open(self, ident: Identity, slave: str, priority: int | None) -> Session:
        """The live session of (ident, slave) at its source; opened and configured first if
        there is none."""
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
            self.establish.establish(s, ident, slave, "014", qos, self.cfg.control_timeout_s)
        else:
            self.establish.wait_live(s, self.cfg.control_timeout_s)
        if s.state == USER_ACCEPTED:
            self.sessions.transition(s, TERMINATED, "admission control did not configure the"
                                     " session in time")
            self.control.close_request(sid, "timeout")
            raise KmError("unavailable", "admission control did not configure the session in"
                          " time")
        if s.state == TERMINATED:
            raise self.establish.refusal(s)
        if s.role != "source":
            raise KmError("refused", f"this KM is not the source of session {sid}")
        self.establish.bind(s, ident, slave)  # another certificate: access control again
        return s

    def status(self, ident: Identity, slave: str) -> dict[str, Any]:
        s = self.open(ident, slave, None)
        e = self.forwarding.get(s.session_id)
        ready = self.store.ready_count(s.session_id, "src", s.key_size)
        link_bytes = 0
        if e and e.next_hop and self.production.next_link_alarm(s) is None:
            link_bytes = self.pool_by_peer[e.next_hop].own_bytes()  # none usable under alarm
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
            "max_key_size": min(lim.max_key_size, sla_key_bits(s) or lim.max_key_size),
            "min_key_size": lim.min_key_size,
            "max_SAE_ID_count": 0,
            "status_extension": {"session_id": s.session_id, "priority": s.priority,
                                 "state": s.state},
        }

    def enc_keys(self, ident: Identity, slave: str, number: int, size: int | None,
                 priority: int | None) -> list[E2EKey]:
        s = self.open(ident, slave, priority)
        size = s.key_size if size is None else size
        cap = sla_key_bits(s)
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
        self.sessions.begin_exchange(s)
        try:
            keys = self._take_src(s, number, size, ident.cn)
            if not keys:
                if s.bucket is not None:
                    s.bucket.give_back(bits)
                self.metrics.refused.labels(reason="insufficient").inc()
                raise KmError("insufficient", "not enough key available for this SAE pair"
                              " right now; retry later")
        finally:
            self.sessions.end_exchange(s)
        self.control.key_request(s.session_id, bits)
        self.control.event("keys_delivered", s.session_id, gate_s=0.2, api="014",
                           sae_id=ident.cn, number=number, size=size)
        self.metrics.delivered.labels(api="014").inc(number)
        self.production.maybe_prefetch(s)
        return keys

    def _take_src(self, s: Session, number: int, size: int, sae: str) -> list[E2EKey]:
        """Ready keys, else keys produced (and relayed) for this request within the wait."""
        keys = self.production.take_ready(s, size, number, sae)
        deadline = time.monotonic() + self.cfg.request_wait_s
        relay_failed = False
        while not keys:
            left = deadline - time.monotonic()
            if left <= 0 or not s.live:
                if relay_failed:
                    raise KmError("unavailable", "the relay of keys towards the slave's KM"
                                  " did not go through in time; retry later")
                return []
            # the keys asked for plus, as far as the link's pool pays for them now, the ones
            # kept ready: a request that waited for 64 more keys starved on slow links
            extra = 0
            if size == s.key_size:
                extra = min(self.cfg.prefetch_keys,
                            max(0, self.production.affordable_keys(s, size) - number))
            job = self.production.produce(s, number + extra, size, prefetch=False)
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
            keys = self.production.take_ready(s, size, number, sae)
        return keys

    def dec_keys(self, ident: Identity, master: str, key_ids: list[str]) -> list[E2EKey]:
        if ident.ou != "sae":
            raise KmError("unauthorized", "client certificate is not an application (SAE)"
                          " certificate")
        # authorise first, and answer keys made for someone else like missing ones: a caller
        # learns nothing about key IDs that are not its own
        self.establish.authenticate(ident, master)
        try:
            keys = self.store.take_by_ids(master, ident.cn, key_ids)
        except WrongOwner:
            self.metrics.refused.labels(reason="wrong_slave").inc()
            raise KmError("bad_request", "one or more keys specified are not found on KME"
                          ) from None
        except NotFound:
            details = []
            for k in key_ids:
                w = self.store.withdrawal(k, "dst")
                if w is not None:
                    details.append({"key_ID": k, "withdrawn": True, "link": w.link,
                                    "alarm": w.kind, "since": w.since,
                                    "message": withdrawn_message(f"key {k}", w)})
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
