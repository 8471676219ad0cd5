"""Hardened mutual-TLS HTTPS server of the lab's WSGI services (Key Manager, SDN controller).

cheroot keeps what it does well: the WSGI gateway (the same ``SSL_CLIENT_*`` environ keys the
applications read, from :class:`BuiltinSSLAdapter.get_environ`) and the worker thread pool.
What cheroot does badly under attack is the intake: it runs the TLS handshake in its single
accept thread (one idle TCP connection stalls every new one for the socket timeout) and hands
a connection to a worker before a request has arrived (a client that trickles its headers
holds a worker for as long as it likes). :class:`Gate` replaces cheroot's
``ConnectionManager`` (the object that owns the listening socket and the idle keep-alive
connections) with one selector thread that, without blocking on any client:

- accepts, and runs each TLS handshake non-blocking, within ``handshake_timeout``;
- reads each request's head and body (up to ``gate_body_max`` bytes) into memory, within
  ``header_timeout`` of its first byte (of the handshake for a new connection); only a
  *complete* request goes to a worker. Larger or chunked bodies are read by the worker
  (``io_timeout`` per read) for peers only; others get a JSON 413 / 411 from the gate, as a
  head over ``max_head`` gets 431;
- limits connections not (yet) authenticated by a client certificate to ``per_addr`` per
  source address and ``max_connections`` in all: past the limit the *oldest* such
  connection that is not being served is closed, so that a flood evicts itself instead of
  locking out a newcomer;
- keeps ``peer_reserve`` worker threads that only callers whose certificate OU is in
  ``peer_ous`` (peer KMs: ``node``) may take: applications wait in the gate's queue when the
  rest is busy, so KM-to-KM relays are never starved by applications;
- closes keep-alive connections idle for ``idle_timeout``.

Held connections cost a socket and a small buffer each, no thread. Workers and the gate talk
through an inbox drained by the gate thread (woken by a socket pair), so the gate's state is
touched by one thread only.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import selectors
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from cheroot import wsgi
from cheroot.server import HTTPConnection
from cheroot.ssl.builtin import BuiltinSSLAdapter

log = logging.getLogger("qkdtwin.httpserver")

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r\n")
_LISTEN, _WAKE = object(), object()  # selector data of the listening and wake-up sockets
HANDSHAKE, HEAD, WAITING, SERVING = "handshake", "head", "waiting", "serving"


@dataclass(frozen=True)
class Limits:
    """Intake limits (seconds, counts, bytes); see the module docstring."""

    handshake_timeout: float = 5.0
    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    io_timeout: float = 10.0
    per_addr: int = 256
    max_connections: int = 4096
    max_head: int = 64 << 10
    gate_body_max: int = 1 << 20
    peer_reserve: int = 0
    peer_ous: tuple[str, ...] = ()
    max_waiting: int = 1024


class _Slot:
    """One client connection as the gate sees it."""

    __slots__ = ("sock", "addr", "phase", "deadline", "buf", "authed", "peer", "conn",
                 "prefix", "events")

    def __init__(self, sock: ssl.SSLSocket, addr: tuple, deadline: float) -> None:
        self.sock = sock
        self.addr = addr
        self.phase = HANDSHAKE
        self.deadline = deadline
        self.buf = bytearray()
        self.authed = False   # a verified client certificate
        self.peer = False     # ... whose OU is one of Limits.peer_ous
        self.conn: HTTPConnection | None = None
        self.prefix = b""     # bytes the gate read that the worker reads first
        self.events = selectors.EVENT_READ


class _SlotSocket:
    """The TLS socket as the worker's cheroot connection sees it: reads return the bytes the
    gate already read (the request) first. Everything else is the TLS socket's."""

    def __init__(self, slot: _Slot) -> None:
        self._slot = slot
        self._sock = slot.sock

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        prefix = self._slot.prefix
        if prefix:
            n = min(nbytes or len(buffer), len(prefix))
            buffer[:n] = prefix[:n]
            self._slot.prefix = prefix[n:]
            return n
        return self._sock.recv_into(buffer, nbytes)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        prefix = self._slot.prefix
        if prefix:
            self._slot.prefix = prefix[bufsize:]
            return prefix[:bufsize]
        return self._sock.recv(bufsize)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _GatedConnection(HTTPConnection):
    """cheroot's connection that tells the gate when a worker is done with it."""

    gate: Gate

    def communicate(self) -> bool:
        try:
            return super().communicate()
        finally:
            # no wake-up: cheroot's worker hands the connection back (put) or closes it
            # right after this, and that post wakes the gate for both
            self.gate.post("finished", self, wake=False)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.gate.post("closed", self)


