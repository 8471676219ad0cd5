"""The Key Manager's "Done when" of issue 4 on a *deployed* line3 lab (fixture `deployed_lab`:
a copy of labs/line3 named `infline3`, km0 – km1 – km2 with real QKD modules, the real
control plane on `ctl`, Mosquitto with TLS on `broker`, one supervisord per node).

Everything goes through the lab's public interfaces: applications call the KMs at
`https://<mgmt>:8443` with the SAE certificates the pki role issued (qkdtwin.sae.SaeClient),
the flows are observed on the lab's broker as the operator (CN=host, `qkd/v1/events/+`),
processes are driven with the node's supervisorctl inside its namespace. Two helpers read
a KM's files from the host (the netns runtime shares the host file system): the transit
check greps km1's database and log, and the priority test reads how much link key km0 holds
(read-only) to drain it exactly.

The lab is shared with tests/infra and test_qkd_links.py: every test leaves the modules and
KMs running, closes the ETSI 004 streams it opens, and the module teardown ends the ETSI 014
sessions it created (as their KM would: `close_request` to admission control) and waits
until admission control is back to the live sessions it had before.

Key is scarce on this lab (10 MHz sources: ~3.9 kbit/s on km0-km1, ~1.8 kbit/s on km1-km2),
so the tests ask for few keys and retry a 503 that says "retry later", as applications do.
The priority test leaves km0 with little link key towards km1 (its pool refills at the
link's rate, ~1 KB every 2 s).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from qkdtwin.key_manager.sessions import session_id_014
from qkdtwin.labops.lab import DeployedLab as SaeLab
from qkdtwin.sae.client import SaeClient, SaeError
from tests.support.lab_events import LabEvents
from tests.support.waiting import wait_for as support_wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUPERVISORCTL = "-m supervisor.supervisorctl -c /etc/qkdtwin/supervisord.conf"
SAES = ("sae-a0", "sae-a1", "sae-a2", "sae-b0", "sae-b2", "sae-m2")
# the ETSI 014 (master, slave) pairs these tests may open; ended at teardown
PAIRS_014 = (("sae-a0", "sae-a1"), ("sae-a0", "sae-a2"), ("sae-b0", "sae-b2"))
PAUSE_MAX_S = 8.0  # a paused QKD module: below monitoring's stale_s (15 s), so no link alarm


# this file polls every 0.1 s
wait_for = partial(support_wait_for, step=0.1)


class Lab:
    """The deployed lab as these tests use it."""

    def __init__(self, deployed, tmp: Path) -> None:
        self.d = deployed
        self.sae_lab = SaeLab.load(deployed.lab.path)
        self.python = deployed.all_vars["qkdtwin_python"]
        self.tmp = tmp
        self.clients = {s: self.client(s) for s in SAES}
        self.events = LabEvents(self.sae_lab)
        self.relayed_keys: list[bytes] = []  # every relayed key value handed out here

    # -- applications --

    def client(self, sae: str) -> SaeClient:
        cert, key = self.sae_lab.sae_identity(sae)
        return SaeClient(self.sae_lab.km_url(self.sae_lab.sae_km(sae)), cert, key,
                         self.sae_lab.ca, sae_id=sae)

    def raw(self, sae: str) -> requests.Session:
        """A plain HTTPS session with the SAE's certificate (ETSI 014 GET forms)."""
        s = requests.Session()
        s.cert = tuple(str(p) for p in self.sae_lab.sae_identity(sae))
        s.verify = str(self.sae_lab.ca)
        s.trust_env = False
        return s

    def url(self, km: str) -> str:
        return self.sae_lab.km_url(km)

    def health(self, km: str) -> dict[str, Any]:
        return self.sae_lab.km_health([km], timeout=10)[km] or {}

    # -- nodes --

    def ns(self, node: str) -> str:
        return self.d.lab.namespace(node)

    def supervisorctl(self, node: str, *args: str) -> str:
        argv = ["ip", "netns", "exec", self.ns(node), self.python, *SUPERVISORCTL.split(),
                *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip()

    def pid(self, node: str, program: str) -> int:
        out = self.supervisorctl(node, "pid", program)
        return int(out) if out.isdigit() else 0

    def data_dir(self, node: str) -> Path:
        return Path(self.d.hostvars(node)["qkdtwin_data_dir"])

    def km_db(self, node: str) -> Path:
        return self.data_dir(node) / "key_manager" / "km.sqlite"

    def query(self, node: str, sql: str, args: tuple = ()) -> Any:
        """One value from a KM's database, read-only (WAL: a consistent snapshot)."""
        db = sqlite3.connect(f"file:{self.km_db(node)}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, args).fetchone()[0]
        finally:
            db.close()

    def admission_sessions(self) -> dict[str, int]:
        node = self.d.nodes_with_role("admission")[0]
        out = subprocess.run(["ip", "netns", "exec", self.ns(node), "curl", "-sf",
                              "http://127.0.0.1:9102/healthz"],
                             capture_output=True, text=True, timeout=30).stdout
        return json.loads(out)["sessions"]

    def close_014_sessions(self) -> None:
        """End the ETSI 014 sessions of PAIRS_014 the way their master's KM would."""
        for master, slave in PAIRS_014:
            km = self.sae_lab.sae_km(master)
            self.events.bus.publish(f"qkd/v1/admission/in/{km}", {
                "type": "close_request", "km": km,
                "session_id": session_id_014(master, slave), "reason": "closed"})


@pytest.fixture(scope="module")
def lab(deployed_lab, tmp_path_factory):
    lab = Lab(deployed_lab, tmp_path_factory.mktemp("kmdeployed"))
    lab.events.start()
    for km in ("km0", "km1", "km2"):  # every KM up, with link key to start from
        wait_for(lambda km=km: (lambda h: h.get("ok") and all(
            v["pool_bits"] > 0 for v in h["links"].values()))(lab.health(km)),
            120, f"{km} healthy with link key")
    # a link alarm (e.g. left by an eavesdropper test, cleared a few seconds after the QBER is
    # back) takes the link out of routing: wait until every link is clear
    wait_for(lambda: not lab.events.active_alarms(), 120, "no link alarm", step=0.5)
    before = lab.admission_sessions().get("active", 0)
    yield lab
    try:
        lab.close_014_sessions()
        wait_for(lambda: lab.admission_sessions().get("active", 0) <= before, 30,
                 "admission control back to the live sessions it had before these tests")
    finally:
        lab.events.stop()
        for c in lab.clients.values():
            c.close_connection()


def ids_of(keys: list[dict[str, str]]) -> list[str]:
    return [k["key_ID"] for k in keys]


KEY_WAIT_S = 60.0  # how long an application here retries for key (the lab makes it slowly)


def _retry_later(code: int, message: str) -> bool:
    """A 503 that is not the token bucket: no key yet on some link of the path ("not enough
    key available ... retry later", or a relay refused for lack of link key further on)."""
    return code == 503 and "token bucket" not in message


def enc_keys(client: SaeClient, slave: str, **kw: Any) -> Any:
    """ETSI 014 enc_keys as an application does it on a lab short of key: a 503 that says
    to retry later is asked again, up to KEY_WAIT_S."""
    deadline = time.monotonic() + KEY_WAIT_S
    while True:
        r = client.enc_keys(slave, **kw)
        if not _retry_later(r.http, r.message) or time.monotonic() > deadline:
            return r
        time.sleep(0.5)


def get_retry(session: requests.Session, url: str, **params: Any) -> requests.Response:
    """The GET form, retried the same way."""
    deadline = time.monotonic() + KEY_WAIT_S
    while True:
        r = session.get(url, params=params, timeout=30)
        if not _retry_later(r.status_code, r.text) or time.monotonic() > deadline:
            return r
        time.sleep(0.5)


# -- ETSI 014 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("slave,slave_km", [("sae-a1", "km1"), ("sae-a2", "km2")],
                         ids=["adjacent", "relayed"])
def test_014_master_and_slave_get_the_same_keys_once(lab, slave, slave_km):
    a0, sl = lab.clients["sae-a0"], lab.clients[slave]
    st = a0.status(slave)
    assert st.http == 200, st.body
    assert st.body["source_KME_ID"] == "km0" and st.body["target_KME_ID"] == slave_km
    assert st.body["master_SAE_ID"] == "sae-a0" and st.body["slave_SAE_ID"] == slave
    # GET and POST forms of enc_keys
    r = get_retry(lab.raw("sae-a0"), f"{lab.url('km0')}/api/v1/keys/{slave}/enc_keys",
                  number=2, size=512)
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert len(keys) == 2 and all(len(base64.b64decode(k["key"])) == 64 for k in keys)
    p = enc_keys(a0, slave, number=3)
    assert p.http == 200, p.body
    assert len(p.keys()) == 3 and all(len(base64.b64decode(k["key"])) == 32 for k in p.keys())
    keys += p.keys()
    assert len(set(ids_of(keys))) == 5 and len({k["key"] for k in keys}) == 5
    # the slave gets them by ID from its own KM: GET for one, POST for the rest
    r = lab.raw(slave).get(f"{lab.url(slave_km)}/api/v1/keys/sae-a0/dec_keys",
                           params={"key_ID": keys[0]["key_ID"]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["keys"] == keys[:1]
    d = sl.dec_keys("sae-a0", ids_of(keys[1:]))
    assert d.http == 200, d.body
    assert d.keys() == keys[1:]
    # delivered once: the same ID again is refused
    again = sl.dec_keys("sae-a0", [keys[2]["key_ID"]])
    assert again.http == 400, again.body
    assert again.message == "one or more keys specified are not found on KME"
    if slave_km == "km2":
        lab.relayed_keys += [base64.b64decode(k["key"]) for k in keys]
        sid = session_id_014("sae-a0", slave)
        wait_for(lambda: lab.events.find("km1", "relay_forward", sid), 10,
                 "km1 relay_forward of the relayed pair")
        assert lab.events.find("km2", "relay_receive", sid)


# -- ETSI 004 ---------------------------------------------------------------------------------

def test_004_relayed_pair_same_stream_then_close_deletes_on_every_km(lab):
    a0, a2 = lab.clients["sae-a0"], lab.clients["sae-a2"]
    sid = str(uuid.uuid4())
    # the first application's OPEN_CONNECT waits up to its QoS timeout for the peer
    qos = {"key_chunk_size": 32, "timeout": 300, "priority": 4}
    r0 = a0.open_connect("sae-a0", "sae-a2", qos, sid)
    assert r0.http == 200 and r0.status == 1, r0.body  # the peer has not connected yet
    assert a0.get_key(sid).status == 3
    r2 = a2.open_connect("sae-a0", "sae-a2", {**qos, "timeout": 5000}, sid)
    assert r2.http == 200 and r2.status == 0, r2.body
    assert r2.body["key_stream_id"] == sid
    try:
        got0 = [a0.wait_key(sid, timeout=KEY_WAIT_S) for _ in range(3)]
        got2 = [a2.wait_key(sid, index=i, timeout=KEY_WAIT_S) for i in range(3)]
        assert [g.status for g in got0 + got2] == [0] * 6, [g.body for g in got0 + got2]
        assert [g.body["index"] for g in got0] == [0, 1, 2]
        assert [g.body["index"] for g in got2] == [0, 1, 2]
        assert [g.body["key_buffer"] for g in got0] == [g.body["key_buffer"] for g in got2]
        chunks = [base64.b64decode(g.body["key_buffer"]) for g in got0]
        assert all(len(c) == 32 for c in chunks) and len(set(chunks)) == 3
        lab.relayed_keys += chunks
        # an index is delivered once
        twice = a2.get_key(sid, index=1)
        assert twice.http == 409 and twice.status == 10, twice.body
        path = [e for e in lab.events.find("ctl", "path_assigned", sid)]
        assert path and path[-1]["path"] == ["km0", "km1", "km2"], path
    finally:
        closed = a0.close(sid)
    assert closed.http == 200 and closed.status == 0, closed.body
    wait_for(lambda: {e["element"] for e in lab.events.find(kind="session_deleted",
                                                             session_id=sid)}
             >= {"km0", "km1", "km2"}, 15, "session_deleted on km0, km1 and km2")
    wait_for(lambda: lab.events.find("ctl", "session_terminated", sid), 15,
             "admission control to terminate the session")
    after = a2.get_key(sid)  # the peer's stream is closed too (or already purged)
    assert after.status == 4 or (after.http == 404 and after.status == 10), after.body


# -- relayed keys cross the transit KM only encrypted ------------------------------------------

def test_relayed_keys_cross_km1_only_encrypted(lab):
    """Neither km1's database (WAL included) nor its log holds a relayed key in clear, raw,
    base64 or hex; km1 forwarded them (relay_forward) and keeps no end-to-end key."""
    a0, a2 = lab.clients["sae-a0"], lab.clients["sae-a2"]
    r = enc_keys(a0, "sae-a2", number=8)
    assert r.http == 200, r.body
    sid = session_id_014("sae-a0", "sae-a2")
    # the destination holds the relayed keys before its application asks (stored, then
    # acknowledged: the source hands out acknowledged keys only)
    assert lab.query("km2", "SELECT count(*) FROM e2e_keys WHERE session_id=? AND key_id IN"
                     f" ({','.join('?' * 8)})", (sid, *ids_of(r.keys()))) == 8
    d = a2.dec_keys("sae-a0", ids_of(r.keys()))
    assert d.http == 200 and d.keys() == r.keys()
    lab.relayed_keys += [base64.b64decode(k["key"]) for k in r.keys()]
    keys = lab.relayed_keys
    assert len(keys) >= 8
    kmdir = lab.km_db("km1").parent
    files = sorted(kmdir.glob("km.sqlite*")) + [lab.data_dir("km1") / "logs" / "key_manager.log"]
    assert lab.km_db("km1") in files and files[-1].is_file()
    blob = b"".join(f.read_bytes() for f in files if f.is_file())
    assert len(blob) > 10_000, "km1's database and log are unexpectedly empty"
    for k in keys:
        for form in (k, base64.b64encode(k), k.hex().encode(), k.hex().upper().encode()):
            assert form not in blob, f"a relayed key is in km1's files ({form[:12]!r}...)"
    # (km1 does hold keys of sessions it ends, e.g. sae-a0 -> sae-a1: not of this one)
    assert lab.query("km1", "SELECT count(*) FROM e2e_keys WHERE session_id=?", (sid,)) == 0
    assert lab.query("km1", "SELECT count(*) FROM e2e_keys WHERE slave='sae-a2'") == 0
    fwd = wait_for(lambda: lab.events.find("km1", "relay_forward", sid), 10, "relay_forward")
    assert all(e["from_km"] == "km0" and e["to_km"] == "km2" for e in fwd)


# -- token buckets from the SLA ---------------------------------------------------------------

def test_014_token_bucket_from_bobs_sla(lab):
    """bob's SLA max_key_rate 8192 bit/s: admission configures a bucket of 8192 bits refilled
    at 8192 bit/s (qkdtwin.control.sla.bucket_for); a burst beyond it gets 503 naming the
    token bucket with retry_after_s, and after that wait requests succeed again."""
    b0 = lab.clients["sae-b0"]
    # opens the session; STATUS returns once the source's prefetch of 64 keys (256 bits, the
    # default size) is acknowledged by km2, so the bursts below are served from ready keys
    # (STATUS waits up to 5 s for that acknowledgement: km1-km2 makes ~1.8 kbit/s, so after
    # other tests drew on it, ask again like an application would)
    wait_for(lambda: (lambda r: r if r.http == 200 and r.body.get("target_KME_ID")
                         == "km2" else None)(b0.status("sae-b2")), 90,
                "STATUS naming km2 (the prefetch acknowledged)")
    over = b0.enc_keys("sae-b2", number=64)  # 16384 bits: more than the bucket ever holds
    assert over.http == 400 and "token bucket of 8192 bits" in over.message, over.body
    for _attempt in range(3):
        time.sleep(1.2)  # the bucket is full again
        t0 = time.monotonic()
        full = enc_keys(b0, "sae-b2", number=32)  # 8192 bits: the whole bucket
        assert full.http == 200, full.body
        burst = b0.enc_keys("sae-b2", number=32)
        if time.monotonic() - t0 < 0.8:  # under a second: the bucket cannot have refilled
            break
    assert burst.http == 503, burst.body
    assert "token bucket" in burst.message, burst.body
    det = burst.body["details"][0]
    assert det["rate_bps"] == 8192 and det["size_bits"] == 8192, det
    assert 0 < det["retry_after_s"] <= 1.0, det
    time.sleep(det["retry_after_s"] + 0.05)
    again = enc_keys(b0, "sae-b2", number=32)
    assert again.http == 200, again.body
    cfg = [e for e in lab.events.find("km0", "session_configured",
                                      session_id_014("sae-b0", "sae-b2"))]
    assert cfg and cfg[-1]["priority"] <= 3  # bob's max_priority


def test_004_get_key_over_rate_gets_status_9(lab):
    a0, a1 = lab.clients["sae-a0"], lab.clients["sae-a1"]
    sid = str(uuid.uuid4())
    qos = {"key_chunk_size": 32, "timeout": 300, "max_bps": 512}  # bucket: 2 chunks
    assert a0.open_connect("sae-a0", "sae-a1", qos, sid).status == 1
    try:
        assert a1.open_connect("sae-a0", "sae-a1", {**qos, "timeout": 5000}, sid).status == 0
        assert a0.wait_key(sid, timeout=KEY_WAIT_S).status == 0  # chunks are relayed ahead
        statuses: list[int | None] = []
        for _attempt in range(3):
            time.sleep(2.2)  # a full bucket again (512 bits at 512 bit/s)
            t0 = time.monotonic()
            got = [a0.get_key(sid) for _ in range(3)]
            statuses = [g.status for g in got]
            if time.monotonic() - t0 < 0.45 and 2 not in statuses:
                break
        assert statuses == [0, 0, 9], [g.body for g in got]
        refused = got[2].body
        assert "token bucket" in refused["message"] and refused["retry_after_s"] > 0, refused
        time.sleep(refused["retry_after_s"] + 0.05)
        assert a0.wait_key(sid, timeout=KEY_WAIT_S).status == 0
    finally:
        a0.close(sid)


# -- unauthorised callers -----------------------------------------------------------------------

def test_no_certificate_gets_json_401(lab):
    ca = str(lab.sae_lab.ca)
    r = requests.post(f"{lab.url('km0')}/api/v1/keys/sae-a1/enc_keys", json={}, verify=ca,
                      timeout=30)
    assert r.status_code == 401 and "certificate" in r.json()["message"], r.text
    r = requests.post(f"{lab.url('km2')}/api/v1/qkd004/open_connect", json={}, verify=ca,
                      timeout=30)
    assert r.status_code == 401 and r.json()["status"] == 10, r.text


def test_unknown_sae_with_a_lab_certificate_gets_401(lab):
    from tests.support.pki import TestCA

    pki = lab.sae_lab.pki
    ident = TestCA.load(pki / "ca.crt", pki / "ca.key", lab.tmp / "ca").issue(
        "sae-zz", ou="sae", o="alice")
    zz = SaeClient(lab.url("km2"), ident.cert, ident.key, lab.sae_lab.ca)
    r = zz.enc_keys("sae-a0")
    assert r.http == 401 and "not authorised" in r.message, r.body
    r = zz.open_connect("sae-zz", "sae-a0", {"key_chunk_size": 32})
    assert r.http == 401 and r.status == 10, r.body
    # a certificate naming a known SAE with another user is refused as well
    liar = TestCA.load(pki / "ca.crt", pki / "ca.key", lab.tmp / "ca2").issue(
        "sae-a2", ou="sae", o="bob")
    r = SaeClient(lab.url("km2"), liar.cert, liar.key, lab.sae_lab.ca).status("sae-a0")
    assert r.http == 401, r.body


def test_disabled_user_gets_401(lab):
    m2 = lab.clients["sae-m2"]
    r = m2.enc_keys("sae-a0")
    assert r.http == 401 and "disabled" in r.message, r.body
    r = m2.open_connect("sae-m2", "sae-a0", {"key_chunk_size": 16})
    assert r.http == 401 and r.status == 10 and "disabled" in r.message, r.body


def test_wrong_slave_cannot_tell_its_keys_from_missing_ones_and_keys_stay(lab):
    a0 = lab.clients["sae-a0"]
    r = enc_keys(a0, "sae-a2", number=2)
    assert r.http == 200, r.body
    ids = ids_of(r.keys())
    wrong = lab.clients["sae-b2"].dec_keys("sae-a0", ids)
    missing = lab.clients["sae-b2"].dec_keys("sae-a0", [str(uuid.uuid4()) for _ in ids])
    assert (wrong.http, wrong.body) == (missing.http, missing.body), (wrong.body, missing.body)
    assert wrong.http in (400, 401) and wrong.message, wrong.body
    named = lab.clients["sae-a2"].dec_keys("sae-b0", ids)  # right slave, wrong master named
    assert named.http == 400, named.body
    right = lab.clients["sae-a2"].dec_keys("sae-a0", ids)
    assert right.http == 200 and right.keys() == r.keys(), right.body
    lab.relayed_keys += [base64.b64decode(k["key"]) for k in r.keys()]


def test_application_on_the_km_to_km_api_gets_403(lab):
    for path in ("/kmapi/v1/ext_keys", "/kmapi/v1/link_keys", "/kmapi/v1/demand"):
        r = lab.raw("sae-a1").post(f"{lab.url('km0')}{path}", json={}, timeout=30)
        assert r.status_code == 403 and r.json()["message"], (path, r.text)


# -- priorities when link key is scarce --------------------------------------------------------

def test_higher_priority_served_first_when_key_is_scarce(lab):
    """km0's key for km0-km1 runs out while the link's module is paused: the queued jobs of
    a priority-1 stream (queued first) and of a priority-8 stream (queued later) wait; when
    the module goes on, km0 relays the priority-8 stream's chunks first.

    The module is paused with SIGSTOP, not stopped: `supervisorctl stop` makes the peer
    module report `connecting`, monitoring raises link_down at once and admission ends every
    session on the link (correctly). A pause shorter than monitoring's stale_s raises
    nothing. Link key is drained exactly: km0's own key count is read from its database and
    one ETSI 004 "run-ahead" demand (the destination application asks for a far index) takes
    all but a few keys."""
    a0, a1 = lab.clients["sae-a0"], lab.clients["sae-a1"]
    link = "km0-km1"
    streams: dict[str, str] = {}
    for tag, prio in (("drain", 0), ("low", 1), ("high", 8)):
        sid = streams[tag] = str(uuid.uuid4())
        qos = {"key_chunk_size": 32, "timeout": 300, "priority": prio}
        assert a0.open_connect("sae-a0", "sae-a1", qos, sid).status == 1
        # the destination's get_key (the demands below) waits up to its own QoS timeout
        assert a1.open_connect("sae-a0", "sae-a1", {**qos, "timeout": 5000}, sid).status == 0
    demands: list[threading.Thread] = []

    def produced(tag: str) -> int:  # chunks the source made so far
        return lab.query("km0", "SELECT coalesce(max(value), 0) FROM counters WHERE name=?",
                         (f"idx:{streams[tag]}",))

    def own_keys() -> int:
        return lab.query("km0", "SELECT count(*) FROM link_keys WHERE link=? AND owner=?"
                         " AND state=1", (link, "km0"))

    def settled(count, quiet_s: float, timeout: float) -> int:
        """count() once it has not changed for quiet_s (or when timeout has passed)."""
        last, since, deadline = count(), time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
            time.sleep(0.1)
            now = count()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def demand(tag: str, chunks: int) -> None:
        """The destination asks for a far index: the source makes `chunks` chunks in one job
        (index - produced + prefetch_chunks 8), which needs chunks + 1 link keys."""
        idx = produced(tag) - 1 + chunks - 8
        t = threading.Thread(target=a1.get_key, args=(streams[tag], idx), daemon=True)
        t.start()
        demands.append(t)

    try:
        for tag in streams:  # warm: the source's prefetch of 8 chunks is through
            assert a0.wait_key(streams[tag], timeout=KEY_WAIT_S).status == 0
            wait_for(lambda tag=tag: produced(tag) >= 8 and not lab.query(
                "km0", "SELECT count(*) FROM e2e_keys WHERE session_id=? AND side='pend'",
                (streams[tag],)), 20, f"prefetch of {tag}")
        time.sleep(0.3)
        module = lab.pid("km0", f"qkd-{link}")
        assert module, lab.supervisorctl("km0", "status")
        t_pause = time.time()
        os.kill(module, signal.SIGSTOP)
        try:
            # link keys pulled just before are confirmed by km1 (under load that takes more
            # than a moment): drain only once km0's count has settled
            have = settled(own_keys, quiet_s=1.0, timeout=5.0)
            while have > 12:
                # take all but ~3 keys: a job of n chunks sends ceil(n / 512) relay messages,
                # each n_i * 32 bytes + a 32-byte MAC key, in 32-byte link keys; an index
                # may be at most 1024 chunks ahead of the stream, so in steps
                n = min(have - 4, 1000)
                while n + -(-n // 512) > have - 3:
                    n -= 1
                demand("drain", n)
                wait_for(lambda have=have, n=n: own_keys() <= have - n, 5,
                         "km0's link key to be drained")
                have = own_keys()
            left = own_keys()
            # a drain job is at least 9 chunks (10 link keys), so the loop above ends with up
            # to 12; what matters is that fewer are left than either job below needs (25)
            assert left <= 12, left
            t_low = time.time()
            demand("low", 24)  # each job needs 25 link keys: more than is left
            time.sleep(1.0)
            t_high = time.time()
            demand("high", 24)
            time.sleep(1.0)
            assert own_keys() == left, "km0 got link key while its module was paused"
        finally:
            os.kill(module, signal.SIGCONT)
            t_resume = time.time()
        assert t_resume - t_pause < PAUSE_MAX_S
        sent = {tag: wait_for(lambda tag=tag: lab.events.find(
            "km0", "relay_send", streams[tag], since=t_low), 30, f"{tag} chunks relayed")
            for tag in ("low", "high")}
        first = {tag: min(e["ts"] for e in ev) for tag, ev in sent.items()}
        print(f"\npaused {t_resume - t_pause:.1f} s, {have} -> {left} own link keys; low "
              f"queued at +{t_low - t_pause:.2f} s, high at +{t_high - t_pause:.2f} s; "
              f"first relay: high +{first['high'] - t_pause:.2f} s, "
              f"low +{first['low'] - t_pause:.2f} s")
        assert first["low"] >= t_resume and first["high"] >= t_resume, \
            "a queued job ran without link key"
        assert first["high"] < first["low"], "the priority-1 stream was served first"
        assert not lab.events.alarms(link, t_pause), "the pause raised a link alarm"
    finally:
        for t in demands:
            t.join(10)
        for sid in streams.values():
            a0.close(sid)


# -- SIGKILL of a KM during relayed traffic ----------------------------------------------------

def test_sigkill_of_a_km_loses_and_duplicates_no_key(lab):
    """kill -9 of km0's, km1's and then km2's key_manager during relayed ETSI 014 traffic
    (sae-a0@km0 -> sae-a2@km2): supervisord restarts it, traffic resumes through the
    restarted KM, and every key the master got is delivered to the slave exactly once; no
    key ID or value twice. The traffic asks for 512-bit keys (not the session's 256-bit
    default, which the source prefetches), so every request is relayed end to end while
    the KMs are killed."""
    sid = session_id_014("sae-a0", "sae-a2")
    got: list[dict[str, str]] = []
    failures: list[str] = []
    stop = threading.Event()
    master = lab.client("sae-a0")
    master.timeout = 10

    def traffic() -> None:
        while not stop.is_set():
            try:
                r = master.enc_keys("sae-a2", number=2, size=512)
            except SaeError as exc:
                failures.append(str(exc)[:80])
                time.sleep(0.2)
                continue
            if r.http == 200:
                got.extend(r.keys())
            else:
                failures.append(f"{r.http} {r.message[:60]}")
            time.sleep(0.05)

    def more_keys(n: int, timeout: float) -> None:
        start = len(got)
        wait_for(lambda: len(got) >= start + n, timeout,
                 f"{n} more keys (failures: {failures[-3:]})", step=0.1)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    report = []
    try:
        more_keys(6, 30)
        for node in ("km0", "km1", "km2"):
            old = lab.pid(node, "key_manager")
            assert old, lab.supervisorctl(node, "status")
            t0, killed = time.monotonic(), time.time()
            os.kill(old, signal.SIGKILL)
            new = wait_for(lambda node=node, old=old: (lambda p: p if p and p != old else 0)(
                lab.pid(node, "key_manager")), 30, f"supervisord to restart {node}'s KM")
            wait_for(lambda node=node: _healthy(lab, node), 30, f"{node} healthy again")
            # keys relayed end to end through the restarted KM, and handed out after it
            kind = {"km0": "relay_ack", "km1": "relay_forward", "km2": "relay_receive"}[node]
            wait_for(lambda node=node, kind=kind, killed=killed: lab.events.find(
                node, kind, sid, since=killed), 45, f"a relay through the restarted {node}")
            more_keys(6, 45)
            report.append(f"{node}: pid {old} -> {new}, traffic again after "
                          f"{time.monotonic() - t0:.1f} s")
    finally:
        stop.set()
        worker.join(15)
        master.close_connection()
    print("\n" + "; ".join(report) + f"; {len(got)} keys, failures meanwhile: "
          f"{len(failures)} {sorted(set(failures))[:4]}")
    ids = ids_of(got)
    assert len(set(ids)) == len(ids), "a key ID was handed out twice"
    assert len({k["key"] for k in got}) == len(got), "a key value was handed out twice"
    delivered: list[dict[str, str]] = []
    slave = lab.clients["sae-a2"]
    for i in range(0, len(ids), 100):
        d = slave.dec_keys("sae-a0", ids[i:i + 100])
        assert d.http == 200, d.body
        delivered += d.keys()
    assert delivered == got
    again = slave.dec_keys("sae-a0", ids[:1])
    assert again.http == 400, again.body
    for node in ("km0", "km1", "km2"):  # RUNNING again once past supervisord's startsecs
        wait_for(lambda node=node: "RUNNING" in lab.supervisorctl(node, "status",
                                                                   "key_manager"),
                 30, f"{node}'s key_manager RUNNING")
    lab.relayed_keys += [base64.b64decode(k["key"]) for k in got]


def _healthy(lab: Lab, node: str) -> bool:
    try:
        h = lab.health(node)
    except (requests.RequestException, ValueError):
        return False
    return bool(h.get("ok") and h.get("broker"))
