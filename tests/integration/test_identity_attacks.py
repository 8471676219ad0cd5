"""Attacks on identity and ownership against real processes (issue 13: H2, M2, M4): the
control elements as processes (`python -m qkdtwin.control.<element>`) on a real Mosquitto,
certificates of a lab CA, and what a stolen or misnamed certificate may still do."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import requests
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from qkdtwin import messages as m
from qkdtwin.etsi015 import SDN_BASE as BASE
from tests.support.control import ControlPlane, FakeKM, register_star6, wait_for
from tests.support.lab_broker import lab_broker

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

STAR6 = ROOT / "labs" / "star6.clab.yml"
USERS = yaml.safe_load((ROOT / "labs" / "star6.users.yml").read_text())["users"]


def _sdn(plane, ca, cn: str, ou: str, method: str, path: str, **kw) -> requests.Response:
    ident = ca.issue(cn, ou=ou, o="ops" if ou == "sae" else None)
    return requests.request(method, f"{plane.sdn_url}{BASE}{path}", cert=(ident.cert, ident.key),
                            verify=ca.ca, timeout=10, **kw)


def _links(plane, ca) -> dict[str, tuple[str, str]]:
    r = _sdn(plane, ca, "host", "operator", "GET", "")
    assert r.status_code == 200, r.text
    return {lk["qkdl_id"]: (lk["qkdl_type"], lk["qkdl_status"])
            for n in r.json()["qkd_node"] for lk in n["qkd_links"]["qkd_link"]}


@pytest.fixture
def plane(broker, test_ca, tmp_path):
    pl = ControlPlane(broker, test_ca, tmp_path, USERS)
    register_star6(pl.sdn_url, test_ca)
    wait_for(lambda: pl.health("routing")["links"] == 6, timeout=15)
    yield pl
    pl.stop()


def _link(lid: str, local: str, remote: str, status: str = "down", kind: str = "PHYS"):
    return {"qkd_link": {"qkdl_id": lid, "qkdl_type": kind, "qkdl_status": status,
                         "qkdl_local": {"qkdn_id": local}, "qkdl_remote": {"qkdn_id": remote}}}


def test_h2_only_a_node_of_the_inventory_writes_and_only_links_it_ends(plane, test_ca):
    before = _links(plane, test_ca)
    assert before["km0-km1"] == ("PHYS", "up")
    km01 = "/qkd_links/qkd_link/km0-km1"
    attacks = [
        # an application certificate named like a KM, or through its own CN in the URL
        ("km0", "sae", "DELETE", f"/km0{km01}", None),
        ("sae-0", "sae", "DELETE", f"/sae-0{km01}", None),
        ("sae-0", "sae", "PUT", f"/sae-0{km01}", _link("km0-km1", "sae-0", "km1")),
        ("sae-0", "sae", "PUT", "/km0", {"qkd_node": {"qkdn_id": "km0", "qkd_links": {
            "qkd_link": [_link("km0-km1", "km0", "km1")["qkd_link"]]}}}),
        # a node certificate for a link it does not end
        ("km3", "node", "DELETE", f"/km3{km01}", None),
        ("km3", "node", "PUT", f"/km3{km01}", _link("km0-km1", "km3", "km1")),
        ("km3", "node", "PUT", f"/km3{km01}", _link("km0-km1", "km0", "km1")),
        ("km3", "node", "PUT", "/km3", {"qkd_node": {"qkdn_id": "km3", "qkd_links": {
            "qkd_link": [_link("km0-km1", "km0", "km1")["qkd_link"]]}}}),
        # a node certificate of a node the inventory does not have
        ("km9", "node", "PUT", f"/km9{km01}", _link("km0-km1", "km9", "km1")),
        # admission control writes VIRT links, never a PHYS one
        ("admission", "node", "DELETE", f"/km0{km01}", None),
        ("admission", "node", "PUT", f"/km0{km01}", _link("km0-km1", "km0", "km1", "down",
                                                          "VIRT")),
    ]
    for cn, ou, method, path, body in attacks:
        r = _sdn(plane, test_ca, cn, ou, method, path, json=body)
        assert r.status_code == 403, (cn, ou, method, path, r.status_code, r.text)
        assert r.json()["message"], (cn, method, path)
    assert _links(plane, test_ca) == before
    # What is allowed still works: the link's own end takes it down, admission a VIRT link.
    assert _sdn(plane, test_ca, "km1", "node", "PUT", f"/km1{km01}",
                json=_link("km0-km1", "km1", "km0")).status_code == 200
    virt = _link("virt-s1", "km2", "km3", "up", "VIRT")
    assert _sdn(plane, test_ca, "admission", "node", "PUT", "/km2/qkd_links/qkd_link/virt-s1",
                json=virt).status_code == 200
    after = _links(plane, test_ca)
    assert after["km0-km1"] == ("PHYS", "down") and after["virt-s1"] == ("VIRT", "up")
    # ...and a node may not touch admission's VIRT link even where it is an end.
    r = _sdn(plane, test_ca, "km2", "node", "DELETE", "/km2/qkd_links/qkd_link/virt-s1")
    assert r.status_code == 403 and "VIRT" in r.json()["message"]


# --------------------------------------------------------------------------- M4: broker


class Client:
    """A paho MQTT v5 client with a certificate of the test CA (CN, OU, O chosen)."""

    def __init__(self, broker, ca, cn: str, ou: str, o: str | None = None) -> None:
        ident = ca.issue(cn, ou=ou, o=o)
        self.received: list[bytes] = []
        self.puback: dict[int, int] = {}
        self.cond = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:12],
                             protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=ca.ca, certfile=ident.cert, keyfile=ident.key)
        self.c.on_message = lambda c, u, msg: self._note(lambda: self.received.append(
            msg.payload))
        self.c.on_publish = lambda c, u, mid, rc, p: self._note(
            lambda: self.puback.__setitem__(mid, rc.value))
        self.c.connect("127.0.0.1", broker.port, keepalive=10)
        self.c.loop_start()
        deadline = time.monotonic() + 15
        while not self.c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.c.is_connected(), f"{cn}/{ou} could not connect"

    def _note(self, change) -> None:
        with self.cond:
            change()
            self.cond.notify_all()

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        """QoS 1; the PUBACK reason code (135: not authorized; 16: no subscribers)."""
        info = self.c.publish(topic, payload, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: info.mid in self.puback, timeout=15)
            return self.puback[info.mid]

    def subscribe(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)
        time.sleep(0.3)

    def got(self, payload: bytes, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: payload in self.received, timeout=timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


OK = (0, 16)  # accepted (16: accepted, nobody subscribed)
DENIED = 135


@pytest.fixture
def lab_acl_broker(test_ca, tmp_path):
    b = lab_broker(tmp_path / "broker", test_ca, STAR6).start()
    yield b
    b.stop()


@pytest.fixture
def clients(lab_acl_broker, test_ca):
    made: list[Client] = []

    def make(cn: str, ou: str, o: str | None = None) -> Client:
        made.append(Client(lab_acl_broker, test_ca, cn, ou, o))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_m4_application_certificate_named_like_a_node_gets_none_of_its_broker_rights(
        clients):
    """star6's broker rules (role mqtt_broker): an application certificate (OU sae) whose CN
    is a KM's, `host` or `admission` may neither publish as them nor read their topics."""
    operator = clients("host", "operator")
    km1 = clients("km1", "node")
    km1.subscribe("qkd/v1/km/km1/#")
    fake_km1 = clients("km1", "sae", "ops")
    fake_km1.subscribe("qkd/v1/km/km1/#")
    for topic in ("qkd/v1/telemetry/km1/km0-km1", "qkd/v1/events/km1",
                  "qkd/v1/admission/in", "qkd/v1/admission/in/km1", "qkd/v1/access/in"):
        assert fake_km1.publish(topic) == DENIED, topic
    fake_host = clients("host", "sae", "ops")
    fake_admission = clients("admission", "sae", "ops")
    for c, topic in ((fake_host, "qkd/v1/km/km1/config"), (fake_host, "qkd/v1/topology"),
                     (fake_host, "qkd/v1/access/admin"),
                     (fake_admission, "qkd/v1/km/km1/delete"),
                     (fake_admission, "qkd/v1/km/km1/config")):
        assert c.publish(topic) == DENIED, topic
    # The real ones keep their rights, and only km1's certificate reads km1's topics.
    assert km1.publish("qkd/v1/telemetry/km1/km0-km1") in OK
    assert clients("admission", "node").publish("qkd/v1/km/km1/config") in OK
    secret = f"config-{uuid.uuid4().hex}".encode()
    assert operator.publish("qkd/v1/km/km1/config", secret) in OK
    assert km1.got(secret, timeout=10)
    marker = f"marker-{uuid.uuid4().hex}".encode()
    assert operator.publish("qkd/v1/km/km1/config", marker) in OK
    assert km1.got(marker, timeout=10)
    assert not fake_km1.got(secret, timeout=1)


