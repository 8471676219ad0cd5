"""Pure logic of the control elements: user DB and authentication decisions, SLA checks,
topology DB (weights, capacity, alarms, backup paths), monitoring classification."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qkdtwin.control.access import check_authentication
from qkdtwin.control.admission import hop_entries
from qkdtwin.control.monitoring import LinkState, Monitoring
from qkdtwin.control.sla import bucket_for, check_qos
from qkdtwin.control.topodb import TopologyDB
from qkdtwin.control.userdb import InvalidRecord, UserDB, validate_user

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit

USERS = yaml.safe_load((ROOT / "labs" / "star6.users.yml").read_text())["users"]


@pytest.fixture
def db(tmp_path):
    d = UserDB(tmp_path / "users.db")
    d.seed(USERS)
    yield d
    d.close()


def auth(db, sae, user, km=None, **cert):
    return check_authentication(db, {"type": "authenticate", "km": km, "sae_id": sae,
                                     "cert": {"cn": sae, "o": user, "ou": "sae", **cert}})


def test_authentication_decisions(db):
    ok = auth(db, "sae-2", "research", km="km2")
    assert ok["ok"] and ok["user"] == "research" and ok["sla"]["max_key_rate"] == 32768
    assert auth(db, "sae-77", "research")["reason"] == "unknown application"
    assert auth(db, "sae-9", "mallory")["reason"] == "user disabled"
    assert "does not match" in auth(db, "sae-2", "ops")["reason"]
    assert "does not match" in check_authentication(
        db, {"sae_id": "sae-2", "cert": {"cn": "sae-3", "o": "research"}})["reason"]
    assert "not registered at km5" in auth(db, "sae-2", "research", km="km5")["reason"]
    assert check_authentication(db, {"sae_id": 5})["reason"] == "malformed request"


def test_pinned_fingerprint(db):
    u = db.get("ops")
    u["applications"][0]["fingerprint"] = "AB:CD"
    db.upsert(u)
    assert not auth(db, "sae-0", "ops", fingerprint="ffff")["ok"]
    assert auth(db, "sae-0", "ops", fingerprint="abcd")["ok"]


def test_seed_keeps_runtime_changes_and_validation(db, tmp_path):
    assert db.set_status("ops", "disabled")
    assert db.seed(USERS) == []  # already there: a re-seed does not re-enable ops
    assert db.get("ops")["status"] == "disabled"
    assert db.seed(USERS, overwrite=True)
    assert db.get("ops")["status"] == "active"
    with pytest.raises(InvalidRecord, match="max_priority must be 0..9"):
        validate_user({"name": "x", "sla": {"max_priority": 12, "max_key_rate": 1,
                                            "max_key_size": 1, "max_sessions": 1}})
    with pytest.raises(InvalidRecord, match="sla.max_key_rate"):
        validate_user({"name": "x", "sla": {"max_priority": 1, "max_key_rate": "fast",
                                            "max_key_size": 1, "max_sessions": 1}})
    with pytest.raises(InvalidRecord, match="already belongs"):
        db.upsert({"name": "thief", "sla": USERS[0]["sla"],
                   "applications": [{"sae_id": "sae-0", "km": "km0"}]})


SLA = {"max_priority": 5, "max_key_rate": 32768, "max_key_size": 512, "max_sessions": 2,
       "allowed_destinations": ["sae-3"]}


def test_sla_check():
    d = check_qos({"max_bps": 1000, "priority": 5, "key_chunk_size": 64}, SLA, "sae-3", 0)
    assert d.ok and d.qos["max_bps"] == 1000
    d = check_qos({}, SLA, "sae-3", 1)  # defaults: the SLA's maxima
    assert d.ok and d.qos["max_bps"] == 32768 and d.qos["key_chunk_size"] == 64
    assert bucket_for(d.qos) == {"rate_bps": 32768, "size_bits": 32768}
    d = check_qos({"max_bps": 50000, "priority": 9, "key_chunk_size": 128}, SLA, "sae-3", 0)
    assert not d.ok and "qos exceeds SLA" in d.reason
    assert d.counter_qos["max_bps"] == 32768 and d.counter_qos["priority"] == 5
    assert d.counter_qos["key_chunk_size"] == 64
    assert "not allowed" in check_qos({}, SLA, "sae-0", 0).reason
    assert "max_sessions" in check_qos({}, SLA, "sae-3", 2).reason
    assert "must be a number" in check_qos({"max_bps": "x"}, SLA, "sae-3", 0).reason
    assert "min_bps exceeds" in check_qos({"max_bps": 10, "min_bps": 20}, SLA, "sae-3", 0).reason
    assert check_qos("fast", SLA, "sae-3", 0).reason == "rejected: qos must be an object"


def star6(db: TopologyDB) -> None:
    links = [("km0", f"km{i}") for i in range(1, 6)] + [("km4", "km5")]
    db.set_topology({"nodes": [{"id": f"km{i}"} for i in range(6)],
                     "links": [{"id": f"{a}-{b}", "a": a, "b": b, "type": "PHYS",
                                "status": "up"} for a, b in links]
                     + [{"id": "virt-x", "a": "km2", "b": "km3", "type": "VIRT"}]})


def test_paths_weights_and_backup():
    t = TopologyDB()
    star6(t)
    assert "virt-x" not in t.links  # VIRT links are sessions, not capacity
    r = t.find_path("km2", "km3")
    assert r["path"] == ["km2", "km0", "km3"] and r["links"] == ["km0-km2", "km0-km3"]
    assert r["backup"] is None  # a star has no second path
    r = t.find_path("km4", "km5")
    assert r["path"] == ["km4", "km5"] and r["backup"]["path"] == ["km4", "km0", "km5"]
    # weights follow the metrics: high QBER and low stored key make the direct link worse
    t.set_metrics("km4-km5", {"qber": 0.05, "stored_bits": 1e6, "skr_bps": 1000})
    assert t.weight("km4-km5") == pytest.approx(1 + 0.05 / 0.11 + 0.25)
    assert t.find_path("km4", "km5")["path"] == ["km4", "km5"]  # 1.70 < two clean hops
    t.set_metrics("km4-km5", {"qber": 0.10, "stored_bits": 0})
    assert t.weight("km4-km5") == pytest.approx(1 + 0.10 / 0.11 + 0.5)
    assert t.find_path("km4", "km5")["path"] == ["km4", "km0", "km5"]  # 2.41 > 2
    t.set_metrics("km4-km5", {"qber": 0.03, "stored_bits": 1e6})
    t.set_alarm("km4-km5", "qber_suspicious")
    assert t.find_path("km4", "km5")["path"] == ["km4", "km0", "km5"]
    t.set_alarm("km4-km5", "qber_high")
    r = t.find_path("km4", "km5")
    assert r["path"] == ["km4", "km0", "km5"] and r["backup"] is None
    t.set_alarm("km4-km5", "clear")
    assert t.find_path("km4", "km5")["path"] == ["km4", "km5"]
    assert t.find_path("km4", "km9")["reason"] == "unknown KM km9"
    assert "same KM" in t.find_path("km4", "km4")["reason"]
    assert t.find_path("km4", "km5", exclude=["km4-km5"])["path"] == ["km4", "km0", "km5"]


def test_capacity_reservation_and_reroute_replacement(tmp_path):
    t = TopologyDB(tmp_path / "t.db", default_capacity_bps=10000)
    star6(t)
    assert t.find_path("km2", "km3", 6000, session_id="a", reserve=True)["ok"]
    assert t.reserved("km0-km2") == 6000 and t.reserved("km0-km3") == 6000
    r = t.find_path("km2", "km3", 6000, session_id="b", reserve=True)
    assert not r["ok"] and "no path" in r["reason"] and "b" not in t.reservations
    # the same session asking again (re-route) does not count against itself
    assert t.find_path("km2", "km3", 6000, session_id="a", reserve=True)["ok"]
    assert t.reserved("km0-km2") == 6000
    # load raises the weight; the booking survives a restart (SQLite)
    assert t.weight("km0-km2") == pytest.approx(1.6)
    t2 = TopologyDB(tmp_path / "t.db", default_capacity_bps=10000)
    assert t2.reservations["a"]["links"] == ["km0-km2", "km0-km3"]
    assert t2.release("a") and not t2.release("a")
    # measured key rate replaces the default capacity
    t2.set_metrics("km0-km1", {"skr_bps": 500})
    assert not t2.find_path("km0", "km1", 600)["ok"] and t2.find_path("km0", "km1", 400)["ok"]


def test_hop_entries_relay():
    s = {"source": {"km": "km2", "sae_id": "sae-2"}, "destination": {"km": "km3",
                                                                     "sae_id": "sae-3"}}
    e = hop_entries(["km2", "km0", "km3"], s)
    assert e["km2"] == {"role": "source", "prev_hop": None, "next_hop": "km0",
                        "local_sae_id": "sae-2", "peer_sae_id": "sae-3", "peer_km": "km3"}
    assert e["km0"]["role"] == "transit" and e["km0"]["local_sae_id"] is None
    assert e["km0"]["peer_km"] is None
    assert e["km3"]["prev_hop"] == "km0" and e["km3"]["peer_sae_id"] == "sae-2"
    assert e["km3"]["peer_km"] == "km2"


def test_monitoring_classification():
    m = Monitoring.__new__(Monitoring)  # classification needs only the thresholds
    m.threshold, m.margin, m.suspicion_abs, m.stale_s = 0.11, 0.03, None, 10
    m.link_cfg = {"a-b": {"intrinsic_qber": 0.033}}
    st = LinkState()
    assert m.classify("a-b", st, 100)[0] == "clear"  # never heard from: no alarm
    st.last_seen, st.qber, st.skr, st.status = 100, 0.035, 1000, "up"
    st.ever_positive = True
    assert m.classify("a-b", st, 101)[0] == "clear"
    st.qber = 0.07
    assert m.classify("a-b", st, 101)[0] == "qber_suspicious"
    assert m.classify("x-y", st, 101)[0] == "clear"  # no intrinsic QBER known
    st.qber = 0.12
    assert m.classify("x-y", st, 101)[0] == "qber_high"
    assert m.classify("a-b", st, 111)[0] == "link_down"  # stale
    st.qber, st.status = 0.03, "down"
    assert m.classify("a-b", st, 101)[0] == "link_down"
    st.status = "connecting"  # the module lost its peer after having been up
    st.ever_up = True
    assert m.classify("a-b", st, 101) == ("link_down", "module status connecting")
    st.status, st.skr, st.zero_since = "up", 0, 100
    assert m.classify("a-b", st, 105)[0] == "clear"
    st.last_seen = 111
    assert m.classify("a-b", st, 111)[0] == "link_down"
