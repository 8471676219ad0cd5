"""What every control element shares: its name, its broker connection, its data dir, its
``/healthz`` + ``/metrics`` endpoint and the way it runs until SIGTERM.

Configuration keys common to all elements (YAML, rendered by Ansible)::

    element: admission            # MQTT client id / event element; default = the role name
    broker: {host, port, ca, cert, key}
    health: {host: 0.0.0.0, port: 9102}   # port 0 picks a free one (tests)
    data_dir: /var/lib/qkdtwin
    log_level: info
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from qkdtwin import messages as m
from qkdtwin.bounded import RateGate
from qkdtwin.bus import BrokerConfig, Bus
from qkdtwin.errors import UserError
from qkdtwin.messages import BadMessage
from qkdtwin.service import HealthServer

log = logging.getLogger("qkdtwin.control")
COUNTED_TYPES = frozenset({c.TYPE for c in (*m.ADMISSION_IN, *m.ACCESS_IN, *m.ACCESS_ADMIN,
                                             *m.ROUTING_IN, *m.REPLIES, *m.ONE_WAY)}
                          | {"malformed", "topology", "alarm", "telemetry"})


def require(config: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """A config value that must be present and of ``kind``; a UserError otherwise."""
    if key not in config:
        raise UserError(f"config: missing key {key!r}")
    value = config[key]
    if not isinstance(value, kind):
        raise UserError(f"config: {key!r} has the wrong type ({type(value).__name__})")
    return value


def broker_config(config: dict[str, Any]) -> BrokerConfig:
    b = require(config, "broker", dict)
    if "host" not in b:
        raise UserError("config: broker.host is missing")
    for k in ("ca", "cert", "key"):
        if b.get(k) and not Path(b[k]).is_file():
            raise UserError(f"config: broker.{k} file {b[k]} not found")
    try:
        return BrokerConfig.from_dict(b)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config: bad broker section: {exc}") from None


class Element:
    """Base of the five control elements."""

    role = "element"
    default_port: int | None = 0

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.name = str(config.get("element") or self.role)
        self.data_dir = Path(config.get("data_dir") or ".")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"config: data_dir {self.data_dir}: {exc}") from None
        self.registry = CollectorRegistry()
        self.m_messages = Counter("qkdtwin_control_messages", "messages handled",
                                  ["element", "type"], registry=self.registry)
        self.m_up = Gauge("qkdtwin_control_broker_connected", "1 when connected to the broker",
                          ["element"], registry=self.registry)
        self.m_up.labels(self.name).set_function(lambda: 1.0 if self.bus.connected else 0.0)
        self.bus = Bus(broker_config(config), self.name)
        health = config.get("health") or {}
        self.health: HealthServer | None = None
        if self.default_port is not None:  # the SDN controller serves them on its REST app
            try:
                self.health = HealthServer(str(health.get("host", "0.0.0.0")),
                                           int(health.get("port", self.default_port)),
                                           self.registry, self.healthz)
            except (OSError, ValueError, TypeError) as exc:
                raise UserError(f"cannot listen for /healthz: {exc}") from None
        self.started = time.time()
        self._stop = threading.Event()
        self._dropped_gate = RateGate(1.0, 4096)  # one message_dropped per topic and second
        self.bus.on_malformed(self.malformed)

    @property
    def health_port(self) -> int:
        assert self.health is not None
        return self.health._server.server_address[1]

    def healthz(self) -> dict[str, Any]:
        return {"ok": self.bus.connected, "element": self.name, "role": self.role,
                "broker_connected": self.bus.connected}

    def count(self, mtype: str) -> None:
        """Count a handled message; a type no message class has is counted as ``other``
        (the label comes from the payload: one series per invented type would grow without
        end, finding L3)."""
        if mtype not in COUNTED_TYPES:
            mtype = "other"
        self.m_messages.labels(self.name, mtype).inc()

    def malformed(self, topic: str, exc: BadMessage) -> None:
        """A payload refused on ``topic`` (already logged by the bus): counted, and one
        ``message_dropped`` event per topic and second, so garbage cannot flood the events."""
        self.count("malformed")
        if not self._dropped_gate.allow(topic):
            return
        self.event("message_dropped", None, topic=topic, reason=exc.reason,
                   msg_type=exc.msg_type)

    def event(self, kind: str, session_id: str | None = None, **fields: Any) -> None:
        log.info(kind, extra={"session_id": session_id, **fields})
        self.bus.event(kind, session_id, **fields)

    # -- lifecycle --

    def setup(self) -> None:
        """Subscribe topics, open databases (override)."""

    def start(self, wait: float = 10.0) -> Element:
        self.setup()
        if self.health:
            self.health.start()
        self.bus.start(wait=wait)
        self.event("element_started", role=self.role)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.bus.stop()
        if self.health:
            self.health.stop()

    def serve_forever(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.start()
        self._stop.wait()
        self.stop()
