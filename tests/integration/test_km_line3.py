"""Three Key Manager processes in a line km0 – km1 – km2 on loopback with fake QKD modules,
a real Mosquitto and a stand-in control plane playing access and admission control."""

from __future__ import annotations

import base64
import time
import uuid

import pytest
import requests

from tests.support.km_cluster import get_key_until, km_lab, sae_session

pytestmark = pytest.mark.integration

USERS = {
    "sae-a0": {"user": "alice", "km": "km0"},
    "sae-a1": {"user": "alice", "km": "km1"},
    "sae-a2": {"user": "alice", "km": "km2"},
    "sae-b0": {"user": "bob", "km": "km0", "max_priority": 3},
    "sae-b2": {"user": "bob", "km": "km2"},
    "sae-m2": {"user": "mallory", "km": "km2", "active": False},
    "sae-c0": {"user": "carol", "km": "km0", "max_key_size": 128},
}
LINKS = [("km0", "km1"), ("km1", "km2")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    d = tmp_path_factory.mktemp("line3")
    with km_lab(d, test_ca, USERS, LINKS) as lab:
        yield lab


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
    def get0():
        # the QoS timeout is 200 ms: on a busy machine the first chunk may take longer to
        # cross the path (status 2, nothing consumed); ask again
        return get_key_until(a0, km(lab, "km0"), sid, patience_s=10, pause_s=0.1).json()

    got0 = [get0() for _ in range(3)]
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
    # ...but not absurdly far: that would make the source relay (and hold its link for)
    # a hundred thousand chunks
    r = a2.post(f"{km(lab, 'km2')}/api/v1/qkd004/get_key",
                json={"key_stream_id": sid, "index": 100000})
    assert r.status_code == 400 and r.json()["status"] == 10, r.text
    assert "ahead of the key stream" in r.json()["message"]
    r = a0.post(f"{km(lab, 'km0')}/api/v1/qkd004/close", json={"key_stream_id": sid})
    assert r.json()["status"] == 0
    deadline = time.time() + 5
    while time.time() < deadline and len([c for c in lab["ctl"].confirms if c[1] == sid]) < 3:
        time.sleep(0.05)
    assert {c[0] for c in lab["ctl"].confirms if c[1] == sid} == {"km0", "km1", "km2"}
    r = a2.post(f"{km(lab, 'km2')}/api/v1/qkd004/get_key", json={"key_stream_id": sid})
    assert r.json()["status"] == 4


# -- unauthorised callers and bad input ------------------------------------------------------

def test_no_certificate_gets_json_401(lab):
    import requests
    r = requests.post(f"{km(lab, 'km0')}/api/v1/keys/sae-a1/enc_keys", json={},
                      verify=lab["ca"].ca)
    assert r.status_code == 401 and "certificate" in r.json()["message"]
    r = requests.post(f"{km(lab, 'km0')}/api/v1/qkd004/open_connect", json={},
                      verify=lab["ca"].ca)
    assert r.status_code == 401 and r.json()["status"] == 10
    # liveness stays open for probes (test_health_details_and_metrics_need_a_lab_certificate)
    assert requests.get(f"{km(lab, 'km0')}/healthz", verify=lab["ca"].ca).json()["ok"]


def test_certificate_from_another_ca_fails_handshake(lab, tmp_path):
    import requests

    from tests.support.pki import TestCA
    rogue = TestCA(tmp_path / "rogue").issue("sae-a0", ou="sae", o="alice")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{km(lab, 'km0')}/api/v1/keys/sae-a1/status",
                     cert=(rogue.cert, rogue.key), verify=lab["ca"].ca)


def test_unknown_disabled_and_node_certificates_refused(lab):
    unknown = sae_session(lab["ca"], "sae-zz", "alice")
    r = unknown.post(f"{km(lab, 'km2')}/api/v1/keys/sae-a0/enc_keys", json={})
    assert r.status_code == 401 and "not authorised" in r.json()["message"]
    r = lab["saes"]["sae-m2"].post(f"{km(lab, 'km2')}/api/v1/keys/sae-a0/enc_keys", json={})
    assert r.status_code == 401 and "disabled" in r.json()["message"]
    liar = sae_session(lab["ca"], "sae-a2", "bob")  # O names another user
    r = liar.get(f"{km(lab, 'km2')}/api/v1/keys/sae-a0/status")
    assert r.status_code == 401
    node = sae_session(lab["ca"], "km1", "x")
    node.cert = (lab["cluster"].ids["km1"].cert, lab["cluster"].ids["km1"].key)
    r = node.post(f"{km(lab, 'km0')}/api/v1/keys/sae-a1/enc_keys", json={})
    assert r.status_code == 401
    # an application cannot use the KM-to-KM API
    r = lab["saes"]["sae-a1"].post(f"{km(lab, 'km0')}/kmapi/v1/ext_keys", json={})
    assert r.status_code == 403 and r.json()["message"]


