"""The ETSI GS QKD 004 service behind the ``etsi004`` blueprint: OPEN_CONNECT, GET_KEY and
CLOSE on key streams (one session per stream, chunk ``index`` = key index)."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qkdtwin.key_manager.control import ControlUnavailable
from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.establish import Establishment
from qkdtwin.key_manager.identity import Identity
from qkdtwin.key_manager.keystore import E2EKey
from qkdtwin.key_manager.peers import PeerError
from qkdtwin.key_manager.production import KeyProduction
from qkdtwin.key_manager.quarantine import withdrawn_message
from qkdtwin.key_manager.sessions import TERMINATED, Session
from qkdtwin.key_manager.shared import Part, Shared

log = logging.getLogger("qkdtwin.key_manager")
# ETSI 004: how far beyond a side's position an index may be asked, and how far beyond the
# source application's position the source produces on demand (per stream, issue 13 M5)
MAX_RUN_AHEAD = 1024
# Test-only fault hook: with QKDTWIN_KM_FAULT=get_key_taken the KM SIGKILLs itself right after
# a GET_KEY took its chunk, before answering (tests/integration/test_km_sessions.py, L1).
FAULT_ENV = "QKDTWIN_KM_FAULT"


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class OpenResult:
    status: int
    session: Session
    message: str


def _qos_out(qos: dict[str, Any], chunk: int) -> dict[str, Any]:
    out = {k: qos[k] for k in ("max_bps", "min_bps", "jitter", "priority", "timeout", "ttl")
           if k in qos}
    out["key_chunk_size"] = chunk
    return out


def _side(s: Session, sae: str) -> str:
    if s.role == "source" and sae == s.local_sae_id:
        return "src"
    return "dst"


class Etsi004Service(Part):
    def __init__(self, sh: Shared, establish: Establishment, production: KeyProduction,
                 release: Callable[[Session], None]) -> None:
        super().__init__(sh)
        self.establish = establish
        self.production = production
        self.release = release

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
            self.establish.authenticate(ident, peer, sid)
            with s.cond:
                s.certs[ident.cn] = ident.fingerprint
            s.apps[ident.cn] = "?"
            if s.live:
                return OpenResult(0, s, "connected")
            try:
                self.control.config_request(sid, s.user or ident.o or "", ident.cn, peer, "004",
                                            _qos_out(qos, chunk))
            except ControlUnavailable as exc:
                raise KmError("unavailable", str(exc), status004=4) from None
            self.establish.wait_live(s, wait_s)
        else:
            s = Session(session_id=sid, api="004", local_sae_id=ident.cn, peer_sae_id=peer,
                        key_size=chunk * 8, priority=int(qos.get("priority",
                                                                 self.cfg.default_priority)),
                        qos=dict(qos), apps={ident.cn: "?"})
            self.sessions.put(s)
            self.establish.establish(s, ident, peer, "004", _qos_out(qos, chunk), wait_s)
        if s.state == TERMINATED:
            err = self.establish.refusal(s)
            if err.status004 == 7:
                return OpenResult(7, s, err.message)
            raise err
        if s.live:
            return OpenResult(0, s, "connected")
        return OpenResult(1, s, "connected; peer application not connected yet")

    def get_key(self, ident: Identity, sid: str, index: int | None,
                meta_size: int | None) -> dict[str, Any]:
        s = self.sessions.get(sid)
        if s is None or ident.cn not in s.apps:
            raise KmError("not_found", f"no key stream {sid} open for SAE {ident.cn}",
                          status004=10)
        if s.state == TERMINATED:
            return {"status": 4, "message": f"key stream closed: {s.reason}"}
        self.establish.check_owner(s, ident)
        if not s.live:
            return {"status": 3, "message": "peer application not yet connected"}
        side = _side(s, ident.cn)
        pos_name = f"pos:{sid}:{side}"
        for _ in range(8):  # the next position moves on while its chunk is withdrawn
            out = self._get_chunk(s, ident, side, pos_name, index, meta_size)
            if out is not None:
                return out
        return {"status": 2, "message": "insufficient key available"}

    def _index(self, sid: str, side: str, pos_name: str, index: int | None) -> int:
        """The index a GET_KEY asks for (the next position, or ``index`` within reach)."""
        if index is None:  # withdrawn indexes are skipped alike on both sides
            return self.store.next_index(sid, side, self.store.counter(pos_name))
        front = self.store.counter(pos_name)
        if index > front + MAX_RUN_AHEAD:
            # it would make the source relay (and block its link for) that many chunks
            raise KmError("bad_request", f"index {index} is more than {MAX_RUN_AHEAD} chunks"
                          f" ahead of the key stream (at {front})", status004=10)
        return index

    def _charge(self, s: Session, idx: int, index: int | None, pos_name: str
                ) -> tuple[int, dict[str, Any] | None]:
        """Take this GET_KEY's bits from the stream's token bucket: one chunk, or with an
        explicit index every chunk the side's position passes (the run-ahead the path has to
        produce and relay; an index behind the position was paid when it was passed).
        (bits taken, None) or (0, the status-9 answer); 400 if the bucket can never pay."""
        chunks = 1 if index is None else max(0, idx + 1 - self.store.counter(pos_name))
        bits = chunks * s.key_size
        if not bits or s.bucket is None or s.bucket.take(bits):
            return bits, None
        self.metrics.refused.labels(reason="token_bucket").inc()
        wait = s.bucket.retry_after(bits)
        if math.isinf(wait):
            raise KmError("bad_request", f"index {idx} runs {chunks} chunks ahead: more than"
                          f" the session's token bucket of {int(s.bucket.size)} bits allows",
                          status004=10)
        return 0, {"status": 9, "message": "rate limited by the session's token bucket"
                   " (non-ETSI status)", "retry_after_s": round(wait, 3)}

    def _get_chunk(self, s: Session, ident: Identity, side: str, pos_name: str,
                   index: int | None, meta_size: int | None) -> dict[str, Any] | None:
        """One GET_KEY attempt; None when the next position's chunk was withdrawn while
        waiting for it (ask again for the next one)."""
        sid = s.session_id
        idx = self._index(sid, side, pos_name, index)
        key_id = f"{sid}:{idx}"
        w = self.store.withdrawal(key_id, side)
        if w is not None:
            raise KmError("gone", withdrawn_message(f"key at index {idx}", w),
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
        bits, refused = self._charge(s, idx, index, pos_name)
        if refused is not None:
            return refused
        self.sessions.begin_exchange(s)
        try:
            chunk = self._take_chunk(s, side, idx, ident.cn, s.qos.get("timeout"), pos_name)
        finally:
            self.sessions.end_exchange(s)
        if chunk is None:
            if s.bucket is not None:
                s.bucket.give_back(bits)
            if self.store.withdrawal(key_id, side) is not None:
                if index is None:
                    return None
                return self._get_chunk(s, ident, side, pos_name, index, meta_size)  # -> 410
            return {"status": 2, "message": "insufficient key available", "index": idx}
        _fault("get_key_taken")  # the chunk and the position moved on in one transaction
        self.control.key_request(sid, s.key_size)
        self.control.event("keys_delivered", sid, gate_s=0.2, api="004", sae_id=ident.cn,
                           index=idx)
        self.metrics.delivered.labels(api="004").inc()
        if side == "src":
            self.production.maybe_prefetch(s)
        return {"status": 0, "key_buffer": base64.b64encode(chunk.key).decode(), "index": idx,
                "metadata": meta}

    def _take_chunk(self, s: Session, side: str, idx: int, sae: str,
                    timeout_ms: Any, pos_name: str) -> E2EKey | None:
        wait = self.cfg.request_wait_s
        if isinstance(timeout_ms, int | float) and timeout_ms > 0:
            wait = min(wait, timeout_ms / 1000.0)
        deadline = time.monotonic() + wait
        chunk = self.store.take_chunk(s.session_id, side, idx, sae, pos_name)
        asked = False
        while chunk is None and time.monotonic() < deadline and s.live:
            if not asked:
                asked = True
                self.demand_chunks(s, idx)
            with self.arrivals:
                self.arrivals.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            chunk = self.store.take_chunk(s.session_id, side, idx, sae, pos_name)
            if chunk is None and self.store.withdrawal(f"{s.session_id}:{idx}", side):
                break
        return chunk

    def demand_chunks(self, s: Session, idx: int) -> None:
        """Make sure chunks up to ``idx`` are (being) produced: locally at the source, else by
        asking the previous hop, which passes the demand on towards the source."""
        e = self.forwarding.get(s.session_id)
        if e is None:
            return
        if e.role == "source":
            have = self.store.max_idx(s.session_id)
            # capped per stream: never beyond MAX_RUN_AHEAD chunks past the source
            # application's position, however often a run-ahead is asked for
            limit = self.store.counter(f"pos:{s.session_id}:src") + MAX_RUN_AHEAD
            want = min(idx + self.cfg.prefetch_chunks, limit)
            if idx > have and want > have:
                self.production.produce(s, want - have, s.key_size, prefetch=False)
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

    def close(self, ident: Identity, sid: str) -> dict[str, Any]:
        s = self.sessions.get(sid)
        if s is None or ident.cn not in s.apps:
            raise KmError("not_found", f"no key stream {sid} open for SAE {ident.cn}",
                          status004=10)
        if s.state != TERMINATED:
            self.establish.check_owner(s, ident)
        s.apps.pop(ident.cn, None)
        self.control.close_request(sid, "closed")
        if not s.apps:
            self.sessions.transition(s, TERMINATED, "closed by the application")
            self.release(s)
        return {"status": 0, "message": "closed"}