# --------------------------------------------------------------------------- M2: admission


@pytest.fixture
def acl_plane(lab_acl_broker, test_ca, tmp_path):
    """The control plane behind star6's broker rules, with KMs km0 and km1."""
    (tmp_path / "plane").mkdir()
    pl = ControlPlane(lab_acl_broker, test_ca, tmp_path / "plane", USERS)
    register_star6(pl.sdn_url, test_ca)
    wait_for(lambda: pl.health("routing")["links"] == 6, timeout=15)
    kms = {k: FakeKM(lab_acl_broker, test_ca, k) for k in ("km0", "km1")}
    yield pl, kms
    for k in kms.values():
        k.stop()
    pl.stop()


def test_m2_a_km_cannot_close_or_open_sessions_it_is_not_on(acl_plane, clients):
    """km2's own certificate (a compromised KM) speaks for km0 and about km0-km1's session:
    the broker binds the publisher to its topic, and admission wants it on the path."""
    plane, kms = acl_plane
    events: list[dict] = []
    watch = clients("host", "operator")
    watch.c.on_message = lambda c, u, msg: watch._note(lambda: events.append(
        json.loads(msg.payload)))
    watch.subscribe("qkd/v1/events/admission")
    sid = kms["km0"].open("sae-0", "sae-1", "ops", max_bps=2048)
    kms["km1"].open("sae-1", "sae-0", "ops", session_id=sid, max_bps=2048)
    wait_for(lambda: kms["km0"].config_for(sid) and kms["km1"].config_for(sid), timeout=15)
    assert plane.health("admission")["sessions"] == {"active": 1}

    km2 = clients("km2", "node")

    def close(km: str) -> bytes:
        return json.dumps(m.CloseRequest(km=km, session_id=sid).to_payload()).encode()

    codes = {
        "old topic, as km0": km2.publish("qkd/v1/admission/in", close("km0")),
        "km0's topic": km2.publish("qkd/v1/admission/in/km0", close("km0")),
        "own topic, as km0": km2.publish("qkd/v1/admission/in/km2", close("km0")),
        "own topic, as itself": km2.publish("qkd/v1/admission/in/km2", close("km2")),
        "a session for km0's application": km2.publish(
            "qkd/v1/admission/in/km2", json.dumps(m.ConfigRequest(
                km="km2", session_id=str(uuid.uuid4()), user="ops", sae_id="sae-0",
                peer_sae_id="sae-1", api="014", qos={}).to_payload()).encode()),
    }
    # admission reads what got through (the two on km2's own topic) and refuses it
    refused = {"message_refused", "session_rejected"}
    with watch.cond:
        watch.cond.wait_for(lambda: refused <= {e.get("kind") for e in events
                                                if e.get("km") == "km2"}, timeout=15)
    time.sleep(1.0)  # and anything else it might have acted on
    assert plane.health("admission")["sessions"] == {"active": 1}, codes
    assert kms["km0"].deleted(sid) is None and kms["km1"].deleted(sid) is None
    assert codes["old topic, as km0"] == DENIED and codes["km0's topic"] == DENIED, codes
    assert refused <= {e.get("kind") for e in events if e.get("km") == "km2"}, events
    rejected = next(e for e in events if e.get("kind") == "session_rejected")
    assert "attached to km0, not km2" in rejected["reason"]
    # The session's own KM still closes it.
    kms["km0"].close(sid)
    wait_for(lambda: kms["km1"].deleted(sid), timeout=15)
