"""ETSI 014 on a link that makes key slowly: a request is served from the few link keys
there are, not held back for the session's prefetch.

Two Key Manager processes km0 – km1 on loopback, a real Mosquitto and the stand-in control
plane; the link's fake module makes 3 link keys of 256 bits per second, shared by both
directions. Found on an LDPC lab (a few hundred bit/s of secret key): a request for one key
asked the link for 65 (the key plus the 64 kept ready), 66 link keys that never came within
the request's wait, so the pair got "not enough key" for minutes while 17 link keys sat in
its pool.
"""

from __future__ import annotations

import base64
import time

import pytest

from tests.support.km_cluster import km_lab

pytestmark = pytest.mark.integration

USERS = {
    "sae-a0": {"user": "alice", "km": "km0"},
    "sae-a1": {"user": "alice", "km": "km1"},
}
LINKS = [("km0", "km1")]
LINK_KEYS_PER_S = 3.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    d = tmp_path_factory.mktemp("kmslow")
    # default prefetch (64 keys) and request wait (5 s): what a lab runs with
    with km_lab(d, test_ca, USERS, LINKS, rates={"km0-km1": LINK_KEYS_PER_S}) as lab:
        yield lab


def test_requests_are_served_from_a_slow_link_before_the_prefetch(lab):
    cluster, a0, a1 = lab["cluster"], lab["saes"]["sae-a0"], lab["saes"]["sae-a1"]
    enc = cluster.url("km0") + "/api/v1/keys/sae-a1/enc_keys"
    dec = cluster.url("km1") + "/api/v1/keys/sae-a0/dec_keys"
    delivered: dict[str, str] = {}
    started = time.monotonic()
    for _ in range(3):
        answers = []
        for _attempt in range(4):  # each waits up to request_wait_s (5 s) for key
            r = a0.post(enc, json={"number": 1, "size": 256}, timeout=30)
            answers.append((r.status_code, r.text[:120]))
            if r.status_code == 200:
                break
        assert r.status_code == 200, answers
        (key,) = r.json()["keys"]
        assert key["key_ID"] not in delivered
        delivered[key["key_ID"]] = key["key"]
    elapsed = time.monotonic() - started
    # three keys need 6 link keys; the 198 of three prefetches would take over a minute
    assert elapsed < 60, elapsed
    r = a1.post(dec, json={"key_IDs": [{"key_ID": k} for k in delivered]}, timeout=30)
    assert r.status_code == 200, r.text
    got = {k["key_ID"]: k["key"] for k in r.json()["keys"]}
    assert got == delivered
    assert all(len(base64.b64decode(v)) == 32 for v in got.values())
