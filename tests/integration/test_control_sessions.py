"""Sessions against squatting, disabled users and borrowed names (issue 13, M3 and M6): the
real control plane (five element processes) with real Key Managers km0 – km1 – km2 on
loopback (fake QKD modules), users managed as `qkdtwin users` does (operator requests on
``access/admin``)."""

from __future__ import annotations

import threading

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from qkdtwin import bus
from qkdtwin import messages as m
from qkdtwin.bus import BrokerConfig
from qkdtwin.control.cli import ask_access
from qkdtwin.key_manager.sessions import session_id_014
from tests.support.control import ControlPlane, broker_cfg, make_bus, wait_for
from tests.support.km_cluster import KmCluster, get_key_until, open_004_pair, sae_session

pytestmark = pytest.mark.integration

LINKS = [("km0", "km1"), ("km1", "km2")]
SLA = {"max_priority": 9, "max_key_rate": 10**6, "max_key_size": 1024, "max_sessions": 8,
       "allowed_destinations": ["*"]}


def pinned_session(ca, sae: str, user: str) -> tuple[requests.Session, str]:
    """An application's client and the SHA-256 fingerprint of its certificate."""
    s = sae_session(ca, sae, user)
    pem = open(s.cert[0], "rb").read()
    return s, x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    from tests.support.broker import TestBroker
    d = tmp_path_factory.mktemp("ctlsessions")
    pinned, fp = pinned_session(test_ca, "sae-p0", "pinned")
    users = [
        {"name": "ops", "status": "active", "sla": SLA,
         "applications": [{"sae_id": "sae-0", "km": "km0"}, {"sae_id": "sae-1", "km": "km1"},
                          {"sae_id": "sae-2", "km": "km2"}]},
        {"name": "research", "status": "active", "sla": SLA,
         "applications": [{"sae_id": "sae-r0", "km": "km0"},
                          {"sae_id": "sae-r2", "km": "km2"}]},
        {"name": "pinned", "status": "active", "sla": SLA,
         "applications": [{"sae_id": "sae-p0", "km": "km0", "fingerprint": fp}]},
    ]
    owner = {a["sae_id"]: u["name"] for u in users for a in u["applications"]}
    broker = TestBroker(d / "broker", test_ca).start()
    plane = ControlPlane(broker, test_ca, d, users, overrides={
        "admission": {"peer_wait_s": 30}})
    cluster = KmCluster(d / "kms", test_ca, broker.port, LINKS,
                        extra={"sdn": {"url": plane.sdn_url}})
    for n in cluster.nodes:
        cluster.start_node(n)
    for n in cluster.nodes:  # generous: the machine is shared
        cluster.wait_healthy(n, timeout=60)
    # every KM registered its node and links at the SDN controller
    wait_for(lambda: plane.health("routing")["links"] == len(LINKS), timeout=15)
    host = make_bus(broker, test_ca, "host")
    events: list[dict] = []
    host.subscribe(f"{bus.PREFIX}/events/#", lambda t, p, msg: events.append(p))
    saes = {s: sae_session(test_ca, s, owner[s]) for s in owner if s != "sae-p0"}
    saes["sae-p0"] = pinned
    operator = BrokerConfig.from_dict(broker_cfg(broker, test_ca, "host"))
    yield {"plane": plane, "cluster": cluster, "saes": saes, "ca": test_ca, "events": events,
           "operator": operator}
    host.stop()
    cluster.stop()
    plane.stop()
    broker.stop()


def url(lab, n):
    return lab["cluster"].url(n)


def enc_keys(lab, sae, km, slave, number=1):
    return lab["saes"][sae].post(f"{url(lab, km)}/api/v1/keys/{slave}/enc_keys",
                                 json={"number": number}, timeout=30)


def open_pair(lab, a, a_km, b, b_km):
    return open_004_pair(lab["saes"][a], url(lab, a_km), a, lab["saes"][b], url(lab, b_km), b)


# -- M6: an ETSI 004 stream cannot squat the id of an ETSI 014 pair -----------------------------

