"""Finding L4: inputs that made the Key Manager answer 500 (or killed admission's handler
without an answer) get a clear refusal.

Real processes: two KM processes (qkdtwin.testbed.km_cluster) with a Mosquitto and the
stand-in control plane for the ETSI APIs; for admission the real control elements
(`python -m qkdtwin.control.<element>`) with a KM speaking the MQTT contract.
"""

from __future__ import annotations

import uuid

import pytest
import yaml

from tests.integration.test_control_processes import ROOT
from tests.support.control import ControlPlane, FakeKM, register_star6, wait_for
from tests.support.km_cluster import km_lab

pytestmark = pytest.mark.integration

USERS = {"sae-a0": {"user": "alice", "km": "km0"}, "sae-a1": {"user": "alice", "km": "km1"}}
LINKS = [("km0", "km1")]
NESTED = "[" * 30000 + "]" * 30000  # 60 000 bytes: under the 64 KiB body limit


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    with km_lab(tmp_path_factory.mktemp("badinput"), test_ca, USERS, LINKS) as lab:
        yield lab


def refused(r, status004: bool = False) -> str:
    """The answer is a 400 with a JSON message (and ETSI 004 status 10): its message."""
    assert r.status_code == 400, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body.get("message"), str) and body["message"], body
    if status004:
        assert body.get("status") == 10, body
    return body["message"]


def test_014_bodies_and_numbers_get_400(lab):
    a0 = lab["saes"]["sae-a0"]
    url = f"{lab['cluster'].url('km0')}/api/v1/keys/sae-a1"
    hdr = {"Content-Type": "application/json"}
    # nested arrays: RecursionError in the JSON parser
    assert "nested deeper" in refused(a0.post(f"{url}/enc_keys", data=NESTED, headers=hdr))
    assert "nested deeper" in refused(a0.post(f"{url}/dec_keys", headers=hdr,
                                              data='{"key_IDs": ' + NESTED + "}"))
    # "²".isdigit() is true but int("²") fails; Arabic-Indic and full-width digits, signs,
    # spaces and 5000 digits (over Python's int() digit limit) are no numbers either
    for v in ("²", "٣", "３", "+3", " 3", "1" * 5000, "0x10"):
        assert "must be an integer" in refused(a0.get(f"{url}/enc_keys",
                                                      params={"number": v})), v
        assert "must be an integer" in refused(a0.get(f"{url}/enc_keys",
                                                      params={"size": v})), v
    # JSON numbers: too many digits, NaN, Infinity, out of range
    for raw in ('{"number": 1' + "0" * 5000 + "}", '{"number": NaN}', '{"size": Infinity}',
                '{"number": 1e999}', '{"number": 99999999999999999999}'):
        refused(a0.post(f"{url}/enc_keys", data=raw, headers=hdr))
    # the ordinary request still works
    r = a0.get(f"{url}/enc_keys", params={"number": "2", "size": "256"})
    assert r.status_code == 200 and len(r.json()["keys"]) == 2, r.text


def test_004_bodies_and_qos_get_400(lab):
    a0 = lab["saes"]["sae-a0"]
    url = f"{lab['cluster'].url('km0')}/api/v1/qkd004"
    hdr = {"Content-Type": "application/json"}
    base = {"source": "sae-a0", "destination": "sae-a1"}
    assert "nested deeper" in refused(a0.post(f"{url}/open_connect", headers=hdr,
                                              data=NESTED), status004=True)
    # a huge qos.timeout raised OverflowError (timeout / 1000.0) inside OPEN_CONNECT
    for field in ("timeout", "ttl", "jitter", "max_bps", "min_bps"):
        for v in (10**400, 2**64, 10**15):  # the parser refuses > 16 digits, the field more
            body = {**base, "key_stream_id": str(uuid.uuid4()), "qos": {field: v}}
            msg = refused(a0.post(f"{url}/open_connect", json=body), status004=True)
            assert f"qos.{field}" in msg or "more than 16 digits" in msg, (field, v, msg)
    for raw in ('{"source": "sae-a0", "destination": "sae-a1", "qos": {"timeout": NaN}}',
                '{"source": "sae-a0", "destination": "sae-a1", "qos": {"timeout": 1e999}}'):
        refused(a0.post(f"{url}/open_connect", data=raw, headers=hdr), status004=True)
    sid = str(uuid.uuid4())
    for body in ({"key_stream_id": sid, "index": 10**400},
                 {"key_stream_id": sid, "index": 2**41},
                 {"key_stream_id": sid, "metadata": {"size": 10**400}}):
        refused(a0.post(f"{url}/get_key", json=body), status004=True)
    # within the bounds OPEN_CONNECT still answers as ETSI 004 says
    body = {**base, "key_stream_id": str(uuid.uuid4()),
            "qos": {"timeout": 500, "ttl": 3600, "key_chunk_size": 32}}
    r = a0.post(f"{url}/open_connect", json=body)
    assert r.status_code == 200 and r.json()["status"] in (0, 1), r.text
    a0.post(f"{url}/close", json={"key_stream_id": body["key_stream_id"]})
    assert lab["cluster"].health("km0")["ok"]


CP_USERS = yaml.safe_load((ROOT / "labs" / "star6.users.yml").read_text())["users"]


def test_admission_answers_a_qos_it_cannot_format(broker, test_ca, tmp_path):
    plane = ControlPlane(broker, test_ca, tmp_path, CP_USERS)
    km = FakeKM(broker, test_ca, "km0")
    try:
        register_star6(plane.sdn_url, test_ca)
        wait_for(lambda: plane.health("routing")["links"] == 6, timeout=10)
        # f"{max_bps:g}" of a 400-digit integer raised OverflowError; int(inf) too: the
        # handler died and the KM never heard back (its OPEN_CONNECT waited for nothing)
        sids = [km.open("sae-0", "sae-1", "ops", max_bps=10**400),
                km.open("sae-0", "sae-1", "ops", priority=float("inf")),
                km.open("sae-0", "sae-1", "ops", min_bps=float("nan"))]
        for sid in sids:
            d = wait_for(lambda sid=sid: km.deleted(sid), timeout=10)
            assert d["reason"].startswith("rejected: "), d
        # an ordinary request is still admitted
        ok = km.open("sae-0", "sae-1", "ops", max_bps=2048)
        km1 = FakeKM(broker, test_ca, "km1")
        km1.open("sae-1", "sae-0", "ops", session_id=ok, max_bps=2048)
        wait_for(lambda: km.config_for(ok), timeout=15)
        km1.stop()
    finally:
        km.stop()
        plane.stop()
