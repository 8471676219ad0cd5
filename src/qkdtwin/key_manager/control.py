"""The Key Manager's side of the MQTT contract with the control plane
(docs/architecture.md, "MQTT messages").

Out: ``authenticate`` (req/rep on access/in), ``config_request``, ``key_request`` (coalesced:
at most one per session per second, with the bits summed), ``close_request``,
``deletion_confirm`` and ``config_resync`` on admission/in/<km> (the broker lets only this KM
write there); events on events/<km>;
telemetry per link.
In: ``session_config`` on km/<km>/config, ``session_delete`` on km/<km>/delete, the
retained link alarms on alarm/+ (a (re)connected KM gets every link's current state), the
retained revocations of disabled users on access/revoked/+ (an empty payload: cleared) and
admission's retained ``admission_up`` (a new epoch: admission (re)connected).

Every payload is a :mod:`qkdtwin.messages` class. An inbound payload that does not decode
(not JSON, wrong type, missing or mistyped field, unknown version, too large) raises
``BadMessage`` in its handler, which the bus logs with the reason and drops: the KM's
handlers only ever see typed messages, and the KM keeps working.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from qkdtwin import bus as topics
from qkdtwin.bounded import LruDict, RateGate, TokenBuckets
from qkdtwin.bus import Bus, RequestTimeout
from qkdtwin.messages import (
    AdmissionUp,
    Authenticate,
    AuthResult,
    BadMessage,
    CloseRequest,
    ConfigRequest,
    ConfigResync,
    DeletionConfirm,
    ErrorReply,
    KeyRequest,
    KmTelemetry,
    LinkAlarm,
    Message,
    Revocation,
    SessionConfig,
    SessionDelete,
    decode,
    decode_any,
)

log = logging.getLogger("qkdtwin.key_manager.control")


class ControlUnavailable(Exception):
    """The broker or the control element did not answer in time."""


class LookupThrottled(ControlUnavailable):
    """This certificate asked access control about too many new peers too fast."""


# Bounds of the authentication bookkeeping (finding L3: each dec_keys naming a new master SAE
# added a cache entry, an MQTT request and an access-control event, without end).
AUTH_CACHE_MAX = 4096       # (certificate, peer) answers kept, least recently used dropped
AUTH_REFUSED_S = 5.0        # a refusal is remembered this long (a fixed SAE waits as much)
LOOKUP_BURST = 32           # access-control lookups per certificate at once ...
LOOKUP_RATE = 5.0           # ... and per second after that; beyond: 503 without a lookup
GATE_MAX = 4096             # event gate and dropped-message gate entries


class Control:
    def __init__(self, node: str, bus: Bus | None, timeout_s: float = 5.0,
                 auth_cache_s: float = 30.0) -> None:
        self.node = node
        self._admission = topics.admission_in(node)  # only this KM may write it
        self.bus = bus
        self.timeout_s = timeout_s
        self.auth_cache_s = auth_cache_s
        # (fingerprint, peer) -> (monotonic time, answer): granted / refused, both bounded
        self._auth_cache: LruDict[tuple[str, str | None], tuple[float, AuthResult]] = \
            LruDict(AUTH_CACHE_MAX)
        self._auth_refused: LruDict[tuple[str, str | None], tuple[float, AuthResult]] = \
            LruDict(AUTH_CACHE_MAX)
        self._lookups = TokenBuckets(LOOKUP_BURST, LOOKUP_RATE)
        self._pending_bits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._event_gate = RateGate(0.0, GATE_MAX)
        self._admission_epoch: str | None = None
        self._dropped_gate = RateGate(1.0, GATE_MAX)

    def start(self, on_config: Callable[[SessionConfig], None],
              on_delete: Callable[[SessionDelete], None],
              on_alarm: Callable[[str, LinkAlarm], None] | None = None,
              on_revoked: Callable[[Revocation], None] | None = None,
              held_sessions: Callable[[], list[str]] | None = None) -> Control:
        """``held_sessions``: the live sessions this KM has a forwarding entry for; after
        every (re)connection of this KM, and of admission (a new ``admission_up`` epoch),
        each is checked with admission (``config_resync``), which answers with its config
        or, for a session it ended meanwhile, ``session_delete`` (a KM that was down or cut
        off missed that delete and would keep the session)."""
        if self.bus is not None:
            if held_sessions is not None:
                self.bus.on_connected(lambda: self._check_held(held_sessions()))
                self.bus.subscribe(topics.ADMISSION_UP, lambda t, p, m: self._admission_up(
                    decode(p, AdmissionUp), held_sessions))
            # decode() raises BadMessage on a malformed payload: logged and dropped by the bus
            self.bus.on_malformed(self._malformed)
            self.bus.subscribe(topics.km_config(self.node),
                               lambda t, p, m: on_config(decode(p, SessionConfig)))
            self.bus.subscribe(topics.km_delete(self.node),
                               lambda t, p, m: on_delete(decode(p, SessionDelete)))
            if on_alarm is not None:
                self.bus.subscribe(topics.alarm("+"),
                                   lambda t, p, m: on_alarm(t, decode(p, LinkAlarm)))
            if on_revoked is not None:
                self.bus.subscribe(topics.access_revoked("+"), lambda t, p, m: (
                    on_revoked(decode(p, Revocation)) if p.get("type") else None))
            self.bus.start(wait=5)
        threading.Thread(target=self._flush_loop, daemon=True, name="key-request").start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._flush()
        if self.bus is not None:
            self.bus.stop()

    def _malformed(self, topic: str, exc: BadMessage) -> None:
        """A payload the bus dropped (already logged): one ``message_dropped`` event per topic
        and second, as the control elements publish."""
        if not self._dropped_gate.allow(topic):
            return
        self.event("message_dropped", None, topic=topic, reason=exc.reason,
                   msg_type=exc.msg_type)

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.connected

    def _publish(self, topic: str, msg: Message) -> None:
        if self.bus is None:
            return
        self.bus.publish(topic, msg.to_payload())

    # -- requests ----------------------------------------------------------------------------

    def authenticate(self, cert: dict[str, str], peer_sae_id: str | None,
                     session_id: str | None = None) -> AuthResult:
        """Ask access control whether this certificate's SAE may talk to ``peer_sae_id``
        (``session_id``: the session it asks for, named in access control's event). A
        malformed answer is logged and counts as none."""
        key = (cert["fingerprint"], peer_sae_id)
        now = time.monotonic()
        with self._lock:
            hit = self._auth_cache.get(key)
            if hit and now - hit[0] < self.auth_cache_s:
                self._auth_cache.touch(key)
                return hit[1]
            no = self._auth_refused.get(key)
            if no and now - no[0] < AUTH_REFUSED_S:
                return no[1]
        if self.bus is None or not self.bus.connected:
            raise ControlUnavailable("control plane unreachable (no broker connection)")
        if not self._lookups.take(cert["fingerprint"]):
            raise LookupThrottled("too many access-control lookups for this certificate;"
                                  " retry later")
        try:
            raw = self.bus.request(topics.ACCESS_IN, Authenticate(
                km=self.node, sae_id=cert["cn"], cert=cert, peer_sae_id=peer_sae_id,
                session_id=session_id).to_payload(), timeout=self.timeout_s)
        except RequestTimeout:
            raise ControlUnavailable("access control did not answer in time") from None
        try:
            rep = decode_any(raw, (AuthResult, ErrorReply))
        except BadMessage as exc:
            log.warning("dropping malformed answer of access control: %s", exc.reason,
                        extra={"reason": exc.reason, "session_id": session_id})
            raise ControlUnavailable("access control did not answer in time") from None
        if isinstance(rep, ErrorReply):
            rep = AuthResult(ok=False, reason=rep.reason)
        with self._lock:
            if rep.ok:
                self._auth_cache[key] = (now, rep)
                self._auth_refused.pop(key, None)
            else:
                self._auth_refused[key] = (now, rep)
        return rep

    def forget_auth(self, user: str, sae_ids: set[str]) -> None:
        """Drop the cached authentications of ``user`` and of applications ``sae_ids``."""
        with self._lock:
            for k in [k for k, (_, rep) in self._auth_cache.items()
                      if rep.user == user or rep.sae_id in sae_ids]:
                del self._auth_cache[k]

    def config_request(self, session_id: str, user: str, sae_id: str, peer_sae_id: str,
                       api: str, qos: dict[str, Any]) -> None:
        if self.bus is None or not self.bus.connected:
            raise ControlUnavailable("control plane unreachable (no broker connection)")
        self._publish(self._admission, ConfigRequest(
            km=self.node, session_id=session_id, user=user, sae_id=sae_id,
            peer_sae_id=peer_sae_id, api=api, qos=qos))

    def config_resync(self, session_id: str, why: str = "unknown_session") -> None:
        """Ask admission to send this KM's session_config of a live session again."""
        self._publish(self._admission, ConfigResync(km=self.node, session_id=session_id))
        self.event("config_resync", session_id, why=why)

    def _check_held(self, session_ids: list[str], why: str = "connected") -> None:
        for sid in session_ids:
            self.config_resync(sid, why=why)

    def _admission_up(self, up: AdmissionUp, held_sessions: Callable[[], list[str]]) -> None:
        """The first epoch seen is the one this KM's own connection check already met; a
        later, different one means admission came back and may have missed that check."""
        with self._lock:
            seen, self._admission_epoch = self._admission_epoch, up.epoch
        if seen is not None and seen != up.epoch:
            self._check_held(held_sessions(), why="admission_up")

    def key_request(self, session_id: str, bits: int) -> None:
        with self._lock:
            self._pending_bits[session_id] = self._pending_bits.get(session_id, 0) + bits

    def close_request(self, session_id: str, reason: str = "closed") -> None:
        with self._lock:
            self._pending_bits.pop(session_id, None)
        self._publish(self._admission, CloseRequest(km=self.node, session_id=session_id,
                                                        reason=reason))

    def deletion_confirm(self, session_id: str) -> None:
        self._publish(self._admission, DeletionConfirm(km=self.node, session_id=session_id))

    def event(self, kind: str, session_id: str | None = None, *, gate_s: float = 0.0,
              **fields: Any) -> None:
        """Publish an event; with ``gate_s`` at most one of this kind per session per gate_s."""
        if self.bus is None:
            return
        if gate_s and not self._event_gate.allow((kind, session_id or ""), gate_s):
            return
        self.bus.event(kind, session_id, **fields)

    def telemetry(self, link: str, pool_bits: float, sessions: int, status: str) -> None:
        # status: the link pool's, sent as before as an extra field of the KM's sample
        self._publish(topics.telemetry(self.node, link), KmTelemetry(
            source="km", node=self.node, link=link, pool_bits=pool_bits, sessions=sessions,
            extra={"status": status}))

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending_bits = self._pending_bits, {}
        for sid, bits in pending.items():
            self._publish(self._admission, KeyRequest(km=self.node, session_id=sid,
                                                          bits=bits))

    def _flush_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._flush()
            except Exception:
                log.exception("key_request flush failed")
