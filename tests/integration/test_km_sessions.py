"""ETSI 004 key streams against misbehaving applications and crashes (issue 13, L1 and M5):
two Key Manager processes km0 – km1 on loopback with fake QKD modules, a real Mosquitto and
the stand-in control plane."""

from __future__ import annotations

import uuid

import pytest
import requests

from qkdtwin.key_manager.service004 import FAULT_ENV
from tests.support.km_cluster import get_key_until, km_lab

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
    sid = str(uuid.uuid4())
    body = {"source": src, "destination": dst, "key_stream_id": sid,
            "qos": {"key_chunk_size": chunk, "timeout": 200}}
    r = lab["saes"][src].post(f"{url(lab, src_km)}/api/v1/qkd004/open_connect", json=body)
    assert r.status_code == 200 and r.json()["status"] in (0, 1), r.text
    r = lab["saes"][dst].post(f"{url(lab, dst_km)}/api/v1/qkd004/open_connect",
                              json={**body, "source": dst, "destination": src,
                                    "qos": {**body["qos"], "timeout": 10000}})
    assert r.status_code == 200 and r.json()["status"] == 0, r.text
    return sid


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
