"""An eavesdropper on a link in use: no key that crossed it is delivered after its alarm.

Triangle km0 – km1 – km2 – km0 (real KM processes, stand-in QKD modules and control plane,
real Mosquitto). An ETSI 004 stream and an ETSI 014 pair from km0 to km2 run over the direct
link km0-km2 with prefetched keys on both ends. The test then does what monitoring and
admission do: a retained ``qber_high`` alarm on ``qkd/v1/alarm/km0-km2``, then the forwarding
update that moves both sessions onto km0 – km1 – km2, later ``clear`` and back.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import closing

import pytest
import requests

from qkdtwin import bus as topics
from qkdtwin.key_manager.sessions import session_id_014
from tests.support.km_cluster import get_key_until, km_lab
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

USERS = {"sae-a0": {"user": "alice", "km": "km0"}, "sae-a2": {"user": "alice", "km": "km2"},
         "sae-b0": {"user": "bob", "km": "km0"}, "sae-b2": {"user": "bob", "km": "km2"}}
LINKS = [("km0", "km1"), ("km1", "km2"), ("km0", "km2")]
L = "km0-km2"
DIRECT, DETOUR = ["km0", "km2"], ["km0", "km1", "km2"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    d = tmp_path_factory.mktemp("linkalarm")
    with km_lab(d, test_ca, USERS, LINKS, extra={"prefetch_keys": 16, "prefetch_chunks": 8}
                ) as lab:
        yield lab


def query(lab, km, sql, *args):
    with closing(sqlite3.connect(lab["dir"] / km / "km.sqlite", timeout=10)) as db:
        return db.execute(sql, args).fetchall()


def alarm(lab, kind):
    """Publish like monitoring: retained, on qkd/v1/alarm/<link>."""
    lab["ctl"].bus.publish(topics.alarm(L), {"type": "alarm", "link": L, "kind": kind,
                                             "ts": time.time(),
                                             "qber": 0.21 if kind != "clear" else 0.02,
                                             "threshold": 0.11, "reason": "test"}, retain=True)


def events(lab, kind, element=None, **match):
    return [e for e in list(lab["ctl"].events) if e.get("kind") == kind
            and (element is None or e.get("element") == element)
            and all(e.get(k) == v for k, v in match.items())]


def test_no_key_that_crossed_a_link_is_delivered_after_its_alarm(lab):
    a0, a2 = lab["saes"]["sae-a0"], lab["saes"]["sae-a2"]
    u0, u2 = lab["cluster"].url("km0"), lab["cluster"].url("km2")
    ctl = lab["ctl"]
    sid4, sid14 = str(uuid.uuid4()), session_id_014("sae-a0", "sae-a2")

    def get(sae, url, **extra):
        return sae.post(f"{url}/api/v1/qkd004/get_key", json={"key_stream_id": sid4, **extra},
                        timeout=20)

    def next_chunk(sae, url):
        g = get_key_until(sae, url, sid4, patience_s=15, pause_s=0.05,
                          http_timeout_s=20).json()
        assert g["status"] == 0, g
        return g

    def pair():
        g0, g2 = next_chunk(a0, u0), next_chunk(a2, u2)
        assert (g0["index"], g0["key_buffer"]) == (g2["index"], g2["key_buffer"])
        return g0["index"]

    # -- before: both sessions on the direct link, keys prefetched at both ends -------------
    body = {"source": "sae-a0", "destination": "sae-a2", "key_stream_id": sid4,
            "qos": {"key_chunk_size": 32, "timeout": 1000}}
    assert a0.post(f"{u0}/api/v1/qkd004/open_connect", json={**body, "qos": {
        **body["qos"], "timeout": 100}}).json()["status"] == 1
    assert a2.post(f"{u2}/api/v1/qkd004/open_connect", json=body).json()["status"] == 0
    assert [pair() for _ in range(3)] == [0, 1, 2]
    r = a0.post(f"{u0}/api/v1/keys/sae-a2/enc_keys", json={"number": 2})
    assert r.status_code == 200, r.text
    k014 = r.json()["keys"]
    r = a2.post(f"{u2}/api/v1/keys/sae-a0/dec_keys", json={"key_IDs": [
        {"key_ID": k014[0]["key_ID"]}]})
    assert r.status_code == 200 and r.json()["keys"] == k014[:1]
    assert ctl.paths[sid4] == DIRECT and ctl.paths[sid14] == DIRECT

    def held(km, sid, side):
        return query(lab, km, "SELECT idx, via FROM e2e_keys WHERE session_id=? AND side=?",
                     sid, side)

    wait_for(lambda: len(held("km0", sid4, "src")) >= 4 and len(held("km2", sid4, "dst")) >= 4
             and len(held("km0", sid14, "src")) >= 8, what="prefetched keys on both ends")
    for km, sid, side in (("km0", sid4, "src"), ("km2", sid4, "dst"), ("km0", sid14, "src"),
                          ("km2", sid14, "dst")):
        assert {v for _, v in held(km, sid, side)} == {f"|{L}|"}, (km, sid, side)

    # -- the alarm: quarantine and withdrawal at both ends ----------------------------------
    t_alarm = time.time()
    alarm(lab, "qber_high")
    for km in ("km0", "km1", "km2"):
        wait_for(lambda km=km: events(lab, "link_quarantined", km, link=L),
                 what=f"{km} quarantines {L}")
    wait_for(lambda: events(lab, "keys_withdrawn", "km0", session_id=sid4)
             and events(lab, "keys_withdrawn", "km2", session_id=sid4)
             and events(lab, "keys_withdrawn", "km0", session_id=sid14)
             and events(lab, "keys_withdrawn", "km2", session_id=sid14),
             what="keys_withdrawn events of both sessions at both ends")
    for km in ("km0", "km2"):
        assert query(lab, km, "SELECT count(*) FROM e2e_keys WHERE side IN ('src','dst') AND"
                     " instr(via, ?) > 0", f"|{L}|") == [(0,)], km
        ev = events(lab, "keys_withdrawn", km, session_id=sid4)[0]
        assert ev["link"] == L and ev["alarm"] == "qber_high" and ev["count"] >= 4
        assert ev["first_index"] >= 3 and ev["last_index"] >= ev["first_index"]
    assert lab["cluster"].health("km0")["alarms"] == {L: "qber_high"}
    # the slave's undelivered 014 key is gone: the normative 400, naming the withdrawal
    r = a2.post(f"{u2}/api/v1/keys/sae-a0/dec_keys", json={"key_IDs": [
        {"key_ID": k014[1]["key_ID"]}]})
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "one or more keys specified are not found on KME"
    d = r.json()["details"][0]
    assert d["key_ID"] == k014[1]["key_ID"] and d["withdrawn"] and d["link"] == L
    # until admission re-routes, nothing is relayed over the link: a clear refusal
    r = a0.post(f"{u0}/api/v1/keys/sae-a2/enc_keys", json={"number": 1})
    assert r.status_code == 503 and f"link {L} is under alarm" in r.json()["message"], r.text

    # -- admission's forwarding update: the sessions go on over km1 --------------------------
    ctl.reroute(sid4, DETOUR)
    ctl.reroute(sid14, DETOUR)
    wait_for(lambda: len(events(lab, "forwarding_update", "km0")) >= 2
             and len(events(lab, "forwarding_update", "km2")) >= 2, what="forwarding updates")
    after = [pair() for _ in range(5)]
    w0 = query(lab, "km0", "SELECT idx FROM withdrawn WHERE session_id=? AND side='src'"
               " ORDER BY idx", sid4)
    w2 = query(lab, "km2", "SELECT idx FROM withdrawn WHERE session_id=? AND side='dst'"
               " ORDER BY idx", sid4)
    assert w0 == w2 and w0, (w0, w2)  # both ends withdrew the same indexes
    withdrawn = [i for (i,) in w0]
    assert not set(after) & set(withdrawn)
    # the next position skipped exactly the withdrawn ones, alike on both sides
    assert set(range(3, after[0])) <= set(withdrawn)
    assert after == sorted(after) and len(set(after)) == 5
    # an explicit withdrawn index: a clear refusal, on both sides
    for sae, url in ((a2, u2), (a0, u0)):
        r = get(sae, url, index=withdrawn[0])
        assert r.status_code == 410 and r.json()["status"] == 10, r.text
        msg = r.json()["message"]
        assert f"key at index {withdrawn[0]} was withdrawn" in msg and L in msg, msg
    r = a0.post(f"{u0}/api/v1/keys/sae-a2/enc_keys", json={"number": 3})
    assert r.status_code == 200, r.text
    k014b = r.json()["keys"]
    r = a2.post(f"{u2}/api/v1/keys/sae-a0/dec_keys", json={"key_IDs": [
        {"key_ID": k["key_ID"]} for k in k014b]})
    assert r.status_code == 200 and r.json()["keys"] == k014b, r.text
    # every key handed to an application since the alarm went the detour (the source keeps
    # delivery records of 004 chunks; the slave's KM of every key)
    since = query(lab, "km0", "SELECT via FROM delivered WHERE ts >= ?", t_alarm) + query(
        lab, "km2", "SELECT via FROM delivered WHERE ts >= ?", t_alarm)
    assert len(since) == 2 * 5 + 3
    assert {v for (v,) in since} == {"|km0-km1|km1-km2|"}
    node = lab["cluster"].ids["km2"]  # /metrics is for the lab's own elements
    m = requests.get(f"{u2}/metrics", verify=lab["ca"].ca, cert=(node.cert, node.key),
                     timeout=5).text
    assert f'qkdtwin_km_keys_withdrawn_total{{link="{L}",side="dst"}}' in m

    # -- clear: the link carries key again -------------------------------------------------
    alarm(lab, "clear")
    for km in ("km0", "km2"):
        wait_for(lambda km=km: events(lab, "link_released", km, link=L),
                 what=f"{km} releases {L}")
    ctl.reroute(sid4, DIRECT)
    ctl.reroute(sid14, DIRECT)
    wait_for(lambda: len(events(lab, "forwarding_update", "km0")) >= 4, what="updates back")
    t_clear = time.time()
    # keys prefetched over the detour go first, then new ones cross L again
    for _ in range(5):
        r = a0.post(f"{u0}/api/v1/keys/sae-a2/enc_keys", json={"number": 8})
        assert r.status_code == 200, r.text
        k014c = r.json()["keys"]
        r = a2.post(f"{u2}/api/v1/keys/sae-a0/dec_keys", json={"key_IDs": [
            {"key_ID": k["key_ID"]} for k in k014c]})
        assert r.status_code == 200 and r.json()["keys"] == k014c, r.text
    back = [pair() for _ in range(30)]  # the stream's chunks still agree
    assert back == sorted(back) and back[0] > after[-1]
    vias = query(lab, "km2", "SELECT key_id, via FROM delivered WHERE ts >= ?", t_clear)
    assert len(vias) == 5 * 8 + 30
    via = dict(vias)
    for name, rows in (("014", [v for k, v in vias if not k.startswith(sid4)]),
                       ("004", [v for k, v in vias if k.startswith(sid4)])):
        assert set(rows) == {"|km0-km1|km1-km2|", f"|{L}|"}, (name, rows)
    assert {via[k["key_ID"]] for k in k014c} == {f"|{L}|"}  # the last ones made
    assert via[f"{sid4}:{back[-1]}"] == f"|{L}|"


def test_km_that_was_down_during_the_alarm_withdraws_when_it_comes_back(lab):
    """The alarm is retained: a KM (re)started while it stands gets it at subscribe time and
    withdraws the keys it stored before."""
    b0, b2 = lab["saes"]["sae-b0"], lab["saes"]["sae-b2"]
    u0, u2 = lab["cluster"].url("km0"), lab["cluster"].url("km2")
    sid = session_id_014("sae-b0", "sae-b2")
    r = b0.post(f"{u0}/api/v1/keys/sae-b2/enc_keys", json={"number": 1})
    assert r.status_code == 200, r.text
    key_id = r.json()["keys"][0]["key_ID"]
    assert lab["ctl"].paths[sid] == DIRECT
    assert query(lab, "km2", "SELECT via FROM e2e_keys WHERE key_id=?", key_id) == [(f"|{L}|",)]
    lab["cluster"].kill("km2")
    try:
        alarm(lab, "qber_suspicious")
        wait_for(lambda: events(lab, "keys_withdrawn", "km0", session_id=sid),
                 what="km0 withdraws the prefetched keys")
        lab["cluster"].start_node("km2")
        lab["cluster"].wait_healthy("km2", pools=False)
        ev = wait_for(lambda: events(lab, "keys_withdrawn", "km2", session_id=sid),
                      what="the restarted km2 withdraws the key it held")
        assert ev[0]["alarm"] == "qber_suspicious" and ev[0]["count"] >= 1
        r = b2.post(f"{u2}/api/v1/keys/sae-b0/dec_keys", json={"key_IDs": [{"key_ID": key_id}]})
        assert r.status_code == 400 and r.json()["details"][0]["withdrawn"], r.text
    finally:
        alarm(lab, "clear")
        lab["cluster"].wait_healthy("km2", pools=False)
    wait_for(lambda: events(lab, "link_released", "km2", link=L)
             and lab["cluster"].health("km2")["alarms"] == {}, what="km2 releases the link")
