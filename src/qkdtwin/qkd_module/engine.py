"""The two ends of a link: Alice (side a) emits the quantum channel stream and answers the
post-processing; Bob (side b) measures, drives post-processing and stores key.

Connections (Alice connects from her p2p address to Bob's p2p address and `peer_port`; the
first frame on each is a `hello`):

* classical: request/reply both ways. Bob -> Alice: `sift`, `estimate`, `parity`, `confirm`,
  `abort` (qkdtwin.quantum.postprocess, tagged with `block`) and `commit` (Bob stored the
  block's key). Alice -> Bob: `assign` (key IDs and the block segments they were cut from).
* quantum: Alice -> Bob only, one `frame` per `frame_s` of link time (framing.pack_channel).

A session is one pair of connections. Pulse slots restart at 0 per session and block `j`
of a session covers slots [j N, (j + 1) N) with N = block_pulses; its id is the session's
`first_block` + j, unique across sessions and restarts. When a connection fails, both
sides drop the session (blocks in flight are lost, stored key is not) and Alice reconnects.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from qkdtwin.qkd_module import peerlink as pl
from qkdtwin.qkd_module.config import ModuleConfig
from qkdtwin.qkd_module.endpoint import Endpoint, PeerGone, RemoteError
from qkdtwin.qkd_module.framing import FramedSocket, FrameError, pack_channel, unpack_channel
from qkdtwin.qkd_module.stats import LinkStats
from qkdtwin.qkd_module.store import KeyStore, StoreError
from qkdtwin.quantum.channel import AliceRecords, AliceSource, BobDetector, Detections
from qkdtwin.quantum.postprocess import AlicePostProcessor, BobPostProcessor, PartyResult

log = logging.getLogger("qkdtwin.qkd_module")

MAX_FRAME_PULSES = 10_000_000
PP_TIMEOUT_S = 60.0
EventFn = Callable[..., None]


def key_bytes(result: PartyResult) -> bytes:
    """The block's secret key as bytes (trailing bits that do not fill a byte are dropped)."""
    if result.key is None:
        return b""
    k = np.asarray(result.key, np.uint8)
    return np.packbits(k[: len(k) // 8 * 8]).tobytes()


def _outcome(res: PartyResult) -> str:
    if res.key is not None and len(res.key) >= 8:
        return "ok"
    if res.estimate is not None and res.estimate.aborted:
        return "aborted"
    return "nokey"


class Engine:
    """What both ends share: config, store, stats, the current session's endpoint."""

    def __init__(self, cfg: ModuleConfig, store: KeyStore, stats: LinkStats,
                 event: EventFn | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.stats = stats
        self.event = event or (lambda *a, **k: None)
        self.stop_event = threading.Event()
        self.classical: Endpoint | None = None
        self.eve_fraction = cfg.params.eve_fraction
        self.status = "connecting"
        self.sessions = 0
        self.last_ok_block = -1     # highest block id that gave key
        self.current_block = -1     # block being emitted (Alice) or measured (Bob)
        self.eve_since_block = -1   # block during which Eve's fraction last changed

    def stop(self) -> None:
        self.stop_event.set()
        if self.classical is not None:
            self.classical.close("module stopping")

    @property
    def connected(self) -> bool:
        ep = self.classical
        return ep is not None and not ep.closed.is_set()

    def _record(self, block: int, res: PartyResult) -> None:
        qber = res.estimate.qber if res.estimate is not None else None
        self._record_block(block, len(key_bytes(res)) * 8, int(res.sifted_signal), qber,
                           _outcome(res), res.reason)

    def _record_block(self, block: int, secret: int, sifted: int, qber: float | None,
                      outcome: str, reason: str) -> None:
        if outcome == "ok":
            self.last_ok_block = max(self.last_ok_block, block)
        before, was_ok = self.stats.last_block, self.stats.last_ok
        self.stats.block(secret, sifted, qber, outcome, block)
        self.stats.last_ok = outcome == "ok"
        if outcome == "aborted" and before != "aborted":  # also after a no-key block
            self.event("qkd_block_aborted", block=block, qber=qber, reason=reason)
        elif not was_ok and outcome == "ok":
            self.event("qkd_key_flowing", block=block, qber=qber)


# ------------------------------------------------------------------------------------ Alice

class Alice(Engine):
    """Side a: the source. Connects to Bob, paces the channel stream, answers Bob."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._source: AliceSource | None = None
        self._records: dict[int, AliceRecords] = {}
        self._pp: dict[int, AlicePostProcessor] = {}
        self._lock = threading.Lock()
        self.key_lock = threading.Lock()   # one ETSI enc_keys at a time (carve + sync)

    def set_eve_fraction(self, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"eve fraction {fraction!r} out of range [0, 1]")
        old = self.eve_fraction
        self.eve_fraction = float(fraction)
        src = self._source
        if src is not None:
            src.set_eve_fraction(fraction)
        if old != fraction:
            self.eve_since_block = self.current_block
            self.event("qkd_eve_changed", eve_fraction=fraction, previous=old,
                       block=self.current_block)
            log.info("eavesdropper fraction %s -> %s", old, fraction,
                     extra={"link": self.cfg.link})

    def run(self) -> None:
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                self._session()
                backoff = 0.5
            except (OSError, FrameError, PeerGone, RemoteError) as exc:
                if self.status != "connecting":
                    log.warning("peer session ended: %s", exc, extra={"link": self.cfg.link})
                    self.event("qkd_peer_lost", reason=str(exc))
                self.status = "connecting"
            self.stats.session_ended()
            self.stop_event.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _connect(self, channel: str, sid: str, extra: dict[str, Any]) -> FramedSocket:
        c = self.cfg
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(5.0)
            sock.bind((c.local_ipv4, 0))
            sock.connect((c.peer_ipv4, c.peer_port))
            pl.tune(sock)
            if channel == "quantum" and c.tls is not None:
                sock = c.tls.wrap(sock, c.peer, server=False)
            sock.settimeout(None)
        except OSError:
            sock.close()
            raise
        fs = FramedSocket(sock)
        fs.max_frame = pl.HELLO_MAX
        fs.send({"type": "hello", "version": pl.PROTOCOL_VERSION, "link": c.link,
                 "channel": channel, "session": sid, **extra})
        sock.settimeout(10.0)
        rep = fs.recv()
        sock.settimeout(None)
        if rep.get("type") != "hello_ok":
            fs.close()
            raise RemoteError(f"peer refused the {channel} connection: {rep.get('message')}")
        fs.hello = rep  # type: ignore[attr-defined]
        # Alice only sends on the quantum connection
        fs.max_frame = pl.HELLO_MAX if channel == "quantum" else pl.CLASSICAL_MAX
        return fs

    def _session(self) -> None:
        c = self.cfg
        sid = uuid.uuid4().hex
        first = self.store.next_block_id()
        pending = self.store.pending_blocks()
        fs_c = self._connect("classical", sid, {"first_block": first,
                                                 "block_pulses": c.block_pulses,
                                                 "model": c.params.model, "pending": pending})
        have = [int(b) for b in fs_c.hello.get("have", [])]  # type: ignore[attr-defined]
        self.store.resolve_pending(have, pending)
        self.store.set_meta("next_block", str(first))
        with self._lock:
            self._records.clear()
            self._pp.clear()
        ep = Endpoint(fs_c, self._handle, f"{c.link}-classical").start()
        try:
            fs_q = self._connect("quantum", sid, {})
        except BaseException:
            ep.close("quantum connection failed")
            raise
        self.classical = ep
        self.sessions += 1
        self.status = "up"
        self.stats.session_started()
        log.info("peer session %s up (first block %d)", sid[:8], first, extra={"link": c.link})
        self.event("qkd_peer_connected", session=sid[:8], first_block=first)
        try:
            self._emit(fs_q, ep, first)
        finally:
            ep.close("session over")
            fs_q.close()
            self._source = None

    def _emit(self, fs_q: FramedSocket, ep: Endpoint, first: int) -> None:
        c = self.cfg
        params = c.params.replace(eve_fraction=self.eve_fraction)
        src = AliceSource(params)
        self._source = src
        rate = c.pulses_per_wall_second
        n_block = c.block_pulses
        frame_pulses = int(max(1, min(MAX_FRAME_PULSES, round(rate * c.frame_s))))
        keep = c.max_inflight_blocks + c.max_queued_blocks + 2
        slot, block = 0, 0
        t0 = time.monotonic()
        while not self.stop_event.is_set() and not ep.closed.is_set():
            self.current_block = first + block
            end = (block + 1) * n_block
            n = min(frame_pulses, end - slot)
            frame = src.emit(n)
            due = t0 + (slot + n) / rate
            now = time.monotonic()
            if due > now:
                if self.stop_event.wait(due - now):
                    break
            elif now - due > 1.0:
                t0 += now - due  # we fell behind (CPU): do not catch up in a burst
            slot += n
            if slot == end:
                # the records must be in place before Bob can see the block's last frame
                # (his sift request may arrive right after it)
                with self._lock:
                    self._records[first + block] = src.take(slot)
            fs_q.send(pack_channel(frame, src.params.eve_fraction))
            self.stats.pulses(n)
            if slot == end:
                bid = first + block
                self.store.set_meta("next_block", str(bid + 1))
                block += 1
                # Bob is behind (CPU): wait instead of piling up records; the lost time
                # shows in the real-time factor
                while self._backlog() >= keep and not ep.closed.is_set() \
                        and not self.stop_event.wait(0.01):
                    pass
                if time.monotonic() - (t0 + slot / rate) > 1.0:
                    t0 = time.monotonic() - slot / rate
        if ep.closed.is_set():
            raise PeerGone(ep.error)

    def oldest_open_block(self) -> int:
        """Lowest block id emitted but not yet post-processed (else the current block)."""
        with self._lock:
            open_ = set(self._records) | set(self._pp)
        return min(open_) if open_ else self.current_block

    def _backlog(self) -> int:
        with self._lock:
            return len(self._records) + len(self._pp)

    # -- requests from Bob --

    def _handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        kind = msg.get("type")
        bid = int(msg["block"])
        if kind == "commit":
            self.store.resolve_pending([bid], [bid])
            return {"type": "commit_reply"}
        with self._lock:
            pp = self._pp.get(bid)
            if pp is None:
                # Bob starts blocks in order (FIFO): records far older than the block he
                # starts now will never be asked for (in-progress blocks are kept)
                horizon = bid - 2 * (self.cfg.max_inflight_blocks + self.cfg.max_queued_blocks)
                for old in [b for b in self._records if b < horizon]:
                    del self._records[old]
                rec = self._records.pop(bid, None)
                if rec is None:
                    raise ValueError(f"block {bid} unknown or expired")
                pp = AlicePostProcessor(self.cfg.params, rec)
                self._pp[bid] = pp
        reply = pp.handle(msg)
        if pp.done:
            with self._lock:
                self._pp.pop(bid, None)
            res = pp.result
            data = key_bytes(res)
            if data:  # stored before Bob learns the block succeeded
                self.store.add_block(bid, data, ready=False)
            self._record(bid, res)
        return reply

    # -- ETSI enc_keys: carve, tell Bob, hand out --

    def sync_unsynced(self) -> None:
        """Tell Bob about carved keys he has not acknowledged (raises PeerGone)."""
        todo = self.store.unsynced()
        if not todo:
            return
        ep = self.classical
        if ep is None or ep.closed.is_set():
            raise PeerGone("peer module not connected")
        for i in range(0, len(todo), 512):
            part = todo[i:i + 512]
            ep.request({"type": "assign", "block": -1,
                        "keys": [{"id": k, "segments": s} for k, s in part]}, timeout=10.0)
            self.store.mark_synced([k for k, _ in part])

    def enc_keys(self, number: int, size_bits: int) -> list[tuple[str, bytes]] | str:
        """Keys for the KM, or the reason there are none (for a 503)."""
        size = size_bits // 8
        with self.key_lock:
            try:
                self.sync_unsynced()
            except (PeerGone, RemoteError) as exc:
                return f"peer module unreachable: {exc}"
            # keys cut earlier whose request failed go first (same IDs at both ends)
            need = number - min(self.store.synced_count(size), number)
            if need:
                if not self.store.carve(need, size):
                    return "not enough key in the module"
                try:
                    self.sync_unsynced()
                except (PeerGone, RemoteError) as exc:
                    return f"peer module unreachable (keys kept for later): {exc}"
            got = self.store.take_synced(number, size)
            return got or "key store changed during the request"


# -------------------------------------------------------------------------------------- Bob

class BobSession:
    """Bob's side of one peer session (its connections, queue and workers)."""

    def __init__(self, sid: str, first_block: int, block_pulses: int, queued: int) -> None:
        self.sid = sid
        self.first_block = first_block
        self.block_pulses = block_pulses
        self.ep: Endpoint | None = None
        self.quantum: FramedSocket | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=queued)
        self.threads: list[threading.Thread] = []
        self.dead = threading.Event()
        self.open: set[int] = set()  # blocks detected but not yet post-processed
        self.open_lock = threading.Lock()


class Bob(Engine):
    """Side b: listens on the p2p address, measures, drives post-processing, stores key."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._session: BobSession | None = None
        self._slock = threading.Lock()
        self._listener: socket.socket | None = None

    def oldest_open_block(self) -> int:
        """Lowest block id detected but not yet post-processed (else the current block)."""
        s = self._session
        if s is not None:
            with s.open_lock:
                if s.open:
                    return min(s.open)
        return self.current_block

    def stop(self) -> None:
        super().stop()
        if self._listener is not None:
            self._listener.close()
        s = self._session
        if s is not None:
            self._end(s, "module stopping")

    def run(self) -> None:
        c = self.cfg
        while not self.stop_event.is_set():
            try:
                ls = socket.create_server((c.local_ipv4, c.peer_port), reuse_port=False)
                break
            except OSError as exc:  # address not configured yet (or port busy): retry
                log.warning("cannot listen on %s:%d: %s", c.local_ipv4, c.peer_port, exc,
                            extra={"link": c.link})
                self.stop_event.wait(2.0)
        else:
            return
        self._listener = ls
        log.info("listening for the peer module on %s:%d", c.local_ipv4, c.peer_port,
                 extra={"link": c.link})
        while not self.stop_event.is_set():
            try:
                sock, addr = ls.accept()
            except OSError:
                break
            threading.Thread(target=self._accept, args=(sock, addr), daemon=True,
                             name=f"hello-{c.link}").start()

    def _accept(self, sock: socket.socket, addr: tuple) -> None:
        c = self.cfg
        if addr[0] != c.peer_ipv4:  # before reading a byte: nothing from strangers
            log.warning("refused a peer connection from %s: the peer of %s is %s", addr[0],
                        c.link, c.peer_ipv4, extra={"link": c.link})
            sock.close()
            return
        fs = FramedSocket(sock)
        try:
            pl.tune(sock)
            sock.settimeout(10.0)
            # a TLS ClientHello starts with 0x16, a frame of a hello with a zero length byte
            tls = c.tls is not None and sock.recv(1, socket.MSG_PEEK) == b"\x16"
            if tls:
                fs = FramedSocket(c.tls.wrap(sock, c.peer, server=True))  # type: ignore
            fs.max_frame = pl.HELLO_MAX
            hello = fs.recv()
            fs.sock.settimeout(None)
            why = pl.check_hello(c.link, c.block_pulses, c.tls is not None, hello, tls,
                                 c.params.model)
            if why:
                fs.send({"type": "hello_error", "message": why})
                fs.close()
                log.warning("refused a peer connection from %s: %s", addr[0], why,
                            extra={"link": c.link})
                return
            if hello["channel"] == "classical":
                fs.max_frame = pl.CLASSICAL_MAX
                self._new_session(fs, hello)
            else:
                self._attach_quantum(fs, hello)
        except (OSError, FrameError, ValueError, KeyError) as exc:
            log.warning("peer handshake from %s failed: %s", addr[0], exc,
                        extra={"link": c.link})
            fs.close()

    def _new_session(self, fs: FramedSocket, hello: dict[str, Any]) -> None:
        c = self.cfg
        with self._slock:
            old = self._session
            if old is not None:
                self._end(old, "peer opened a new session")
                for t in old.threads:
                    t.join(timeout=PP_TIMEOUT_S)
            s = BobSession(str(hello["session"]), int(hello["first_block"]), c.block_pulses,
                            c.max_queued_blocks)
            have = self.store.has_blocks(int(b) for b in hello.get("pending", []))
            fs.send({"type": "hello_ok", "have": have})
            s.ep = Endpoint(fs, self._handle, f"{c.link}-classical").start()
            self._session = s
            self.classical = s.ep
            threading.Thread(target=self._watch, args=(s,), daemon=True).start()

    def _attach_quantum(self, fs: FramedSocket, hello: dict[str, Any]) -> None:
        c = self.cfg
        s = self._session
        if s is None or s.sid != hello.get("session") or s.quantum is not None:
            fs.send({"type": "hello_error", "message": "no classical session for this stream"})
            fs.close()
            return
        fs.send({"type": "hello_ok"})
        fs.max_frame = pl.quantum_frame_max(MAX_FRAME_PULSES)
        s.quantum = fs
        self._start_receiving(s)
        self.status = "up"
        self.sessions += 1
        self.stats.session_started()
        log.info("peer session %s up (first block %d)", s.sid[:8], s.first_block,
                 extra={"link": c.link})
        self.event("qkd_peer_connected", session=s.sid[:8], first_block=s.first_block)

    def _start_receiving(self, s: BobSession) -> None:
        """Threads that measure the channel stream and post-process its blocks."""
        c = self.cfg
        eve_cell = [c.params.eve_fraction]
        s.threads.append(threading.Thread(target=self._receive, args=(s, eve_cell),
                                          daemon=True, name=f"rx-quantum-{c.link}"))
        for i in range(c.max_inflight_blocks):
            s.threads.append(threading.Thread(target=self._worker, args=(s,), daemon=True,
                                              name=f"pp-{c.link}-{i}"))
        for t in s.threads:
            t.start()

    def _watch(self, s: BobSession) -> None:
        assert s.ep is not None
        s.ep.closed.wait()
        self._end(s, s.ep.error)

    def _end(self, s: BobSession, why: str) -> None:
        if s.dead.is_set():
            return
        s.dead.set()
        if s.ep is not None:
            s.ep.close(why)
        if s.quantum is not None:
            s.quantum.close()
        if self._session is s:
            if self.status == "up":
                log.warning("peer session ended: %s", why, extra={"link": self.cfg.link})
                self.event("qkd_peer_lost", reason=why)
            self.status = "connecting"
            self.stats.session_ended()

    def _receive(self, s: BobSession, eve_cell: list) -> None:
        c = self.cfg
        det = BobDetector(c.params)
        n_block = s.block_pulses
        block = 0
        try:
            while not s.dead.is_set():
                msg = s.quantum.recv()  # type: ignore[union-attr]
                if msg.get("type") != "frame":
                    raise FrameError(f"unexpected {msg.get('type')!r} on the quantum channel")
                frame = unpack_channel(msg)
                self.current_block = s.first_block + block
                eve = float(msg.get("eve", 0.0))
                if eve != self.eve_fraction:
                    self.eve_since_block = self.current_block
                self.eve_fraction = eve
                end = (block + 1) * n_block
                if frame.offset + frame.n_pulses > end:
                    raise FrameError("channel frame crosses a block boundary")
                det.detect(frame)
                self.stats.pulses(frame.n_pulses)
                if det.end_slot == end:
                    d = det.take(end)
                    with s.open_lock:
                        s.open.add(s.first_block + block)
                    # a full queue blocks here, so Alice's sends block: honest backpressure
                    while not s.dead.is_set():
                        try:
                            s.queue.put((s.first_block + block, d), timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    block += 1
        except (FrameError, OSError, ValueError) as exc:
            self._end(s, f"quantum channel: {exc}")

    def _worker(self, s: BobSession) -> None:
        while not s.dead.is_set():
            try:
                bid, det = s.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if not s.dead.is_set():
                    self._process(s, bid, det)
            finally:
                with s.open_lock:
                    s.open.discard(bid)

    def _process(self, s: BobSession, bid: int, det: Detections) -> None:
        ep = s.ep
        assert ep is not None

        class _T:
            def request(self, msg: dict[str, Any]) -> dict[str, Any]:
                return ep.request({**msg, "block": bid}, timeout=PP_TIMEOUT_S)

        try:
            res = BobPostProcessor(self.cfg.params, det, _T()).run()
        except (PeerGone, RemoteError) as exc:
            if not s.dead.is_set():
                log.warning("block %d failed: %s", bid, exc, extra={"link": self.cfg.link})
                self.stats.block(0, 0, None, "failed")
            return
        except ValueError as exc:  # e.g. Alice and Bob disagree on the secret length
            log.error("block %d discarded: %s", bid, exc, extra={"link": self.cfg.link})
            self.stats.block(0, 0, None, "failed")
            return
        data = key_bytes(res)
        if data:
            self.store.add_block(bid, data, ready=True)
            try:
                ep.request({"type": "commit", "block": bid}, timeout=PP_TIMEOUT_S)
            except (PeerGone, RemoteError):
                pass  # Alice learns it from the next session's hello
        self._record(bid, res)

    def _handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("type") != "assign":
            raise ValueError(f"unexpected request {msg.get('type')!r} at side b")
        keys = [(str(k["id"]), [tuple(int(x) for x in seg) for seg in k["segments"]])
                for k in msg["keys"]]
        try:
            self.store.assign(keys)
        except StoreError as exc:
            log.error("key assignment refused: %s", exc, extra={"link": self.cfg.link})
            return {"type": "error", "message": str(exc)}
        return {"type": "assign_reply", "count": len(keys)}

    # -- ETSI dec_keys --

    def dec_keys(self, ids: list[str]) -> dict[str, bytes] | None:
        return self.store.take_ids(ids)