def test_health_details_and_metrics_need_a_lab_certificate(lab):
    """Finding L5: without a certificate (or with an application's) /healthz says only
    whether the KM is alive; /metrics needs a node or operator certificate."""
    url = km(lab, "km0")
    anon = requests.Session()
    anon.verify, anon.trust_env = lab["ca"].ca, False
    for who in (anon, lab["saes"]["sae-a0"]):
        r = who.get(f"{url}/healthz", timeout=10)
        assert r.status_code == 200 and r.json() == {"ok": True}, r.text
        r = who.get(f"{url}/metrics", timeout=10)
        assert r.status_code == 403 and r.json()["message"], r.text
    node = lab["cluster"].ids["km1"]
    operator = lab["ca"].issue("host", ou="operator")
    for ident in (node, operator):
        r = anon.get(f"{url}/healthz", cert=(ident.cert, ident.key), timeout=10)
        assert r.status_code == 200 and "km0-km1" in r.json()["links"], r.text
        r = anon.get(f"{url}/metrics", cert=(ident.cert, ident.key), timeout=10)
        assert "qkdtwin_km_keys_delivered_total" in r.text and "qkdtwin_km_link_pool_bits" in r.text


def test_wrong_slave_cannot_tell_its_keys_from_missing_ones_and_keys_stay(lab):
    """Finding L5: dec_keys authorises before it looks the key IDs up, and answers IDs made
    for another slave exactly like IDs that do not exist (no probing of key IDs)."""
    a0 = lab["saes"]["sae-a0"]
    keys = a0.post(f"{km(lab, 'km0')}/api/v1/keys/sae-a2/enc_keys", json={"number": 2}
                   ).json()["keys"]
    ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}
    url = f"{km(lab, 'km2')}/api/v1/keys/sae-a0/dec_keys"
    r = lab["saes"]["sae-b2"].post(url, json=ids)
    missing = lab["saes"]["sae-b2"].post(url, json={"key_IDs": [
        {"key_ID": str(uuid.uuid4())} for _ in keys]})
    assert (r.status_code, r.json()) == (missing.status_code, missing.json()), (r.text,
                                                                                missing.text)
    assert r.status_code in (400, 401) and r.json()["message"]
    r = lab["saes"]["sae-a2"].post(f"{km(lab, 'km2')}/api/v1/keys/sae-b0/dec_keys", json=ids)
    assert r.status_code == 400  # wrong master named
    r = lab["saes"]["sae-a2"].post(f"{km(lab, 'km2')}/api/v1/keys/sae-a0/dec_keys", json=ids)
    assert r.status_code == 200 and r.json()["keys"] == keys


