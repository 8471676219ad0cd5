"""ETSI 004 key streams against misbehaving applications and crashes (issue 13, L1 and
M5): two Key Manager processes km0 – km1 on loopback with fake QKD modules, a real Mosquitto and
the stand-in control plane."""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from qkdtwin.key_manager.service004 import FAULT_ENV
from tests.support.km_cluster import get_key_until, km_lab, open_004_pair

pytestmark = pytest.mark.integration

USERS = {
    "sae-a0": {"user": "alice", "km": "km0"},
    "sae-a1": {"user": "alice", "km": "km1"},
}
LINKS = [("km0", "km1")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    d = tmp_path_factory.mktemp("kmsessions")
    with km_lab(d, test_ca, USERS, LINKS) as lab:
        yield lab


def url(lab, n):
    return lab["cluster"].url(n)


def open_stream(lab, src="sae-a0", src_km="km0", dst="sae-a1", dst_km="km1", chunk=32):
    return open_004_pair(lab["saes"][src], url(lab, src_km), src, lab["saes"][dst],
                         url(lab, dst_km), dst, chunk=chunk, timeout_ms=200,
                         peer_timeout_ms=10000)


def test_crash_between_taking_a_chunk_and_answering_does_not_wedge_the_stream(lab):
    """Finding L1: GET_KEY took the chunk in one transaction and advanced the stream's
    position in a second one; a KM killed between the two left every GET_KEY without an
    index answering 409 ("already delivered") for good. The KM is made to SIGKILL itself at
    that point (test-only fault hook), restarted, and the stream goes on."""
    cluster, a0 = lab["cluster"], lab["saes"]["sae-a0"]
    sid = open_stream(lab)
    first = [get_key_until(a0, url(lab, "km0"), sid, patience_s=20).json() for _ in range(2)]
    assert [g["status"] for g in first] == [0, 0], first
    assert [g["index"] for g in first] == [0, 1]
    cluster.kill("km0")
    cluster.start_node("km0", env={FAULT_ENV: "get_key_taken"})
    cluster.wait_healthy("km0", timeout=60)
    with pytest.raises(requests.ConnectionError):  # the KM dies with index 2 taken
        a0.post(f"{url(lab, 'km0')}/api/v1/qkd004/get_key", json={"key_stream_id": sid},
                timeout=30)
    cluster.procs["km0"].wait(10)
    cluster.start_node("km0")
    cluster.wait_healthy("km0", timeout=60)
    after = [get_key_until(a0, url(lab, "km0"), sid, patience_s=20) for _ in range(2)]
    assert [r.status_code for r in after] == [200, 200], [r.text for r in after]
    bodies = [r.json() for r in after]
    assert [b["status"] for b in bodies] == [0, 0], bodies
    # index 2 went with the crash (taken, never answered): never handed out again
    assert [b["index"] for b in bodies] == [3, 4], bodies


# -- M5: an ETSI 004 run-ahead cannot drain a shared link --------------------------------------

SCARCE_USERS = {
    "sae-a0": {"user": "alice", "km": "km0"}, "sae-a1": {"user": "alice", "km": "km1"},
    "sae-b0": {"user": "bob", "km": "km0"}, "sae-b1": {"user": "bob", "km": "km1"},
}
# every session's token bucket, as admission derives it from an SLA: 20 kbit/s, 200 kbit
BUCKET = {"size_bits": 200_000, "rate_bps": 20_000}


@pytest.fixture(scope="module")
def scarce(tmp_path_factory, test_ca):
    """km0 – km1 whose module makes 400 link keys (of 256 bits) per second."""
    d = tmp_path_factory.mktemp("kmscarce")
    with km_lab(d, test_ca, SCARCE_USERS, LINKS, ctl_kwargs={"bucket": BUCKET},
                rate_keys_per_s=400,
                extra={"pool": {"low_keys": 1024, "batch": 256, "max_keys": 4000}}) as lab:
        yield lab


def test_run_ahead_does_not_starve_other_sessions_on_the_link(scarce):
    """Finding M5: the ETSI 004 run-ahead moved with the stream's front and the source's
    production on demand charged no token bucket: a destination that asked for index
    front + 1024 again and again paid one chunk per request and made the source produce
    about 1024 chunks each time, draining the link's pool under everyone else's sessions.
    Now the run-ahead is charged to the stream's bucket and capped per stream: the other
    session on the link keeps getting its keys."""
    lab = scarce
    sid = open_stream(lab, "sae-b0", "km0", "sae-b1", "km1", chunk=256)
    b1, a0 = lab["saes"]["sae-b1"], lab["saes"]["sae-a0"]
    u0, u1 = url(lab, "km0"), url(lab, "km1")
    # the victim, an ETSI 014 pair on the same link, works before the attack
    assert a0.post(f"{u0}/api/v1/keys/sae-a1/enc_keys", json={}, timeout=30).status_code == 200
    stop = threading.Event()
    attack: list[requests.Response] = []

    def run_ahead():
        while not stop.is_set():
            probe = b1.post(f"{u1}/api/v1/qkd004/get_key", timeout=30,
                            json={"key_stream_id": sid, "index": 2**30}).json()
            at = re.search(r"\(at (\d+)\)", probe.get("message", ""))
            if at is None:  # e.g. the run-ahead is paid for and the bucket is empty now
                time.sleep(0.05)
                continue
            front = int(at.group(1))
            attack.append(b1.post(f"{u1}/api/v1/qkd004/get_key", timeout=30,
                                  json={"key_stream_id": sid, "index": front + 1024}))

    t = threading.Thread(target=run_ahead, daemon=True)
    t.start()
    try:
        # more than the session's prefetched keys: new ones are made during the attack
        victim = [a0.post(f"{u0}/api/v1/keys/sae-a1/enc_keys", json={"number": 16},
                          timeout=30) for _ in range(40)]
    finally:
        stop.set()
        t.join(60)
    assert attack, "the attacker never got an answer"
    codes = [r.status_code for r in victim]
    assert codes == [200] * len(victim), [r.text for r in victim if r.status_code != 200][:3]
    # the attacker's run-ahead is refused: the bucket cannot pay 1024 chunks of 2048 bits
    assert all(r.status_code == 400 and r.json()["status"] == 10
               and "token bucket" in r.json()["message"] for r in attack), attack[0].text
