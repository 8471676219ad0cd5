"""The Key Manager's MQTT side speaks qkdtwin.messages: inbound payloads that do not decode
are logged with their reason and dropped (the bus's handler wrapper), the KM keeps working;
outbound payloads are the typed messages."""

from __future__ import annotations

import logging

import pytest

from qkdtwin import bus as topics
from qkdtwin.bus import Bus, Message
from qkdtwin.key_manager.config import parse_config
from qkdtwin.key_manager.manager import KeyManager

pytestmark = pytest.mark.unit


class StubBus:
    """What Control uses of a Bus; handlers run through the real Bus's wrapper."""

    _drop = Bus._drop

    def __init__(self) -> None:
        self._malformed_hooks: list = []
        self.handlers: dict[str, object] = {}
        self.published: list[tuple[str, dict]] = []
        self.connected = True

    def on_malformed(self, hook) -> None:
        self._malformed_hooks.append(hook)

    def subscribe(self, topic_filter, handler, qos=1) -> None:
        self.handlers[topic_filter] = handler

    def start(self, wait: float = 0) -> None:
        pass

    def stop(self) -> None:
        pass

    def publish(self, topic, payload, **kw) -> None:
        self.published.append((topic, payload))

    def event(self, kind, session_id=None, **fields) -> None:
        self.published.append(("event", {"kind": kind, "session_id": session_id, **fields}))

    def deliver(self, topic_filter: str, topic: str, payload) -> None:
        Bus._run_handler(self, self.handlers[topic_filter], Message(topic, payload, None, None))


@pytest.fixture
def km(tmp_path, test_ca):
    node = test_ca.issue("km1", ou="node")
    bus = StubBus()
    km = KeyManager(parse_config({
        "node": "km1", "listen": {"host": "127.0.0.1", "port": 0},
        "tls": {"ca": test_ca.ca, "cert": node.cert, "key": node.key},
        "data_dir": str(tmp_path / "km1"),
        "modules": [{"link": "km0-km1", "peer": "km0", "peer_url": "https://127.0.0.1:1",
                     "module_url": "http://127.0.0.1:1"}]}), bus)
    km.control.start(km.control_in.on_config, km.control_in.on_delete, km.quarantine.on_alarm)
    yield km, bus
    km.control.stop()
    km.store.close()


def _config(sid: str, **over) -> dict:
    return {"type": "session_config", "session_id": sid, "role": "destination",
            "prev_hop": "km0", "next_hop": None, "priority": 5,
            "bucket": {"size_bits": 1000, "rate_bps": 100}, "timeout_s": 60,
            "local_sae_id": "sae-b", "peer_sae_id": "sae-a", "peer_km": "km0", "user": "alice",
            "update": False, "api": "004", **over}


MALFORMED = [
    {"type": "session_delete", "session_id": "s"},          # another type
    {"type": "session_config", "session_id": "s"},          # fields missing
    _config("s", priority="high"),                          # a field of the wrong type
    _config("s", v=2),                                      # unknown schema version
    _config(7),                                             # session_id not a string
]


def test_malformed_payloads_on_every_inbound_topic_are_logged_and_dropped(km, caplog):
    km, bus = km
    config, delete, alarm = (topics.km_config("km1"), topics.km_delete("km1"),
                             topics.alarm("+"))
    caplog.set_level(logging.WARNING, logger="qkdtwin.bus")
    for p in MALFORMED:
        bus.deliver(config, config, p)
    for p in ({"type": "session_delete"}, {"type": "session_delete", "session_id": 3,
                                           "reason": "x"}, {"type": "alarm"}):
        bus.deliver(delete, delete, p)
    for p in ({"type": "alarm", "kind": "clear"}, {"type": "alarm", "link": "km0-km1",
                                                     "kind": 5}, {"type": "telemetry"}):
        bus.deliver(alarm, "qkd/v1/alarm/km0-km1", p)
    drops = [r for r in caplog.records if "dropping malformed message" in r.getMessage()]
    assert len(drops) == len(MALFORMED) + 6
    assert all(r.reason for r in drops)  # each with its reason
    assert km.sessions.all() == [] and km.forwarding.snapshot() == {}
    assert km.alarms.snapshot() == {}
    # nothing but one message_dropped event per topic (and second)
    assert sorted(p["topic"] for _, p in bus.published) == sorted(
        [alarm.replace("+", "km0-km1"), delete, config])
    assert {p["kind"] for _, p in bus.published} == {"message_dropped"}
    bus.published.clear()
    # still working: a valid configuration, alarm and delete are applied
    bus.deliver(config, config, _config("s1"))
    assert km.forwarding.get("s1").prev_hop == "km0"
    s = km.sessions.get("s1")
    assert (s.api, s.bucket.size, s.local_sae_id, s.peer_km) == ("004", 1000, "sae-b", "km0")
    bus.deliver(alarm, "qkd/v1/alarm/km0-km1",
                {"type": "alarm", "link": "km0-km1", "kind": "link_down"})
    assert km.health()["alarms"] == {"km0-km1": "link_down"}
    bus.deliver(delete, delete, {"type": "session_delete", "session_id": "s1",
                                 "reason": "closed"})
    assert km.forwarding.get("s1") is None and s.state == "TERMINATED"
    sent = {p["type"] for t, p in bus.published if t == topics.admission_in("km1")}
    assert sent == {"deletion_confirm"}
    kinds = [p["kind"] for t, p in bus.published if t == "event"]
    assert "session_configured" in kinds and "link_quarantined" in kinds


def test_outbound_payloads_are_typed_messages(km):
    km, bus = km
    km.control.config_request("s", "alice", "sae-a", "sae-b", "014", {"priority": 3})
    km.control.close_request("s", "timeout")
    km.control.key_request("t", 256)
    km.control.key_request("t", 256)
    km.control._flush()
    km.control.telemetry("km0-km1", pool_bits=1024, sessions=1, status="up")
    out = [p for _, p in bus.published if "type" in p]
    assert [p["type"] for p in out] == ["config_request", "close_request", "key_request",
                                         "telemetry"]
    assert all(p["v"] == 1 for p in out)
    assert out[0]["qos"] == {"priority": 3} and out[0]["km"] == "km1"
    assert out[1]["reason"] == "timeout" and out[2]["bits"] == 512
    assert {k: out[3][k] for k in ("source", "node", "link", "pool_bits", "sessions",
                                   "status")} == {"source": "km", "node": "km1",
                                                  "link": "km0-km1", "pool_bits": 1024,
                                                  "sessions": 1, "status": "up"}