@pytest.mark.parametrize("method,path,kw,code,msg", [
    ("post", "/api/v1/keys/sae-a1/enc_keys", {"data": b"{not json"}, 400, "malformed JSON"),
    ("post", "/api/v1/keys/sae-a1/enc_keys", {"json": [1, 2]}, 400, "JSON object"),
    ("post", "/api/v1/keys/sae-a1/enc_keys", {"json": {"number": "x"}}, 400, "integer"),
    ("post", "/api/v1/keys/sae-a1/enc_keys", {"json": {"number": 10**9}}, 400, "between"),
    ("post", "/api/v1/keys/sae-a1/enc_keys", {"json": {"size": 12}}, 400,
     "size shall be a multiple of 8"),
    ("post", "/api/v1/keys/sae-a1/enc_keys", {"json": {"size": 2**40}}, 400, "between"),
    ("post", "/api/v1/keys/sae-a1/enc_keys", {"json": {"number": True}}, 400, "integer"),
    ("post", "/api/v1/keys/sae-a1/enc_keys",
     {"json": {"additional_slave_SAE_IDs": ["sae-a2"]}}, 400, "max_SAE_ID_count"),
    ("post", "/api/v1/keys/sae-a1/enc_keys",
     {"json": {"extension_mandatory": [{"abc_route_type": "direct"}]}}, 400,
     "not all extension_mandatory parameters are supported"),
    ("post", "/api/v1/keys/sae-a1/enc_keys",
     {"json": {"extension_mandatory": [{"qkdtwin_priority": 42}]}}, 400,
     "not all extension_mandatory request options could be met"),
    ("get", "/api/v1/keys/sae-a1/enc_keys?number=1&foo=2", {}, 400, "unsupported query"),
    ("post", "/api/v1/keys/sae-a1/dec_keys", {"json": {"key_IDs": "x"}}, 400, "key_IDs"),
    ("post", "/api/v1/keys/sae-a1/dec_keys", {"json": {"key_IDs": [{"key_ID": "nope"}]}}, 400,
     "one or more keys specified are not found on KME"),
    ("get", "/api/v1/keys/sae-a1/dec_keys", {}, 400, "exactly one key_ID"),
    ("post", "/api/v1/keys/sae-a1/enc_keys", {"data": b"{" + b" " * 100000 + b"}"}, 413,
     "larger than"),
    ("post", "/api/v1/qkd004/open_connect", {"json": {"source": 1}}, 400, "source"),
    ("post", "/api/v1/qkd004/open_connect",
     {"json": {"source": "sae-a0", "destination": "sae-a2", "qos": {"timeout": -1}}}, 400,
     "qos.timeout"),
    ("post", "/api/v1/qkd004/get_key", {"json": {"key_stream_id": "not-a-uuid"}}, 400, "UUID"),
    ("post", "/api/v1/qkd004/get_key", {"json": {"key_stream_id": str(uuid.UUID(int=1))}},
     404, "no key stream"),
    ("post", "/api/v1/qkd004/close", {"data": b""}, 400, "JSON object"),
    ("delete", "/api/v1/keys/sae-a1/enc_keys", {}, 405, ""),
    ("get", "/nothing/here", {}, 404, ""),
])
def test_bad_input_gets_clear_4xx(lab, method, path, kw, code, msg):
    r = getattr(lab["saes"]["sae-a0"], method)(f"{km(lab, 'km0')}{path}", **kw)
    assert r.status_code == code, r.text
    body = r.json()
    assert isinstance(body["message"], str) and body["message"]
    assert msg in body["message"]
    assert "Traceback" not in r.text
    if path.startswith("/api/v1/qkd004"):
        assert body["status"] == 10


def test_token_bucket_refuses_over_rate(lab):
    ctl = lab["ctl"]
    ctl.bucket = {"size_bits": 2048, "rate_bps": 256}
    try:
        b0 = lab["saes"]["sae-b0"]
        url = f"{km(lab, 'km0')}/api/v1/keys/sae-b2/enc_keys"
        codes = [b0.post(url, json={"number": 2, "size": 256}).status_code for _ in range(6)]
        assert codes[:4] == [200] * 4 and codes[4:] == [503, 503], codes
        r = b0.post(url, json={"number": 1, "size": 256})
        assert r.status_code == 503
        assert "token bucket" in r.json()["message"]
        assert r.json()["details"][0]["retry_after_s"] > 0
        r = b0.post(url, json={"number": 16, "size": 256})  # larger than the bucket itself
        assert r.status_code == 400
        time.sleep(1.1)  # 256 bit/s refill
        assert b0.post(url, json={"number": 1, "size": 256}).status_code == 200
    finally:
        ctl.bucket = {"size_bits": 10**9, "rate_bps": 10**9}


def test_004_token_bucket_status_9(lab):
    ctl = lab["ctl"]
    ctl.bucket = {"size_bits": 512, "rate_bps": 1}
    try:
        sid = str(uuid.uuid4())
        body = {"source": "sae-a1", "destination": "sae-a0", "key_stream_id": sid,
                "qos": {"key_chunk_size": 32, "timeout": 100}}
        a1, a0 = lab["saes"]["sae-a1"], lab["saes"]["sae-a0"]
        assert a1.post(f"{km(lab, 'km1')}/api/v1/qkd004/open_connect", json=body
                       ).json()["status"] == 1
        assert a0.post(f"{km(lab, 'km0')}/api/v1/qkd004/open_connect",
                       json={**body, "qos": {"key_chunk_size": 32, "timeout": 3000}}
                       ).json()["status"] == 0
        # the 100 ms QoS timeout can run out before the first relay is through (status 2,
        # its bits given back to the bucket): ask again, as an application would
        st = [get_key_until(a1, km(lab, "km1"), sid, patience_s=10, pause_s=0.1
                            ).json()["status"] for _ in range(3)]
        assert st == [0, 0, 9]
    finally:
        ctl.bucket = {"size_bits": 10**9, "rate_bps": 10**9}