def test_004_stream_cannot_take_the_id_of_a_014_pair(lab):
    """Finding M6: the ETSI 014 session id of a pair was a UUID anyone could compute, and a
    key stream may be opened with any UUID: another user's application opened a stream with
    the id of the sae-0 → sae-1 pair (waiting for its peer, renewed every peer_wait_s) and
    admission refused the pair's own session. Now the spaces are apart."""
    sid = session_id_014("sae-0", "sae-1")
    squat = {"source": "sae-r2", "destination": "sae-r0", "key_stream_id": sid,
             "qos": {"key_chunk_size": 32, "timeout": 300}}
    res: dict = {}

    def attack():  # OPEN_CONNECT blocks up to the QoS timeout waiting for the peer
        res["r"] = lab["saes"]["sae-r2"].post(f"{url(lab, 'km2')}/api/v1/qkd004/open_connect",
                                              json=squat, timeout=30)

    t = threading.Thread(target=attack)
    t.start()
    t.join(30)
    r = enc_keys(lab, "sae-0", "km0", "sae-1", number=2)
    assert r.status_code == 200, r.text  # the pair is not blocked
    keys = r.json()["keys"]
    r = lab["saes"]["sae-1"].post(f"{url(lab, 'km1')}/api/v1/keys/sae-0/dec_keys",
                                  json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
    assert r.status_code == 200 and r.json()["keys"] == keys, r.text
    # the squatter was refused with a clear answer
    assert res["r"].status_code == 400 and res["r"].json()["status"] == 10, res["r"].text
    assert "UUID" in res["r"].json()["message"]


# -- M3: live sessions follow access control ---------------------------------------------------

def terminated_at(lab, sid):
    """The KMs that reported session ``sid`` TERMINATED."""
    return {e["element"] for e in list(lab["events"]) if e.get("kind") == "session_state"
            and e.get("session_id") == sid and e.get("new") == "TERMINATED"}


def test_disabling_a_user_ends_its_live_sessions_at_every_km(lab):
    """Finding M3: live sessions were never authenticated again: a user disabled with
    `qkdtwin users disable` kept receiving keys on its open ETSI 014 session and 004 stream.
    Now access control's retained revocation ends them at every KM of their paths (km1 is a
    transit for both) and the applications are refused from then on."""
    url0, url2 = url(lab, "km0"), url(lab, "km2")
    sid4 = open_pair(lab, "sae-0", "km0", "sae-2", "km2")
    got = get_key_until(lab["saes"]["sae-0"], url0, sid4, patience_s=20).json()
    assert got["status"] == 0, got
    r = enc_keys(lab, "sae-0", "km0", "sae-2", number=2)
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    sid14 = session_id_014("sae-0", "sae-2")
    try:
        # what `qkdtwin users disable LAB ops` sends, as the operator
        assert ask_access(lab["operator"], m.UserDisable(name="ops"))["user"]["status"] \
            == "disabled"
        for sid in (sid4, sid14):
            wait_for(lambda sid=sid: terminated_at(lab, sid) >= {"km0", "km1", "km2"},
                     timeout=10, what=f"{sid} terminated at km0, km1 and km2")
        r = enc_keys(lab, "sae-0", "km0", "sae-2")
        assert r.status_code == 401 and "disabled" in r.json()["message"], r.text
        r = lab["saes"]["sae-2"].post(f"{url2}/api/v1/keys/sae-0/dec_keys",
                                      json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
        assert r.status_code == 401 and "disabled" in r.json()["message"], r.text
        for sae, u in (("sae-0", url0), ("sae-2", url2)):
            r = lab["saes"][sae].post(f"{u}/api/v1/qkd004/get_key",
                                      json={"key_stream_id": sid4})
            assert r.json()["status"] == 4 and "not authorised" in r.json()["message"], r.text
    finally:
        ask_access(lab["operator"], m.UserEnable(name="ops"))
    # enabled again (the retained revocation is cleared): a new session opens
    r = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(
        enc_keys(lab, "sae-0", "km0", "sae-2")), timeout=10, what="keys after enable")
    assert len(r.json()["keys"]) == 1


def test_sessions_are_bound_to_the_certificate_fingerprint(lab):
    """Finding M3: a live session was found from the certificate's CN alone, so another
    certificate with the same CN got its keys even where access control pins the
    application's fingerprint. Now an ETSI 014 request from another certificate is judged by
    access control again, and an ETSI 004 stream answers only the certificate that opened
    its side."""
    legit = lab["saes"]["sae-p0"]
    impostor = sae_session(lab["ca"], "sae-p0", "pinned")  # same CN and O, another key
    r = enc_keys(lab, "sae-p0", "km0", "sae-1")
    assert r.status_code == 200, r.text
    r = impostor.post(f"{url(lab, 'km0')}/api/v1/keys/sae-1/enc_keys", json={}, timeout=30)
    assert r.status_code == 401 and "fingerprint" in r.json()["message"], r.text
    r = impostor.get(f"{url(lab, 'km0')}/api/v1/keys/sae-1/status", timeout=30)
    assert r.status_code == 401, r.text
    sid = open_pair(lab, "sae-p0", "km0", "sae-1", "km1")
    got = get_key_until(legit, url(lab, "km0"), sid, patience_s=20).json()
    assert got["status"] == 0, got
    for op in ("get_key", "close"):
        r = impostor.post(f"{url(lab, 'km0')}/api/v1/qkd004/{op}", json={"key_stream_id": sid},
                          timeout=30)
        assert r.status_code == 403 and r.json()["status"] == 10, r.text
        assert "another certificate" in r.json()["message"]
    # the owner is not disturbed
    got2 = get_key_until(legit, url(lab, "km0"), sid, patience_s=20).json()
    assert got2["status"] == 0 and got2["index"] == got["index"] + 1, got2
    assert enc_keys(lab, "sae-p0", "km0", "sae-1").status_code == 200


def test_revocation_passes_the_lab_broker_rules_and_only_access_control_may_publish_it(
        test_ca, tmp_path):
    """The revocation travels under star6's real broker rules (role mqtt_broker's rendered
    ACL): every KM reads it, and neither a KM nor an application may publish one."""
    from tests.integration.test_identity_attacks import DENIED, STAR6, USERS, Client
    from tests.support.lab_broker import lab_broker
    broker = lab_broker(tmp_path / "broker", test_ca, STAR6).start()
    made: list = []
    plane = None
    try:
        (tmp_path / "plane").mkdir()
        plane = ControlPlane(broker, test_ca, tmp_path / "plane", USERS)
        km1 = Client(broker, test_ca, "km1", "node")
        made.append(km1)
        km1.subscribe(f"{bus.PREFIX}/access/revoked/+")
        op = test_ca.issue("host", ou="operator")
        operator = BrokerConfig("127.0.0.1", broker.port, test_ca.ca, op.cert, op.key)
        user = USERS[0]["name"]
        ask_access(operator, m.UserDisable(name=user))
        wait_for(lambda: any(b'"revocation"' in p and user.encode() in p
                             for p in list(km1.received)), timeout=10, what="revocation")
        app = Client(broker, test_ca, "sae-0", "sae", user)
        made.append(app)
        for c in (km1, app):
            assert c.publish(f"{bus.PREFIX}/access/revoked/{user}", b"") == DENIED
        ask_access(operator, m.UserEnable(name=user))
    finally:
        for c in made:
            c.close()
        if plane is not None:
            plane.stop()
        broker.stop()
