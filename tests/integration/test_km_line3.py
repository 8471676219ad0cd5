"""Three Key Manager processes in a line km0 – km1 – km2 on loopback with fake QKD modules,
a real Mosquitto and a stand-in control plane playing access and admission control."""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from qkdtwin.bus import BrokerConfig
from tests.support.fake_control import FakeControl
from tests.support.km_cluster import KmCluster, sae_session

pytestmark = pytest.mark.integration

USERS = {
    "sae-a0": {"user": "alice", "km": "km0"},
    "sae-a1": {"user": "alice", "km": "km1"},
    "sae-a2": {"user": "alice", "km": "km2"},
    "sae-b0": {"user": "bob", "km": "km0", "max_priority": 3},
    "sae-b2": {"user": "bob", "km": "km2"},
    "sae-m2": {"user": "mallory", "km": "km2", "active": False},
}
LINKS = [("km0", "km1"), ("km1", "km2")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    from tests.support.broker import TestBroker
    d = tmp_path_factory.mktemp("line3")
    broker = TestBroker(d / "broker", test_ca).start()
    ident = test_ca.issue("ctl", ou="node")
    ctl = FakeControl(BrokerConfig("127.0.0.1", broker.port, test_ca.ca, ident.cert, ident.key),
                      USERS, LINKS).start()
    cluster = KmCluster(d, test_ca, broker.port, LINKS).start()
    saes = {s: sae_session(test_ca, s, u["user"]) for s, u in USERS.items()}
    yield {"cluster": cluster, "ctl": ctl, "saes": saes, "ca": test_ca, "dir": d}
    cluster.stop()
    ctl.stop()
    broker.stop()


def km(lab, n):
    return lab["cluster"].url(n)


def test_adjacent_014_get_and_post(lab):
    a0, a1 = lab["saes"]["sae-a0"], lab["saes"]["sae-a1"]
    r = a0.get(f"{km(lab, 'km0')}/api/v1/keys/sae-a1/status")
    assert r.status_code == 200, r.text
    st = r.json()
    assert st["source_KME_ID"] == "km0" and st["target_KME_ID"] == "km1"
    assert st["max_SAE_ID_count"] == 0 and st["stored_key_count"] > 0
    r = a0.get(f"{km(lab, 'km0')}/api/v1/keys/sae-a1/enc_keys?number=3&size=512")
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert len(keys) == 3 and all(len(base64.b64decode(k["key"])) == 64 for k in keys)
    r = a0.post(f"{km(lab, 'km0')}/api/v1/keys/sae-a1/enc_keys", json={})
    assert r.status_code == 200
    keys += r.json()["keys"]
    # the slave gets them by ID from its own KM, GET form for one, POST for the rest
    r = a1.get(f"{km(lab, 'km1')}/api/v1/keys/sae-a0/dec_keys?key_ID={keys[0]['key_ID']}")
    assert r.status_code == 200, r.text
    assert r.json()["keys"] == [keys[0]]
    r = a1.post(f"{km(lab, 'km1')}/api/v1/keys/sae-a0/dec_keys",
                json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys[1:]]})
    assert r.status_code == 200, r.text
    assert r.json()["keys"] == keys[1:]
    # delivered once: a second dec_keys finds nothing
    r = a1.post(f"{km(lab, 'km1')}/api/v1/keys/sae-a0/dec_keys",
                json={"key_IDs": [{"key_ID": keys[1]["key_ID"]}]})
    assert r.status_code == 400
    assert r.json()["message"] == "one or more keys specified are not found on KME"


def test_relayed_014(lab):
    a0, a2 = lab["saes"]["sae-a0"], lab["saes"]["sae-a2"]
    r = a0.post(f"{km(lab, 'km0')}/api/v1/keys/sae-a2/enc_keys", json={"number": 4})
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    r = a2.post(f"{km(lab, 'km2')}/api/v1/keys/sae-a0/dec_keys",
                json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
    assert r.status_code == 200, r.text
    assert r.json()["keys"] == keys
    st = a0.get(f"{km(lab, 'km0')}/api/v1/keys/sae-a2/status").json()
    assert st["target_KME_ID"] == "km2"
    time.sleep(0.3)
    kinds = {(e["element"], e["kind"]) for e in lab["ctl"].events}
    assert {("km0", "relay_send"), ("km1", "relay_forward"), ("km1", "relay_send"),
            ("km2", "relay_receive"), ("km0", "relay_ack")} <= kinds


def test_004_pair_same_stream(lab):
    a0, a2 = lab["saes"]["sae-a0"], lab["saes"]["sae-a2"]
    sid = str(uuid.uuid4())
    body = {"source": "sae-a0", "destination": "sae-a2", "key_stream_id": sid,
            "qos": {"key_chunk_size": 32, "timeout": 200, "priority": 4}}
    r0 = a0.post(f"{km(lab, 'km0')}/api/v1/qkd004/open_connect", json=body)
    assert r0.status_code == 200 and r0.json()["status"] == 1, r0.text
    r = a0.post(f"{km(lab, 'km0')}/api/v1/qkd004/get_key", json={"key_stream_id": sid})
    assert r.json()["status"] == 3
    r2 = a2.post(f"{km(lab, 'km2')}/api/v1/qkd004/open_connect",
                 json={**body, "qos": {**body["qos"], "timeout": 3000}})
    assert r2.json()["status"] == 0, r2.text
    assert r2.json()["key_stream_id"] == sid
    got0 = [a0.post(f"{km(lab, 'km0')}/api/v1/qkd004/get_key",
                    json={"key_stream_id": sid}).json() for _ in range(3)]
    got2 = [a2.post(f"{km(lab, 'km2')}/api/v1/qkd004/get_key",
                    json={"key_stream_id": sid, "index": i}).json() for i in range(3)]
    assert [g["status"] for g in got0 + got2] == [0] * 6, (got0, got2)
    assert [g["index"] for g in got0] == [0, 1, 2]
    assert [g["key_buffer"] for g in got0] == [g["key_buffer"] for g in got2]
    assert len(base64.b64decode(got0[0]["key_buffer"])) == 32
    # same index again: never twice
    r = a2.post(f"{km(lab, 'km2')}/api/v1/qkd004/get_key", json={"key_stream_id": sid,
                                                                  "index": 1})
    assert r.status_code == 409 and r.json()["status"] == 10
    # the destination application may run ahead: it asks the source through the path
    ahead = a2.post(f"{km(lab, 'km2')}/api/v1/qkd004/get_key",
                    json={"key_stream_id": sid, "index": 20}).json()
    assert ahead["status"] == 0, ahead
    mine = a0.post(f"{km(lab, 'km0')}/api/v1/qkd004/get_key",
                   json={"key_stream_id": sid, "index": 20}).json()
    assert mine["key_buffer"] == ahead["key_buffer"]
    r = a0.post(f"{km(lab, 'km0')}/api/v1/qkd004/close", json={"key_stream_id": sid})
    assert r.json()["status"] == 0
    deadline = time.time() + 5
    while time.time() < deadline and len([c for c in lab["ctl"].confirms if c[1] == sid]) < 3:
        time.sleep(0.05)
    assert {c[0] for c in lab["ctl"].confirms if c[1] == sid} == {"km0", "km1", "km2"}
    r = a2.post(f"{km(lab, 'km2')}/api/v1/qkd004/get_key", json={"key_stream_id": sid})
    assert r.json()["status"] == 4