def test_inactivity_timeout_terminates_and_confirms(lab):
    ctl = lab["ctl"]
    ctl.timeout_s = 1.0
    try:
        a1 = lab["saes"]["sae-a1"]
        r = a1.post(f"{km(lab, 'km1')}/api/v1/keys/sae-a0/enc_keys", json={})
        assert r.status_code == 200
        from qkdtwin.key_manager.sessions import session_id_014
        sid = session_id_014("sae-a1", "sae-a0")
        deadline = time.time() + 6
        while time.time() < deadline and {c[0] for c in ctl.confirms if c[1] == sid} != {
                "km0", "km1"}:
            time.sleep(0.1)
        closes = [p for p in ctl.of_type("close_request") if p["session_id"] == sid]
        assert closes and closes[0]["reason"] == "timeout" and closes[0]["km"] == "km1"
        assert {c[0] for c in ctl.confirms if c[1] == sid} == {"km0", "km1"}
        states = sorted((e for e in ctl.events if e.get("session_id") == sid
                         and e["kind"] == "session_state" and e["element"] == "km1"),
                        key=lambda e: e["ts"])
        assert [s["new"] for s in states][:3] == ["USER_ACCEPTED", "OPERATIVE", "KEY_EXCHANGING"]
        assert states[-1]["new"] == "TERMINATED"
    finally:
        ctl.timeout_s = 60.0
    # a new request opens a new session
    assert a1.post(f"{km(lab, 'km1')}/api/v1/keys/sae-a0/enc_keys", json={}).status_code == 200
    assert [p["type"] for p in ctl.of_type("key_request")]  # key-request signals were sent


def test_relayed_key_crosses_transit_only_encrypted(lab):
    """The transit KM km1 never holds a relayed key in clear: not in its database (WAL
    included), not in its log; what it forwards is OTP ciphertext."""
    import sqlite3
    a0 = lab["saes"]["sae-a0"]
    keys = []
    for _ in range(5):
        r = a0.post(f"{km(lab, 'km0')}/api/v1/keys/sae-a2/enc_keys", json={"number": 8})
        keys += [base64.b64decode(k["key"]) for k in r.json()["keys"]]
    blobs = b""
    for f in sorted((lab["dir"] / "km1").iterdir()):
        blobs += f.read_bytes()
    blobs += (lab["dir"] / "km1.log").read_bytes()
    for k in keys:
        assert k not in blobs
        assert base64.b64encode(k) not in blobs and k.hex().encode() not in blobs
    db = sqlite3.connect(lab["dir"] / "km1" / "km.sqlite")
    from qkdtwin.key_manager.sessions import session_id_014
    sid = session_id_014("sae-a0", "sae-a2")
    assert db.execute("SELECT count(*) FROM e2e_keys WHERE session_id=?", (sid,)
                      ).fetchone()[0] == 0
    db.close()
    # ...while the destination does hold them until its application asks
    blobs2 = b"".join(f.read_bytes() for f in (lab["dir"] / "km2").iterdir())
    assert any(k in blobs2 for k in keys)


