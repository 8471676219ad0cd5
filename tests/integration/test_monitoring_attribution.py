"""Finding M1: the Monitoring Element takes a telemetry sample's node and link from its topic
(which the broker's ACL binds to the publisher), checks the payload against the topology,
and its periodic loop survives any payload.

Real processes: a Mosquitto with a per-node ACL (a KM may write only
``qkd/v1/telemetry/<its CN>/#``), the five control elements (``python -m
qkdtwin.control.<element>``) with star6 registered at the SDN controller, and KM/module
publishers as MQTT clients with their node certificates.
"""

from __future__ import annotations

import time

import pytest
import yaml

from qkdtwin import bus
from qkdtwin import messages as m
from tests.integration.test_control_processes import ROOT
from tests.support.broker import TestBroker
from tests.support.control import ELEMENTS, ControlPlane, make_bus, register_star6, wait_for

pytestmark = pytest.mark.integration

USERS = yaml.safe_load((ROOT / "labs" / "star6.users.yml").read_text())["users"]

# the control elements may write everything; a KM node only its own telemetry and events
ACL = ("pattern read qkd/v1/#\n"
       "pattern write qkd/v1/telemetry/%u/#\n"
       "pattern write qkd/v1/events/%u\n"
       + "".join(f"\nuser {e}\ntopic readwrite qkd/v1/#\n" for e in ELEMENTS))


@pytest.fixture
def plane(tmp_path, test_ca):
    broker = TestBroker(tmp_path / "broker", test_ca, acl=ACL).start()
    pl = ControlPlane(broker, test_ca, tmp_path, USERS)
    try:
        register_star6(pl.sdn_url, test_ca)
        wait_for(lambda: pl.health("routing")["links"] == 6, timeout=10)
        yield pl, broker
    finally:
        pl.stop()
        broker.stop()


def sample(node: str, link: str, qber: float = 0.03) -> dict:
    return m.ModuleTelemetry(source="qkd", node=node, link=link, qber=qber, skr_bps=5000.0,
                             stored_bits=100000, status="up").to_payload()


def monitoring_log(pl) -> str:
    return (pl.dir / "monitoring.log").read_text(errors="replace")


def test_km_cannot_raise_an_alarm_on_a_link_it_does_not_end(plane, test_ca):
    pl, broker = plane
    km0, km1, km2 = (make_bus(broker, test_ca, n) for n in ("km0", "km1", "km2"))
    seen: list[tuple[str, str]] = []  # the alarms km1 receives, as every KM does
    km1.subscribe(bus.alarm("+"), lambda t, p, msg: seen.append((p.get("link"), p.get("kind"))))
    try:
        km0.publish(bus.telemetry("km0", "km0-km1"), sample("km0", "km0-km1"))
        wait_for(lambda: pl.health("monitoring")["links"] >= 1, timeout=15)
        # km2 ends km0-km2 only. On its own topic it names km0-km1 in the payload, it uses
        # km0-km1's topic under its own name, it names a link that does not exist, and it
        # tries km0's topic (the broker's ACL drops that one)
        forged = sample("km2", "km0-km1", qber=0.5)
        km2.publish(bus.telemetry("km2", "km0-km2"), dict(forged))
        km2.publish(bus.telemetry("km2", "km0-km1"), dict(forged))
        km2.publish(bus.telemetry("km2", "km9-km2"), sample("km2", "km9-km2", qber=0.5))
        km2.publish(bus.telemetry("km0", "km0-km1"), sample("km0", "km0-km1", qber=0.5))
        # its own link it still reports: a QBER of 0.2 there is an alarm
        km2.publish(bus.telemetry("km2", "km0-km2"), sample("km2", "km0-km2", qber=0.2))
        wait_for(lambda: ("km0-km2", "qber_high") in seen, timeout=10)
        time.sleep(1.0)  # anything the forged samples caused has arrived by now
        assert pl.health("monitoring")["alarms"] == {"km0-km2": "qber_high"}
        assert [a for a in seen if a[0] != "km0-km2"] == []
        text = monitoring_log(pl)
        assert "published on the topic of node 'km2' link 'km0-km2'" in text
        assert "from node 'km2', which does not end it" in text
        assert "'km9-km2', not a PHYS link of the topology" in text
    finally:
        for b in (km0, km1, km2):
            b.stop()


def test_wildcard_link_name_does_not_stop_link_down_detection(plane, test_ca):
    pl, broker = plane
    km0, km2 = make_bus(broker, test_ca, "km0"), make_bus(broker, test_ca, "km2")
    try:
        # link names an alarm topic cannot carry, in payloads on km2's own topic
        for bad in ("x#y", "a+b", "km0-km2/#"):
            km2.publish(bus.telemetry("km2", "km0-km2"), sample("km2", bad))
        time.sleep(1.0)
        # then km0-km1 reports once and falls silent: after stale_s (5 s) it is down
        km0.publish(bus.telemetry("km0", "km0-km1"), sample("km0", "km0-km1"))
        wait_for(lambda: pl.health("monitoring")["alarms"].get("km0-km1") == "link_down",
                 timeout=20)
        assert pl.procs["monitoring"].poll() is None
        assert "monitoring round of link" not in monitoring_log(pl)
    finally:
        km0.stop()
        km2.stop()
