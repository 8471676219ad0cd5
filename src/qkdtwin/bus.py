"""The MQTT bus between control elements and key managers.

Topics follow DESIGN.md §5 under the prefix ``qkd/v1/``. Payloads are JSON objects that
carry ``type``, ``session_id`` (where it applies), ``ts`` and the schema version ``v``; their
definitions are in :mod:`qkdtwin.messages`. The :class:`Bus` wraps a paho
MQTT v5 client over TLS with client certificates and adds what every element needs:

* subscriptions that survive reconnects (the broker may restart at any time),
* handlers run on a worker pool, so a handler may itself make a request,
* request/reply with MQTT v5 response topic and correlation data,
* one-line event publishing on ``qkd/v1/events/<element>``,
* a malformed payload (too large, not JSON, not an object, or refused by a handler's
  :func:`qkdtwin.messages.decode`) is logged with its reason and dropped; no handler error
  reaches the receiving loop,
* bounded queues (finding L3): at most ``MAX_PENDING_HANDLERS`` messages wait for the
  handler pool (more are dropped with a warning, at most one per second), and paho keeps at
  most ``MAX_QUEUED_OUT`` outgoing messages while the broker is away (a publish beyond that
  is dropped with a warning: the state that matters is republished on reconnection).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from qkdtwin.messages import BadMessage, Event, parse_json

PREFIX = "qkd/v1"
log = logging.getLogger("qkdtwin.bus")
MAX_PENDING_HANDLERS = 10000  # received messages queued or running on the handler pool
MAX_QUEUED_OUT = 10000        # outgoing messages paho holds (e.g. while the broker is down)


# --- topics -----------------------------------------------------------------------------

def km_config(km: str) -> str:
    return f"{PREFIX}/km/{km}/config"


def km_delete(km: str) -> str:
    return f"{PREFIX}/km/{km}/delete"


def admission_in(km: str) -> str:
    """KM ``km``'s topic towards Admission Control: the broker's ACL lets that KM alone
    write it, so the topic, not the payload, says which KM is speaking."""
    return f"{PREFIX}/admission/in/{km}"


def admission_in_km(topic: str) -> str | None:
    """The KM whose topic ``topic`` is (None: not an admission/in/<km> topic)."""
    head, _, km = topic.rpartition("/")
    return km if head == f"{PREFIX}/admission/in" and km not in ("", "+", "#") else None


ADMISSION_IN = admission_in("+")  # Admission Control's subscription
# Retained, new on every (re)connection of Admission Control: KMs then check their live
# sessions again (a check sent while admission was down or cut off was lost).
ADMISSION_UP = f"{PREFIX}/admission/up"
ACCESS_IN = f"{PREFIX}/access/in"
# Operator requests (user management): only the operator identity `host` may write here.
ACCESS_ADMIN = f"{PREFIX}/access/admin"
ROUTING_IN = f"{PREFIX}/routing/in"


def access_revoked(user: str) -> str:
    """Retained revocation of a disabled user (access control → every KM)."""
    return f"{PREFIX}/access/revoked/{user}"

TOPOLOGY = f"{PREFIX}/topology"


def telemetry(node: str, link: str) -> str:
    return f"{PREFIX}/telemetry/{node}/{link}"


def alarm(link: str) -> str:
    return f"{PREFIX}/alarm/{link}"


def events(element: str) -> str:
    return f"{PREFIX}/events/{element}"


def reply_prefix(client: str) -> str:
    return f"{PREFIX}/reply/{client}"


# --- configuration -------------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and which TLS identity to present (CN = MQTT username)."""

    host: str
    port: int = 8883
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BrokerConfig:
        return cls(host=d["host"], port=int(d.get("port", 8883)), ca=d.get("ca"),
                   cert=d.get("cert"), key=d.get("key"))


class RequestTimeout(TimeoutError):
    """No reply arrived in time for a request."""


Handler = Callable[[str, dict[str, Any], "Message"], None]


@dataclass
class Message:
    """A received message, with what a responder needs to answer it."""

    topic: str
    payload: dict[str, Any]
    response_topic: str | None
    correlation: bytes | None


def now() -> float:
    return time.time()


