import threading

import pytest

from qkdtwin import bus
from qkdtwin.bus import BrokerConfig, Bus

pytestmark = pytest.mark.unit


def make_bus(broker, test_ca, name):
    ident = test_ca.issue(name)
    cfg = BrokerConfig(host="127.0.0.1", port=broker.port, ca=test_ca.ca, cert=ident.cert,
                       key=ident.key)
    b = Bus(cfg, name).start()
    assert b.wait_connected(5)
    return b


def test_request_reply_and_events(broker, test_ca):
    server = make_bus(broker, test_ca, "access")
    client = make_bus(broker, test_ca, "km0")
    seen = []
    got_event = threading.Event()

    def on_auth(topic, payload, msg):
        server.reply(msg, {"type": "auth_result", "ok": payload["user"] == "ops"})

    server.subscribe(bus.ACCESS_IN, on_auth)
    server.subscribe(bus.events("km0"), lambda t, p, m: (seen.append(p), got_event.set()))
    import time
    time.sleep(0.3)
    assert client.request(bus.ACCESS_IN, {"type": "auth", "user": "ops"})["ok"] is True
    assert client.request(bus.ACCESS_IN, {"type": "auth", "user": "eve"})["ok"] is False
    client.event("request_arrival", session_id="s1", sae="sae-0")
    assert got_event.wait(5)
    assert seen[0]["kind"] == "request_arrival" and seen[0]["element"] == "km0"
    assert seen[0]["session_id"] == "s1"
    client.stop()
    server.stop()


def test_request_times_out_without_responder(broker, test_ca):
    client = make_bus(broker, test_ca, "km1")
    with pytest.raises(bus.RequestTimeout):
        client.request(bus.ROUTING_IN, {"type": "path"}, timeout=0.5)
    client.stop()


def test_subscriptions_survive_broker_restart(broker, test_ca):
    sub = make_bus(broker, test_ca, "admission")
    pub = make_bus(broker, test_ca, "km2")
    got = threading.Event()
    sub.subscribe(bus.ADMISSION_IN, lambda t, p, m: got.set())
    broker.restart()
    import time
    deadline = time.time() + 15
    while time.time() < deadline and not got.is_set():
        if sub.connected and pub.connected:
            pub.publish(bus.admission_in("km0"), {"type": "ping"})
        time.sleep(0.5)
    assert got.is_set()
    sub.stop()
    pub.stop()
