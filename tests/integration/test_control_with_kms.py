"""The real control plane (five element processes) with the real Key Managers
(`python -m qkdtwin.key_manager`, fake QKD modules) on loopback: the two implementations of
the MQTT contract and the SDN REST working together. Topology: km0 in the middle of km1,
km2, km3, plus an extra link km2-km3 (a small star6)."""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from qkdtwin import bus
from tests.support.control import ControlPlane, make_bus, telemetry, wait_for
from tests.support.km_cluster import KmCluster, get_key_until, open_004_pair, sae_session

pytestmark = pytest.mark.integration

LINKS = [("km0", "km1"), ("km0", "km2"), ("km0", "km3"), ("km2", "km3")]
SLA = {"max_priority": 9, "max_key_rate": 65536, "max_key_size": 1024, "max_sessions": 8,
       "allowed_destinations": ["*"]}
USERS = [
    {"name": "ops", "status": "active", "sla": SLA,
     "applications": [{"sae_id": "sae-0", "km": "km0"}, {"sae_id": "sae-1", "km": "km1"}]},
    {"name": "research", "status": "active", "sla": {**SLA, "max_priority": 5},
     "applications": [{"sae_id": "sae-2", "km": "km2"}, {"sae_id": "sae-3", "km": "km3"}]},
    {"name": "mallory", "status": "disabled", "sla": SLA,
     "applications": [{"sae_id": "sae-9", "km": "km1"}]},
]
OWNER = {a["sae_id"]: u["name"] for u in USERS for a in u["applications"]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    from tests.support.broker import TestBroker
    d = tmp_path_factory.mktemp("ctlkm")
    broker = TestBroker(d / "broker", test_ca).start()
    plane = ControlPlane(broker, test_ca, d, USERS, overrides={
        "admission": {"peer_wait_s": 30},
        "monitoring": {"links": {"km2-km3": {"intrinsic_qber": 0.03}}}})
    cluster = KmCluster(d / "kms", test_ca, broker.port, LINKS,
                        extra={"sdn": {"url": plane.sdn_url}})
    for n in cluster.nodes:
        cluster.start_node(n)
    for n in cluster.nodes:  # generous: the machine is shared
        cluster.wait_healthy(n, timeout=60)
    host = make_bus(broker, test_ca, "host")
    # every KM registered its node and PHYS links at the SDN controller
    wait_for(lambda: plane.health("routing")["links"] == 4, timeout=15)
    saes = {s: sae_session(test_ca, s, OWNER[s]) for s in OWNER}
    yield {"plane": plane, "cluster": cluster, "host": host, "saes": saes, "broker": broker}
    host.stop()
    cluster.stop()
    plane.stop()
    broker.stop()


def view(lab):
    return lab["host"].request(bus.ROUTING_IN, {"type": "topology_view"})


def open_pair(lab, a_km, a, b_km, b, **qos):
    url = lab["cluster"].url
    return open_004_pair(lab["saes"][a], url(a_km), a, lab["saes"][b], url(b_km), b, **qos)


def keys(lab, km, sae, sid, indexes, patience_s=20.0):
    """GET_KEY each index; status 2 (no key yet: the relay is still under way after the
    short QoS timeout) is asked again, as an application would, for up to ``patience_s``."""
    out = []
    for i in indexes:
        body = get_key_until(lab["saes"][sae], lab["cluster"].url(km), sid, i,
                             patience_s=patience_s).json()
        assert body["status"] == 0, body
        out.append(body["key_buffer"])
    return out


def next_keys(lab, km, sae, sid, n, patience_s=20.0):
    """GET_KEY without index ``n`` times: [(index, key_buffer)]."""
    out = []
    for _ in range(n):
        body = get_key_until(lab["saes"][sae], lab["cluster"].url(km), sid,
                             patience_s=patience_s).json()
        assert body["status"] == 0, body
        out.append((body["index"], body["key_buffer"]))
    return out


def test_relayed_004_session_through_km0_and_close(lab):
    sid = open_pair(lab, "km1", "sae-1", "km2", "sae-2")
    res = view(lab)["reservations"][sid]
    assert sorted(res["links"]) == ["km0-km1", "km0-km2"]  # relayed: a star has no other path
    k1 = keys(lab, "km1", "sae-1", sid, range(3))
    k2 = keys(lab, "km2", "sae-2", sid, range(3))
    assert k1 == k2 and len(base64.b64decode(k1[0])) == 32
    assert lab["plane"].health("admission")["sessions"].get("active") == 1
    r = lab["saes"]["sae-2"].post(f"{lab['cluster'].url('km2')}/api/v1/qkd004/close",
                                  json={"key_stream_id": sid})
    assert r.json()["status"] == 0
    # admission deleted it on km1, km0 and km2 and collected the three confirmations
    wait_for(lambda: lab["plane"].health("admission")["sessions"] == {}, timeout=10)
    assert sid not in view(lab)["reservations"]


def test_transit_km_that_missed_a_delete_drops_that_session_and_keeps_the_other(lab):
    """km0 relays two streams and is SIGKILLed; one stream is closed meanwhile, so its
    session_delete to km0 is lost and admission gives up on km0's confirmation. Restarted,
    km0 restores both from km.sqlite; it must end the closed one (the soak's session_stuck)
    and keep relaying the other."""
    cluster, plane = lab["cluster"], lab["plane"]
    gone = open_pair(lab, "km1", "sae-1", "km2", "sae-2")
    kept = open_pair(lab, "km1", "sae-1", "km3", "sae-3")
    assert keys(lab, "km1", "sae-1", kept, range(2)) == keys(lab, "km3", "sae-3", kept, range(2))
    assert keys(lab, "km1", "sae-1", gone, range(1)) == keys(lab, "km2", "sae-2", gone, range(1))
    wait_for(lambda: cluster.health("km0")["sessions"].get("OPERATIVE") == 2, timeout=10)

    cluster.kill("km0")
    r = lab["saes"]["sae-2"].post(f"{cluster.url('km2')}/api/v1/qkd004/close",
                                  json={"key_stream_id": gone})
    assert r.json()["status"] == 0
    # km1 and km2 confirm, km0 cannot: after confirm_timeout_s admission ends it anyway
    wait_for(lambda: plane.health("admission")["sessions"] == {"active": 1}, timeout=20)

    cluster.start_node("km0")
    cluster.wait_healthy("km0", timeout=60)
    # the closed stream is gone at km0 (deleted, not restored as live), the kept one stays
    wait_for(lambda: cluster.health("km0")["sessions"].get("OPERATIVE") == 1, timeout=20)
    assert keys(lab, "km1", "sae-1", kept, range(2, 4)) == \
        keys(lab, "km3", "sae-3", kept, range(2, 4))
    r = lab["saes"]["sae-3"].post(f"{cluster.url('km3')}/api/v1/qkd004/close",
                                  json={"key_stream_id": kept})
    assert r.json()["status"] == 0
    wait_for(lambda: plane.health("admission")["sessions"] == {}, timeout=10)
    wait_for(lambda: cluster.health("km0")["sessions"].get("OPERATIVE", 0) == 0, timeout=10)


def test_km_checks_its_sessions_again_when_admission_comes_back(lab):
    """As above, but admission is down when km0 comes back, so km0's own check is lost.
    Admission's next start publishes a new admission_up epoch; km0 checks again and drops
    the session admission ended while km0 was down."""
    cluster, plane = lab["cluster"], lab["plane"]
    gone = open_pair(lab, "km1", "sae-1", "km2", "sae-2")
    kept = open_pair(lab, "km1", "sae-1", "km3", "sae-3")
    assert keys(lab, "km1", "sae-1", kept, range(1)) == keys(lab, "km3", "sae-3", kept, range(1))
    assert keys(lab, "km1", "sae-1", gone, range(1)) == keys(lab, "km2", "sae-2", gone, range(1))
    wait_for(lambda: cluster.health("km0")["sessions"].get("OPERATIVE") == 2, timeout=10)

    cluster.kill("km0")
    r = lab["saes"]["sae-2"].post(f"{cluster.url('km2')}/api/v1/qkd004/close",
                                  json={"key_stream_id": gone})
    assert r.json()["status"] == 0
    wait_for(lambda: plane.health("admission")["sessions"] == {"active": 1}, timeout=20)
    plane.kill("admission")
    try:
        cluster.start_node("km0")
        cluster.wait_healthy("km0", timeout=60)
        time.sleep(2)  # km0's check on connecting reached nobody: it still holds both
        assert cluster.health("km0")["sessions"].get("OPERATIVE") == 2
    finally:
        plane.start("admission")
        wait_for(lambda: plane.healthy("admission"), timeout=20)
    wait_for(lambda: cluster.health("km0")["sessions"].get("OPERATIVE") == 1, timeout=20)
    assert keys(lab, "km1", "sae-1", kept, range(1, 3)) == \
        keys(lab, "km3", "sae-3", kept, range(1, 3))
    r = lab["saes"]["sae-3"].post(f"{cluster.url('km3')}/api/v1/qkd004/close",
                                  json={"key_stream_id": kept})
    assert r.json()["status"] == 0
    wait_for(lambda: plane.health("admission")["sessions"] == {}, timeout=10)
    wait_for(lambda: cluster.health("km0")["sessions"].get("OPERATIVE", 0) == 0, timeout=10)


def test_014_and_refusals(lab):
    url = lab["cluster"].url
    r = lab["saes"]["sae-0"].get(f"{url('km0')}/api/v1/keys/sae-3/enc_keys?number=2&size=256")
    assert r.status_code == 200, r.text
    ks = r.json()["keys"]
    r = lab["saes"]["sae-3"].post(f"{url('km3')}/api/v1/keys/sae-0/dec_keys",
                                  json={"key_IDs": [{"key_ID": k["key_ID"]} for k in ks]})
    assert r.status_code == 200 and r.json()["keys"] == ks, r.text
    # over the SLA: research may use priority 5 at most -> ETSI 004 status 7 + counter-proposal
    body = {"source": "sae-2", "destination": "sae-3", "key_stream_id": str(uuid.uuid4()),
            "qos": {"key_chunk_size": 32, "priority": 8, "timeout": 3000}}
    r = lab["saes"]["sae-2"].post(f"{url('km2')}/api/v1/qkd004/open_connect", json=body)
    assert r.json()["status"] == 7, r.text
    assert r.json()["qos"]["priority"] == 5
    # a disabled user is refused by access control
    body = {"source": "sae-9", "destination": "sae-0", "qos": {"key_chunk_size": 32}}
    r = lab["saes"]["sae-9"].post(f"{url('km1')}/api/v1/qkd004/open_connect", json=body)
    assert r.status_code in (401, 403) or r.json()["status"] != 0, r.text


def test_eavesdropper_reroutes_live_session_keys_keep_matching(lab):
    sid = open_pair(lab, "km2", "sae-2", "km3", "sae-3")
    assert view(lab)["reservations"][sid]["links"] == ["km2-km3"]
    before2 = keys(lab, "km2", "sae-2", sid, range(2))
    assert before2 == keys(lab, "km3", "sae-3", sid, range(2))
    module = make_bus(lab["broker"], lab["plane"].ca, "qkd-km2")
    telemetry(module, "km2-km3", qber=0.03, node="km2")
    time.sleep(0.6)
    telemetry(module, "km2-km3", qber=0.2, node="km2")  # intercept-resend: QBER over 0.11
    wait_for(lambda: sorted(view(lab)["reservations"][sid]["links"])
             == ["km0-km2", "km0-km3"], timeout=10)
    time.sleep(0.5)  # the KMs apply their new forwarding entries
    # same session, no reopen: keys keep coming and keep matching, now relayed via km0; the
    # chunks prefetched over km2-km3 were withdrawn at both ends, the next position skips them
    after2 = next_keys(lab, "km2", "sae-2", sid, 3)
    after3 = next_keys(lab, "km3", "sae-3", sid, 3)
    assert after2 == after3 and after2[0][0] >= 2
    assert lab["plane"].health("monitoring")["alarms"] == {"km2-km3": "qber_high"}
    module.stop()