@pytest.mark.slow
def test_sigkill_loses_and_duplicates_nothing(lab):
    """Kill the source KM, then the destination KM, with SIGKILL during relayed traffic:
    every key the master received is delivered to the slave exactly once, none twice."""
    import threading

    import requests
    cluster = lab["cluster"]
    a0, a2 = lab["saes"]["sae-a0"], lab["saes"]["sae-a2"]
    got: list[dict] = []
    errors: list[int] = []
    stop = threading.Event()

    def traffic():
        s = sae_session(lab["ca"], "sae-a0", "alice")
        while not stop.is_set():
            try:
                r = s.post(f"{km(lab, 'km0')}/api/v1/keys/sae-a2/enc_keys",
                           json={"number": 2}, timeout=5)
                if r.status_code == 200:
                    got.extend(r.json()["keys"])
                else:
                    errors.append(r.status_code)
            except requests.RequestException:
                errors.append(-1)
                time.sleep(0.05)

    def recovered(timeout=15.0):
        n = len(got)
        deadline = time.time() + timeout
        while time.time() < deadline and len(got) < n + 10:
            time.sleep(0.05)
        assert len(got) >= n + 10, f"no traffic after restart: {errors[-5:]}"

    t = threading.Thread(target=traffic)
    t.start()
    try:
        recovered()
        for node in ("km0", "km2", "km1"):
            cluster.kill(node)
            time.sleep(0.3)
            cluster.start_node(node)
            cluster.wait_healthy(node)
            t0 = time.time()
            recovered()
            print(f"{node} restarted; traffic again after {time.time() - t0:.2f}s")
    finally:
        stop.set()
        t.join(10)
    assert len(got) > 20, (len(got), errors)
    ids = [k["key_ID"] for k in got]
    assert len(set(ids)) == len(ids)
    assert len({k["key"] for k in got}) == len(got)
    # the slave gets every one of them, once
    delivered = []
    for i in range(0, len(ids), 100):
        r = a2.post(f"{km(lab, 'km2')}/api/v1/keys/sae-a0/dec_keys",
                    json={"key_IDs": [{"key_ID": k} for k in ids[i:i + 100]]})
        assert r.status_code == 200, r.text
        delivered += r.json()["keys"]
    assert delivered == got
    r = a2.post(f"{km(lab, 'km2')}/api/v1/keys/sae-a0/dec_keys",
                json={"key_IDs": [{"key_ID": ids[0]}]})
    assert r.status_code == 400
    # and the pair still works after the restarts
    r = a0.post(f"{km(lab, 'km0')}/api/v1/keys/sae-a2/enc_keys", json={})
    assert r.status_code == 200, r.text
    print(f"SIGKILL test: {len(got)} keys delivered, refused/failed meanwhile: {errors}")


def test_004_pair_on_one_km_and_014_local_pair(lab):
    """Both applications on km0: no relay, the KM makes the keys itself."""
    a0, b0 = lab["saes"]["sae-a0"], lab["saes"]["sae-b0"]
    base = km(lab, "km0")
    sid = str(uuid.uuid4())
    body = {"source": "sae-a0", "destination": "sae-b0", "key_stream_id": sid,
            "qos": {"key_chunk_size": 16, "timeout": 100}}
    assert a0.post(f"{base}/api/v1/qkd004/open_connect", json=body).json()["status"] == 1
    r = b0.post(f"{base}/api/v1/qkd004/open_connect",
                json={**body, "qos": {"key_chunk_size": 16, "timeout": 3000}}).json()
    assert r["status"] == 0, r
    ka = [a0.post(f"{base}/api/v1/qkd004/get_key", json={"key_stream_id": sid}).json()
          for _ in range(2)]
    kb = [b0.post(f"{base}/api/v1/qkd004/get_key", json={"key_stream_id": sid}).json()
          for _ in range(2)]
    assert [k["status"] for k in ka + kb] == [0] * 4, (ka, kb)
    assert [k["key_buffer"] for k in ka] == [k["key_buffer"] for k in kb]
    assert ka[0]["key_buffer"] != ka[1]["key_buffer"]
    r = b0.post(f"{base}/api/v1/keys/sae-a0/enc_keys", json={"number": 2})
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    r = a0.post(f"{base}/api/v1/keys/sae-b0/dec_keys",
                json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
    assert r.status_code == 200 and r.json()["keys"] == keys


def test_014_sizes_within_the_users_sla(lab):
    """carol's SLA allows 128-bit keys (the KM's default is 256): STATUS says so, a request
    without size gets 128-bit keys, a bigger size is refused with a clear 400."""
    c0 = lab["saes"]["sae-c0"]
    base = km(lab, "km0")
    st = c0.get(f"{base}/api/v1/keys/sae-a1/status")
    assert st.status_code == 200, st.text
    assert st.json()["key_size"] == 128 and st.json()["max_key_size"] == 128
    r = c0.post(f"{base}/api/v1/keys/sae-a1/enc_keys", json={"number": 2})
    assert r.status_code == 200, r.text
    assert [len(base64.b64decode(k["key"])) for k in r.json()["keys"]] == [16, 16]
    r = c0.post(f"{base}/api/v1/keys/sae-a1/enc_keys", json={"size": 256})
    assert r.status_code == 400
    assert "exceeds the 128 bits the SLA of user carol allows" in r.json()["message"]