class Gate:
    """Drop-in for ``cheroot.connections.ConnectionManager`` (same methods as the server
    calls: ``run``, ``put``, ``stop``, ``close``, ``can_add_keepalive_connection``)."""

    def __init__(self, server: GatedServer, limits: Limits) -> None:
        self.server = server
        self.limits = limits
        self.adapter: BuiltinSSLAdapter = server.ssl_adapter
        self.app_threads = max(1, server.threads - limits.peer_reserve)
        self._sel = selectors.DefaultSelector()
        self._listen = server.socket
        self._listen.setblocking(False)
        self._sel.register(self._listen, selectors.EVENT_READ, _LISTEN)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._slots: dict[int, _Slot] = {}  # id(slot) -> slot, every open connection
        self._by_conn: dict[int, _Slot] = {}  # id(conn) -> slot
        # unauthenticated connections, oldest first: per source address and in all
        self._unauth: dict[str, dict[int, _Slot]] = {}
        self._unauth_all: dict[int, _Slot] = {}
        self._waiting: collections.deque[_Slot] = collections.deque()
        self._app_busy = 0
        self._stop = threading.Event()
        self._serving = False
        self.evicted = 0  # connections closed by the limits (for tests and logs)

    # -- the ConnectionManager interface (called by cheroot's server and workers) --

    can_add_keepalive_connection = True  # the gate bounds connections itself

    def put(self, conn: HTTPConnection) -> None:
        """A worker finished a request on a keep-alive connection: back to the gate, with
        what cheroot's read buffer already holds of the next request."""
        try:
            leftover = conn.rfile.read1(1 << 20) if conn.rfile.has_data() else b""
        except (ssl.SSLError, OSError):
            leftover = b""  # the gate's next read finds the connection broken
        self.post("put", (conn, leftover))

    def post(self, what: str, item: Any, wake: bool = True) -> None:
        self._inbox.append((what, item))
        if not wake:
            return
        try:
            self._wake_w.send(b"\0")
        except OSError:  # wake-up buffer full: the gate is awake anyway
            pass

    def stop(self) -> None:
        self._stop.set()
        self.post("stop", None)
        while self._serving:
            time.sleep(0.01)

    def close(self) -> None:
        for slot in list(self._slots.values()):
            if slot.phase != SERVING:
                self._drop(slot, None)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def run(self, expiration_interval: float) -> None:
        self._serving = True
        try:
            last_sweep = time.monotonic()
            while not self._stop.is_set():
                for key, _ in self._sel.select(timeout=0.25):
                    if key.data is _LISTEN:
                        self._accept()
                    elif key.data is _WAKE:
                        self._drain_inbox()
                    elif key.data.phase == HANDSHAKE:
                        self._handshake(key.data)
                    elif key.data.phase == HEAD:
                        self._read(key.data)
                now = time.monotonic()
                if now - last_sweep >= 0.25:
                    self._sweep(now)
                    last_sweep = now
        finally:
            self._serving = False

    # -- intake --

    def _accept(self) -> None:
        lim = self.limits
        for _ in range(64):
            try:
                raw, addr = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave the backlog for later
                log.warning("accept failed: %s", exc)
                return
            raw.setblocking(False)
            host = addr[0]
            mine = self._unauth.setdefault(host, {})
            if len(mine) >= lim.per_addr and not self._evict(mine, f"per-address limit {host}"):
                raw.close()
                continue
            if len(self._slots) >= lim.max_connections and not self._evict(
                    self._unauth_all, "connection limit"):
                raw.close()
                continue
            sock = self.adapter.context.wrap_socket(raw, server_side=True,
                                                    do_handshake_on_connect=False)
            slot = _Slot(sock, addr, time.monotonic() + lim.handshake_timeout)
            self._slots[id(slot)] = slot
            mine[id(slot)] = slot
            self._unauth_all[id(slot)] = slot
            self._sel.register(sock, selectors.EVENT_READ, slot)

    def _evict(self, pool: dict[int, _Slot], why: str) -> bool:
        """Close the oldest connection of ``pool`` that no worker is serving."""
        for slot in pool.values():
            if slot.phase != SERVING:
                self.evicted += 1
                self._drop(slot, why)
                return True
        return False

    def _handshake(self, slot: _Slot) -> None:
        try:
            slot.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(slot, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(slot, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as exc:  # bad certificate, plain HTTP, reset
            self._drop(slot, f"TLS handshake failed ({exc})")
            return
        self._want(slot, selectors.EVENT_READ)
        cert = slot.sock.getpeercert()
        if cert:
            slot.authed = True
            ous = {v for rdn in cert.get("subject", ()) for k, v in rdn
                   if k == "organizationalUnitName"}
            slot.peer = bool(ous & set(self.limits.peer_ous))
            self._forget_unauth(slot)
        conn = self.server.ConnectionClass(self.server, _SlotSocket(slot), self.adapter.makefile)
        conn.remote_addr, conn.remote_port = slot.addr[0], slot.addr[1]
        conn.ssl_env = self.adapter.get_environ(slot.sock)
        slot.conn = conn
        self._by_conn[id(conn)] = slot
        slot.phase = HEAD
        slot.deadline = time.monotonic() + self.limits.header_timeout
        self._read(slot)

    def _want(self, slot: _Slot, events: int) -> None:
        if slot.events != events:
            slot.events = events
            self._sel.modify(slot.sock, events, slot)

    def _read(self, slot: _Slot) -> None:
        """Read what the client sent; a complete request goes to a worker."""
        lim = self.limits
        while len(slot.buf) <= lim.max_head + lim.gate_body_max:
            try:
                data = slot.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            except (ssl.SSLError, OSError):
                self._drop(slot, None)
                return
            if not data:
                self._drop(slot, None)
                return
            if not slot.buf and slot.deadline - time.monotonic() > lim.header_timeout:
                slot.deadline = time.monotonic() + lim.header_timeout  # a keep-alive request
            slot.buf += data
        ready = self._complete(slot)
        if ready is True:
            self._queue(slot)
        elif ready is not False:
            self._refuse(slot, *ready)

    def _complete(self, slot: _Slot) -> bool | tuple[int, str]:
        """Whether the buffer holds a request a worker can read without waiting for the
        client; or the refusal (status, message) of one the gate does not pass on."""
        buf, lim = slot.buf, self.limits
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return (431, "request head too large") if len(buf) > lim.max_head else False
        head = bytes(buf[:end + 2]).lower()
        m = _CONTENT_LENGTH.search(head)
        length = int(m.group(1)) if m else 0
        if slot.peer:  # peer KMs: large bodies (key batches) are read by the worker
            if length > lim.gate_body_max or b"\r\ntransfer-encoding:" in head:
                return True
        elif b"\r\ntransfer-encoding:" in head:  # a body of unknown length: refused
            return (411, "send the body with a Content-Length")
        elif length > lim.gate_body_max:
            return (413, f"request body larger than {lim.gate_body_max} bytes")
        if len(buf) >= end + 4 + length:
            return True
        expect = head.find(b"\r\nexpect: 100-continue\r\n")
        if expect >= 0 and len(buf) == end + 4:
            # the client waits for this before it sends the body; the worker must not send
            # a second one, so the header goes
            self._send(slot, b"HTTP/1.1 100 Continue\r\n\r\n")
            del buf[expect:expect + len(b"\r\nexpect: 100-continue")]
        return False

    def _send(self, slot: _Slot, data: bytes) -> None:
        """Best effort from the gate (a small write to a fresh TLS connection fits its
        socket buffer); a client that does not read loses it."""
        try:
            slot.sock.send(data)
        except (ssl.SSLError, OSError):
            pass

    def _refuse(self, slot: _Slot, status: int, message: str) -> None:
        body = json.dumps({"message": message}).encode()
        reason = {411: "Length Required", 413: "Content Too Large",
                  431: "Request Header Fields Too Large"}[status]
        self._send(slot, b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                   % (status, reason.encode(), len(body), body))
        self._drop(slot, message)

    def _queue(self, slot: _Slot) -> None:
        self._sel.unregister(slot.sock)
        slot.prefix, slot.buf = bytes(slot.buf), bytearray()
        if slot.peer or self._app_busy < self.app_threads:
            self._start(slot)
        elif len(self._waiting) < self.limits.max_waiting:
            slot.phase = WAITING
            slot.deadline = time.monotonic() + self.limits.header_timeout
            self._waiting.append(slot)
        else:
            self._drop(slot, "too many requests waiting", registered=False)

    def _start(self, slot: _Slot) -> None:
        slot.phase = SERVING
        if not slot.peer:
            self._app_busy += 1
        slot.sock.settimeout(self.limits.io_timeout)  # the worker blocks, within limits
        self.server.process_conn(slot.conn)

    # -- from the workers --

    def _drain_inbox(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._inbox:
            what, item = self._inbox.popleft()
            if what == "finished":
                slot = self._by_conn.get(id(item))
                if slot is not None and not slot.peer:
                    self._app_busy -= 1
                self._next_waiting()
            elif what == "put":
                self._rearm(*item)
            elif what == "closed":
                slot = self._by_conn.pop(id(item), None)
                if slot is not None:
                    self._forget(slot)

    def _next_waiting(self) -> None:
        while self._waiting and self._app_busy < self.app_threads:
            self._start(self._waiting.popleft())

    def _rearm(self, conn: HTTPConnection, leftover: bytes) -> None:
        slot = self._by_conn.get(id(conn))
        if slot is None:
            conn.close()
            return
        slot.sock.setblocking(False)
        slot.phase, slot.buf, slot.events = HEAD, bytearray(leftover), selectors.EVENT_READ
        now = time.monotonic()
        slot.deadline = now + (self.limits.header_timeout if leftover else
                               self.limits.idle_timeout)
        self._sel.register(slot.sock, selectors.EVENT_READ, slot)
        if leftover or slot.sock.pending():  # bytes select() cannot announce
            self._read(slot)

    # -- housekeeping --

    def _sweep(self, now: float) -> None:
        late = [s for s in self._slots.values() if s.phase != SERVING and s.deadline < now]
        for slot in late:
            self._drop(slot, None if slot.phase == HEAD and not slot.buf else
                       f"{slot.phase} timeout")

    def _drop(self, slot: _Slot, why: str | None, registered: bool = True) -> None:
        if why:
            log.info("closing connection from %s: %s", slot.addr[0], why)
        if slot.phase == WAITING:
            self._waiting.remove(slot)
        elif registered and slot.phase != SERVING:
            try:
                self._sel.unregister(slot.sock)
            except (KeyError, ValueError):
                pass
        self._forget(slot)
        if slot.conn is not None:
            self._by_conn.pop(id(slot.conn), None)
        try:
            slot.sock.close()
        except OSError:
            pass

    def _forget(self, slot: _Slot) -> None:
        self._slots.pop(id(slot), None)
        self._forget_unauth(slot)

    def _forget_unauth(self, slot: _Slot) -> None:
        self._unauth_all.pop(id(slot), None)
        mine = self._unauth.get(slot.addr[0])
        if mine is not None:
            mine.pop(id(slot), None)
            if not mine:
                del self._unauth[slot.addr[0]]


class GatedServer(wsgi.Server):
    """cheroot's WSGI server with :class:`Gate` as its connection intake."""

    ConnectionClass = _GatedConnection

    def __init__(self, bind_addr: tuple[str, int], app: Any, *, threads: int, name: str,
                 limits: Limits, **kwargs: Any) -> None:
        # a deep listen backlog: a flood of connects must not make the kernel drop the SYN of
        # a legitimate client (its retry comes a second later)
        super().__init__(bind_addr, app, numthreads=threads, server_name=name,
                         timeout=limits.io_timeout, request_queue_size=1024, **kwargs)
        self.threads = threads
        self.limits = limits
        self.gate: Gate | None = None

    def prepare(self) -> None:
        super().prepare()
        self._connections.close()  # cheroot's own manager: never run
        self.gate = Gate(self, self.limits)
        self.ConnectionClass = type("GatedConnection", (_GatedConnection,), {"gate": self.gate})
        self._connections = self.gate


def make_tls_server(bind_addr: tuple[str, int], app: Any, *, cert: str, key: str, ca: str,
                    threads: int, name: str, require_cert: bool,
                    limits: Limits | None = None) -> GatedServer:
    """A :class:`GatedServer` with mutual TLS against the lab CA: ``require_cert`` False
    lets a caller without a certificate in (the application answers it 401); a certificate
    that does not verify always fails the handshake."""
    server = GatedServer(bind_addr, app, threads=threads, name=name, limits=limits or Limits())
    adapter = BuiltinSSLAdapter(cert, key, certificate_chain=ca)
    adapter.context.verify_mode = ssl.CERT_REQUIRED if require_cert else ssl.CERT_OPTIONAL
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    server.ssl_adapter = adapter
    server.error_log = _error_log
    return server


def _error_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    """cheroot's error log through ``logging``. Clients that drop their connection are one
    line (no stack: they are not errors of the server)."""
    exc = sys.exc_info()[1] if traceback else None
    if isinstance(exc, OSError):  # includes ssl.SSLError: the peer went away
        log.warning("%s (%s: %s)", msg or "connection error", type(exc).__name__, exc)
    elif exc is not None:
        log.error(msg or "server error", exc_info=True)
    else:
        log.log(level, msg)