class Bus:
    """One element's connection to the broker."""

    def __init__(self, broker: BrokerConfig, client_id: str, *, workers: int = 8) -> None:
        self.broker = broker
        self.client_id = client_id
        self._subs: dict[str, tuple[Handler, int]] = {}
        self._connect_hooks: list[Callable[[], None]] = []
        self._malformed_hooks: list[Callable[[str, BadMessage], None]] = []
        self._pending: dict[bytes, tuple[threading.Event, list]] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"bus-{client_id}")
        self._slots = threading.BoundedSemaphore(MAX_PENDING_HANDLERS)
        self._warned: dict[str, float] = {}  # warning kind -> last time (a fixed set of kinds)
        self._reply_topic = reply_prefix(client_id)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                        client_id=f"{client_id}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
        if broker.ca:
            c.tls_set(ca_certs=broker.ca, certfile=broker.cert, keyfile=broker.key,
                      tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.max_queued_messages_set(MAX_QUEUED_OUT)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._client = c

    # -- lifecycle --

    def start(self, wait: float = 10.0) -> Bus:
        """Connect in the background; wait up to ``wait`` seconds for the first connection."""
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=15)
        self._client.loop_start()
        if wait and not self._connected.wait(wait):
            log.warning("broker %s:%s not reachable yet; retrying in the background",
                        self.broker.host, self.broker.port)
        return self

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused connection: %s", reason_code)
            return
        # Small request/reply messages otherwise wait for delayed ACKs (Nagle): ~40 ms per
        # hop. The broker needs `set_tcp_nodelay true` for the other direction.
        sock = client.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        # Resubscribe everything: the broker may have restarted and lost our session.
        topics = [(self._reply_topic + "/#", 1)] + [(t, q) for t, (_, q) in self._subs.items()]
        client.subscribe(topics)
        self._connected.set()
        log.info("connected to broker %s:%s", self.broker.host, self.broker.port)
        for hook in self._connect_hooks:  # e.g. republish retained state lost by the broker
            self._pool.submit(hook)

    def on_connected(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` (on the worker pool) after every (re)connection."""
        self._connect_hooks.append(hook)

    def on_malformed(self, hook: Callable[[str, BadMessage], None]) -> None:
        """Call ``hook(topic, error)`` for every dropped payload (after it is logged)."""
        self._malformed_hooks.append(hook)

    def _drop(self, topic: str, exc: BadMessage) -> None:
        dropped(topic, exc)
        for hook in self._malformed_hooks:
            try:
                hook(topic, exc)
            except Exception:
                log.exception("malformed-message hook failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if getattr(self, "_stopping", False):
            return  # our own stop(): nothing to warn about
        log.warning("disconnected from broker (%s); reconnecting", reason_code)

    # -- receiving --

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        self._subs[topic_filter] = (handler, qos)
        if self._connected.is_set():
            self._client.subscribe(topic_filter, qos)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            self._dispatch(msg)
        except Exception:  # never let an error reach (and stop) paho's network thread
            log.exception("dispatching a message on %s failed", msg.topic,
                          extra={"topic": msg.topic})

    def _dispatch(self, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = parse_json(msg.payload or b"{}")
        except BadMessage as exc:
            self._drop(msg.topic, exc)
            return
        props = getattr(msg, "properties", None)
        message = Message(
            topic=msg.topic,
            payload=payload,
            response_topic=getattr(props, "ResponseTopic", None),
            correlation=getattr(props, "CorrelationData", None),
        )
        if msg.topic.startswith(self._reply_topic + "/") and message.correlation:
            with self._lock:
                waiter = self._pending.get(message.correlation)
            if waiter:
                waiter[1].append(payload)
                waiter[0].set()
            return
        for topic_filter, (handler, _) in list(self._subs.items()):
            if mqtt.topic_matches_sub(topic_filter, msg.topic):
                if not self._slots.acquire(blocking=False):
                    self._warn("handlers", "handler queue full (%d messages): dropping a"
                               " message on %s", MAX_PENDING_HANDLERS, msg.topic)
                    continue
                try:
                    self._pool.submit(self._run_slotted, handler, message)
                except RuntimeError:  # the pool is shut down (stopping)
                    self._slots.release()

    def _warn(self, kind: str, fmt: str, *args: Any) -> None:
        """A warning of ``kind`` at most once per second (drops come in floods)."""
        now = time.monotonic()
        if now - self._warned.get(kind, -10.0) >= 1.0:
            self._warned[kind] = now
            log.warning(fmt, *args)

    def _run_handler(self, handler: Handler, message: Message) -> None:
        try:
            handler(message.topic, message.payload, message)
        except BadMessage as exc:  # the handler's decode refused the payload
            self._drop(message.topic, exc)
        except Exception:  # a handler bug must not kill the element
            log.exception("handler for %s failed", message.topic,
                          extra={"topic": message.topic})

    def _run_slotted(self, handler: Handler, message: Message) -> None:
        try:
            self._run_handler(handler, message)
        finally:
            self._slots.release()

    # -- sending --

    def publish(self, topic: str, payload: dict[str, Any], *, retain: bool = False, qos: int = 1,
                properties: Properties | None = None) -> None:
        payload.setdefault("ts", now())
        info = self._client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=qos,
                                    retain=retain, properties=properties)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self._warn("queue", "outgoing queue full (%d messages): dropping a message on %s",
                       MAX_QUEUED_OUT, topic)

    def clear_retained(self, topic: str) -> None:
        """Remove the broker's retained message of ``topic`` (an empty retained publish)."""
        self._client.publish(topic, b"", qos=1, retain=True)

    def request(self, topic: str, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Publish a request and wait for its reply (MQTT v5 request/response)."""
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{self._reply_topic}/{uuid.uuid4().hex[:8]}"
        props.CorrelationData = corr
        done = threading.Event()
        box: list = []
        with self._lock:
            self._pending[corr] = (done, box)
        try:
            self.publish(topic, payload, properties=props)
            if not done.wait(timeout):
                raise RequestTimeout(f"no reply on {topic} within {timeout:.1f}s")
            return box[0]
        finally:
            with self._lock:
                self._pending.pop(corr, None)

    def reply(self, message: Message, payload: dict[str, Any]) -> None:
        """Answer a request received with :meth:`subscribe`."""
        if not message.response_topic:
            log.warning("request on %s has no response topic; reply dropped", message.topic)
            return
        props = Properties(PacketTypes.PUBLISH)
        if message.correlation is not None:
            props.CorrelationData = message.correlation
        self.publish(message.response_topic, payload, properties=props)

    def event(self, kind: str, session_id: str | None = None, **fields: Any) -> None:
        """Publish one event of this element on ``qkd/v1/events/<element>``."""
        body = Event(element=self.client_id, kind=kind, session_id=session_id, extra=fields)
        self.publish(events(self.client_id), body.to_payload())


def dropped(topic: str, exc: BadMessage) -> None:
    """Log a refused payload: one warning line with the topic and the reason."""
    log.warning("dropping malformed message on %s: %s", topic, exc.reason,
                extra={"topic": topic, "reason": exc.reason, "msg_type": exc.msg_type})
