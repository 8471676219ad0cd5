"""Key Managers recovering from faults on a relayed ETSI 004 stream (km0 – km1 – km2 on
loopback, fake QKD modules, real Mosquitto, the stand-in control plane): a killed transit,
a session_config that never reached a KM, a relay whose acknowledgement was lost."""

from __future__ import annotations

import base64
import sqlite3
import time
import uuid

import pytest

from tests.support.km_cluster import get_key_until, km_lab

pytestmark = pytest.mark.integration

USERS = {
    "sae-a0": {"user": "alice", "km": "km0"},
    "sae-a2": {"user": "alice", "km": "km2"},
}
LINKS = [("km0", "km1"), ("km1", "km2")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    d = tmp_path_factory.mktemp("kmrecovery")
    with km_lab(d, test_ca, USERS, LINKS, extra={"request_wait_s": 2.0}) as lab:
        yield lab


def _get(lab, sae: str, node: str, sid: str, index: int | None = None) -> dict:
    body: dict = {"key_stream_id": sid}
    if index is not None:
        body["index"] = index
    r = lab["saes"][sae].post(f"{lab['cluster'].url(node)}/api/v1/qkd004/get_key", json=body,
                              timeout=10)
    return {**r.json(), "http": r.status_code}


def _get_until(lab, sae: str, node: str, sid: str, index: int | None = None,
               timeout: float = 30.0) -> dict:
    """GET_KEY until an answer that is not 'ask again' (km_cluster.GET_KEY_AGAIN), or give up."""
    r = get_key_until(lab["saes"][sae], lab["cluster"].url(node), sid, index,
                      patience_s=timeout)
    return {**r.json(), "http": r.status_code}


def _open(lab) -> str:
    sid = str(uuid.uuid4())
    body = {"source": "sae-a0", "destination": "sae-a2", "key_stream_id": sid,
            "qos": {"key_chunk_size": 32, "timeout": 500}}
    url0, url2 = lab["cluster"].url("km0"), lab["cluster"].url("km2")
    r = lab["saes"]["sae-a0"].post(f"{url0}/api/v1/qkd004/open_connect", json=body, timeout=15)
    assert r.json()["status"] == 1, r.text
    r = lab["saes"]["sae-a2"].post(f"{url2}/api/v1/qkd004/open_connect",
                                   json={**body, "qos": {**body["qos"], "timeout": 5000}},
                                   timeout=15)
    assert r.json()["status"] == 0, r.text
    return sid


def _same_keys_both_ends(lab, sid: str, first: int, n: int) -> list[str]:
    """The source application's next ``n`` keys start at index ``first`` without a gap and
    the destination gets the same key at every index."""
    src = [_get_until(lab, "sae-a0", "km0", sid) for _ in range(n)]
    assert [g.get("status") for g in src] == [0] * n, src
    assert [g["index"] for g in src] == list(range(first, first + n))
    dst = [_get_until(lab, "sae-a2", "km2", sid, g["index"]) for g in src]
    assert [g.get("status") for g in dst] == [0] * n, dst
    assert [g["key_buffer"] for g in dst] == [g["key_buffer"] for g in src]
    return [g["key_buffer"] for g in src]


def test_004_stream_survives_killed_transit(lab):
    """km1 SIGKILLed during a stream: the relays that failed meanwhile are sent again once it
    is back, so the stream continues at the next index (it used to stay at status 2)."""
    cluster = lab["cluster"]
    sid = _open(lab)
    _same_keys_both_ends(lab, sid, 0, 1)
    cluster.kill("km1")
    try:
        # use up what was relayed ahead; the relays for more fail while km1 is down
        statuses = [_get(lab, "sae-a0", "km0", sid)["status"] for _ in range(12)]
        assert 2 in statuses, statuses
        taken = statuses.index(2)
        assert statuses[taken:] == [2] * (12 - taken)
    finally:
        cluster.start_node("km1")
        cluster.wait_healthy("km1", timeout=30)
    _same_keys_both_ends(lab, sid, 1 + taken, 12)
    # and nothing twice
    again = _get(lab, "sae-a2", "km2", sid, 1 + taken)
    assert again["http"] == 409 and again["status"] == 10


def test_lost_session_config_is_resent_on_demand(lab):
    """km1's session_config is lost (as for a KM not yet subscribed after a restart): the
    first relay through it makes km1 ask admission (config_resync), and the stream works."""
    ctl = lab["ctl"]
    ctl.drop_configs["km1"] = True
    try:
        sid = _open(lab)
        _same_keys_both_ends(lab, sid, 0, 3)
    finally:
        ctl.drop_configs.pop("km1", None)
    # km1 asked (km2 may ask too: on a busy machine a relay can beat its own config)
    asks = {p["km"] for p in ctl.of_type("config_resync") if p["session_id"] == sid}
    assert "km1" in asks and asks <= {"km1", "km2"}


def test_lost_relay_ack_resent_after_restart_without_duplicates(lab):
    """The source KM dies after relaying but before the acknowledgement was recorded (made
    exact here by turning its acknowledged keys back into pending ones while it is down):
    once restarted it sends them again from its database with fresh link key; the destination
    recognises the keys it holds or already delivered, acknowledges them again, delivers none
    twice, and the source application gets the same keys."""
    cluster, d = lab["cluster"], lab["dir"]
    sid = _open(lab)
    _same_keys_both_ends(lab, sid, 0, 1)
    early = _get_until(lab, "sae-a2", "km2", sid, 1)  # the destination runs ahead: index 1
    assert early["status"] == 0, early
    time.sleep(0.5)  # let the prefetch settle
    cluster.kill("km0")
    db = sqlite3.connect(d / "km0" / "km.sqlite")
    with db:
        n = db.execute("UPDATE e2e_keys SET side='pend' WHERE session_id=? AND side='src'",
                       (sid,)).rowcount
        used_before = db.execute("SELECT count(*) FROM used_link_keys WHERE link='km0-km1'"
                                 ).fetchone()[0]
    db.close()
    assert n >= 1
    cluster.start_node("km0")
    cluster.wait_healthy("km0", timeout=30)
    keys = _same_keys_both_ends_from(lab, sid, early)
    # the destination saw the retried keys as duplicates
    deadline = time.time() + 5
    while time.time() < deadline:
        dups = [e for e in list(ctl_events(lab)) if e.get("kind") == "relay_receive"
                and e.get("session_id") == sid and e.get("duplicates")]
        if dups:
            break
        time.sleep(0.1)
    assert dups, "km2 never acknowledged a retried relay as duplicates"
    # the retry used fresh link key (never the pad of the first attempt)
    db = sqlite3.connect(d / "km0" / "km.sqlite")
    used_after = db.execute("SELECT count(*) FROM used_link_keys WHERE link='km0-km1'"
                            ).fetchone()[0]
    db.close()
    assert used_after > used_before
    # the transit never held them in clear
    blobs = b"".join(f.read_bytes() for f in (d / "km1").iterdir()) \
        + (d / "km1.log").read_bytes()
    for k in keys:
        raw = base64.b64decode(k)
        assert raw not in blobs and k.encode() not in blobs


def ctl_events(lab) -> list[dict]:
    return lab["ctl"].events


def _same_keys_both_ends_from(lab, sid: str, early: dict) -> list[str]:
    """After the restart: the source continues at index 1 (its key equals what the
    destination took early, which is not delivered there twice), then 2.. at both ends."""
    g1 = _get_until(lab, "sae-a0", "km0", sid)
    assert g1.get("status") == 0 and g1["index"] == 1, g1
    assert g1["key_buffer"] == early["key_buffer"]
    again = _get(lab, "sae-a2", "km2", sid, 1)
    assert again["http"] == 409 and again["status"] == 10
    return [g1["key_buffer"], *_same_keys_both_ends(lab, sid, 2, 4)]
