"""The five control elements in-process (threads) on a real Mosquitto, driven by small KMs
that follow the MQTT contract: the paper's three sessions on a star6 topology, SLA
refusals, a peer that never registers, close, timeout, alarm re-routing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
import yaml

from qkdtwin import bus
from qkdtwin.control.access import AccessControl
from qkdtwin.control.admission import AdmissionControl
from qkdtwin.control.monitoring import Monitoring
from qkdtwin.control.routing import RoutingElement
from qkdtwin.control.sdn import SdnController
from qkdtwin.etsi015 import SDN_BASE
from tests.support.control import (
    STAR6_NODES,
    FakeKM,
    broker_cfg,
    make_bus,
    register_star6,
    telemetry,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit

USERS = yaml.safe_load((ROOT / "labs" / "star6.users.yml").read_text())["users"]


@pytest.fixture
def plane(broker, test_ca, tmp_path):
    """Access, routing, SDN, admission and monitoring, each with its own identity."""
    sdn_ident = test_ca.issue("sdn")
    base = lambda cn: {"element": cn, "broker": broker_cfg(broker, test_ca, cn),  # noqa: E731
                       "health": {"host": "127.0.0.1", "port": 0},
                       "data_dir": str(tmp_path / cn)}
    els = {}
    els["access"] = AccessControl({**base("access"), "users": USERS}).start()
    els["routing"] = RoutingElement({**base("routing")}).start()
    sdn = SdnController({**base("sdn"), "listen": {"host": "127.0.0.1", "port": 0},
                         "tls": {"ca": test_ca.ca, "cert": sdn_ident.cert,
                                 "key": sdn_ident.key}, "nodes": STAR6_NODES})
    els["sdn"] = sdn.start()
    url = f"https://127.0.0.1:{sdn.port}"
    els["admission"] = AdmissionControl({**base("admission"), "peer_wait_s": 2,
                                         "inactivity_timeout_s": 3, "confirm_timeout_s": 2,
                                         "sdn": {"url": url}}).start()
    els["monitoring"] = Monitoring({**base("monitoring"), "interval_s": 0.3, "stale_s": 2,
                                    "links": {"km4-km5": {"intrinsic_qber": 0.033}}}).start()
    register_star6(url, test_ca)
    wait_for(lambda: len(els["routing"].topo.links) == 6)
    els["url"] = url
    yield els
    for k, e in els.items():
        if k != "url":
            e.stop()


@pytest.fixture
def kms(broker, test_ca):
    out = {f"km{i}": FakeKM(broker, test_ca, f"km{i}") for i in range(6)}
    yield out
    for k in out.values():
        k.stop()


def open_pair(kms, a, sae_a, b, sae_b, user, admission=None, **qos):
    """The first application opens, then (once admission accepted it) its peer."""
    sid = kms[a].open(sae_a, sae_b, user, **qos)
    if admission is not None:
        wait_for(lambda: sid in admission.sessions or kms[a].deleted(sid))
    kms[b].open(sae_b, sae_a, user, session_id=sid, **qos)
    return sid


def test_paper_scenario_three_parallel_sessions(plane, kms, test_ca):
    s01 = kms["km0"].open("sae-0", "sae-1", "ops", max_bps=8000)
    s23 = kms["km2"].open("sae-2", "sae-3", "research", max_bps=8000)
    s45 = kms["km4"].open("sae-4", "sae-5", "iot", max_bps=2048, priority=2)
    kms["km1"].open("sae-1", "sae-0", "ops", session_id=s01, max_bps=8000)
    kms["km3"].open("sae-3", "sae-2", "research", session_id=s23, max_bps=8000)
    kms["km5"].open("sae-5", "sae-4", "iot", session_id=s45, max_bps=2048, priority=2)
    wait_for(lambda: all(kms[k].config_for(s) for k, s in
                         (("km0", s01), ("km1", s01), ("km2", s23), ("km3", s23),
                          ("km4", s45), ("km5", s45))))
    # km2-km3 is relayed through km0: the only path in a star (km4-km5 is elsewhere)
    # (requests are parallel: the source is whichever application admission accepted first)
    c2, c0, c3 = (wait_for(lambda k=k: kms[k].config_for(s23)) for k in ("km2", "km0", "km3"))
    if c2["role"] == "destination":
        c2, c3 = c3, c2
        assert c0["prev_hop"] == "km3" and c0["next_hop"] == "km2"
    else:
        assert c0["prev_hop"] == "km2" and c0["next_hop"] == "km3"
    assert (c2["role"], c2["prev_hop"], c2["next_hop"]) == ("source", None, "km0")
    assert c0["role"] == "transit"
    assert (c3["role"], c3["prev_hop"], c3["next_hop"]) == ("destination", "km0", None)
    assert {c2["local_sae_id"], c3["local_sae_id"]} == {"sae-2", "sae-3"}
    assert c2["peer_sae_id"] == c3["local_sae_id"]
    assert c0["local_sae_id"] is None
    # adjacent pairs: direct links, km4-km5 over the extra link (1 hop beats 2 via km0)
    c4 = kms["km4"].config_for(s45)
    assert "km5" in (c4["next_hop"], c4["prev_hop"]) and c4["priority"] == 2
    assert c4["bucket"] == {"rate_bps": 2048, "size_bits": 2048}
    assert "km1" in (kms["km0"].config_for(s01)["next_hop"], kms["km0"].config_for(s01)["prev_hop"])
    assert kms["km0"].config_for(s45) is None and kms["km1"].config_for(s23) is None
    # the relayed session is a VIRT link at the SDN controller, with its hops
    r = requests.get(plane["url"] + SDN_BASE,
                     cert=(test_ca.issue("host", ou="operator").cert,
                           test_ca.dir / "operator-host.key"), verify=test_ca.ca, timeout=5)
    virt = list({lk["qkdl_id"]: lk for n in r.json()["qkd_node"]
                 for lk in n["qkd_links"]["qkd_link"] if lk["qkdl_type"] == "VIRT"}.values())
    assert len(virt) == 1 and virt[0]["virt_hops"][1] == "km0"
    assert sorted(virt[0]["virt_hops"]) == ["km0", "km2", "km3"]
    assert plane["admission"].healthz()["sessions"] == {"active": 3}


def test_sla_refusals_with_counter_proposal(plane, kms):
    sid = kms["km4"].open("sae-4", "sae-5", "iot", max_bps=100000, priority=7)
    d = wait_for(lambda: kms["km4"].deleted(sid))
    assert d["reason"].startswith("rejected: qos exceeds SLA")
    assert d["counter_qos"]["max_bps"] == 4096 and d["counter_qos"]["priority"] == 2
    # destination outside the SLA: iot may only talk to sae-4/sae-5
    sid2 = kms["km4"].open("sae-4", "sae-0", "iot")
    assert "not allowed" in wait_for(lambda: kms["km4"].deleted(sid2))["reason"]
    # disabled user
    sid3 = kms["km5"].open("sae-9", "sae-4", "mallory")
    assert "disabled" in wait_for(lambda: kms["km5"].deleted(sid3))["reason"]
    # iot has max_sessions 2: the third concurrent session is refused
    for _ in range(2):
        open_pair(kms, "km4", "sae-4", "km5", "sae-5", "iot")
    wait_for(lambda: plane["admission"].healthz()["sessions"].get("active") == 2)
    sid4 = kms["km4"].open("sae-4", "sae-5", "iot")
    assert "max_sessions" in wait_for(lambda: kms["km4"].deleted(sid4))["reason"]


def test_capacity_is_reserved_on_every_link(plane, kms):
    # default capacity 1e6 bit/s per link before metrics; the monitoring tells 5000
    probe = make_bus_for(plane)
    for a, b in (("km0", "km2"), ("km0", "km3")):
        telemetry(probe, f"{a}-{b}", skr=5000.0)
    wait_for(lambda: plane["routing"].topo.capacity("km0-km3") == 5000.0)
    s1 = open_pair(kms, "km2", "sae-2", "km3", "sae-3", "research", min_bps=3000,
                   max_bps=4000)
    wait_for(lambda: kms["km3"].config_for(s1))
    assert plane["routing"].topo.reserved("km0-km2") == 3000
    s2 = open_pair(kms, "km2", "sae-2", "km3", "sae-3", "research", min_bps=3000,
                   max_bps=4000)
    d = wait_for(lambda: kms["km2"].deleted(s2))
    assert "no path" in d["reason"] and kms["km0"].config_for(s2) is None
    kms["km2"].close(s1)
    wait_for(lambda: plane["routing"].topo.reserved("km0-km2") == 0)
    probe.stop()


def make_bus_for(plane):
    return plane["monitoring"].bus  # any connected bus can publish test telemetry


def test_peer_never_registers_reserves_nothing_and_times_out(plane, kms):
    sid = kms["km0"].open("sae-0", "sae-1", "ops", min_bps=1000)
    wait_for(lambda: plane["admission"].sessions.get(sid, {}).get("state") == "accepted")
    assert plane["routing"].topo.reservations == {}
    assert kms["km1"].configs == [] and kms["km0"].configs == []
    d = wait_for(lambda: kms["km0"].deleted(sid), timeout=6)
    assert d["reason"] == "timeout"
    assert plane["routing"].topo.reservations == {}
    wait_for(lambda: sid not in plane["admission"].sessions)


def test_close_deletes_on_every_km_of_the_route(plane, kms):
    sid = open_pair(kms, "km2", "sae-2", "km3", "sae-3", "research")
    wait_for(lambda: kms["km0"].config_for(sid) and kms["km3"].config_for(sid))
    kms["km3"].close(sid)
    for k, why in (("km2", "peer closed"), ("km0", "peer closed"), ("km3", "closed")):
        assert wait_for(lambda k=k: kms[k].deleted(sid))["reason"] == why
    wait_for(lambda: sid not in plane["admission"].sessions)
    # admission tells routing with a one-way "release" on routing/in: it lands a broker
    # round trip after admission forgot the session
    wait_for(lambda: plane["routing"].topo.reservations == {})


def test_inactivity_timer_reset_by_key_requests(plane, kms):
    sid = open_pair(kms, "km0", "sae-0", "km1", "sae-1", "ops")
    wait_for(lambda: kms["km1"].config_for(sid))
    t0 = time.time()
    while time.time() - t0 < 4.5:  # longer than the 3 s timeout, kept alive
        kms["km0"].key_request(sid)
        time.sleep(0.5)
    assert kms["km0"].deleted(sid) is None
    assert wait_for(lambda: kms["km1"].deleted(sid), timeout=6)["reason"] == "timeout"


def test_alarm_reroutes_without_reopening(plane, kms):
    sid = open_pair(kms, "km4", "sae-4", "km5", "sae-5", "iot", plane["admission"])
    wait_for(lambda: kms["km5"].config_for(sid))
    assert kms["km4"].config_for(sid)["next_hop"] == "km5"
    mon = plane["monitoring"].bus
    telemetry(mon, "km4-km5", qber=0.03)
    time.sleep(0.3)
    telemetry(mon, "km4-km5", qber=0.2)  # an eavesdropper: QBER over 0.11
    c4 = wait_for(lambda: (c := kms["km4"].config_for(sid)) and c.get("update") and c)
    assert c4["next_hop"] == "km0" and c4["role"] == "source"
    c5 = wait_for(lambda: (c := kms["km5"].config_for(sid)) and c.get("update") and c)
    assert c5["prev_hop"] == "km0"
    c0 = wait_for(lambda: kms["km0"].config_for(sid))
    assert (c0["prev_hop"], c0["next_hop"], c0["update"]) == ("km4", "km5", False)
    assert kms["km4"].deleted(sid) is None and kms["km5"].deleted(sid) is None
    assert plane["routing"].topo.alarms["km4-km5"] == "qber_high"
    # a later session avoids the alarmed link too
    sid2 = open_pair(kms, "km4", "sae-4", "km5", "sae-5", "iot", plane["admission"])
    assert wait_for(lambda: kms["km4"].config_for(sid2))["next_hop"] == "km0"


def test_alarm_without_alternative_ends_the_session(plane, kms):
    sid = open_pair(kms, "km0", "sae-0", "km1", "sae-1", "ops")
    wait_for(lambda: kms["km1"].config_for(sid))
    telemetry(plane["monitoring"].bus, "km0-km1", qber=0.25)
    d = wait_for(lambda: kms["km0"].deleted(sid))
    assert "no path avoiding km0-km1" in d["reason"]


def test_events_published_per_step(plane, kms, broker, test_ca):
    seen = []
    host = make_bus(broker, test_ca, "host")
    host.subscribe(bus.events("+"), lambda t, p, m: seen.append(p))
    time.sleep(0.3)
    sid = open_pair(kms, "km0", "sae-0", "km1", "sae-1", "ops")
    wait_for(lambda: any(e["kind"] == "session_active" for e in seen))
    kinds = [e["kind"] for e in seen if e.get("session_id") == sid]
    for k in ("config_request_received", "session_accepted", "peer_registered",
              "path_computed", "path_assigned", "config_sent", "session_active"):
        assert k in kinds, (k, kinds)
    host.stop()


def test_config_resync_resends_a_lost_session_config(plane, kms):
    """A KM that lost (or never got) its session_config asks with config_resync and gets
    its entry again; a KM not on the path, or an unknown session, gets nothing."""
    sid = open_pair(kms, "km2", "sae-2", "km3", "sae-3", "research", plane["admission"])
    first = wait_for(lambda: kms["km0"].config_for(sid))
    with kms["km0"]._lock:
        kms["km0"].table.pop(sid)
    for km, s in (("km0", sid), ("km1", sid), ("km1", "no-such-session")):
        kms[km].bus.publish(bus.admission_in(km), {"type": "config_resync", "km": km,
                                               "session_id": s})
    again = wait_for(lambda: kms["km0"].config_for(sid))
    assert {k: again[k] for k in ("role", "prev_hop", "next_hop", "update")} == \
        {k: first[k] for k in ("role", "prev_hop", "next_hop", "update")}
    assert again["role"] == "transit"
    time.sleep(0.5)
    assert kms["km1"].configs == []
