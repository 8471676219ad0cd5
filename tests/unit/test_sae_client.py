"""The application client (`qkdtwin.sae` and `qkdtwin sae`) against real Key Manager
processes on loopback: km0 - km1 - km2 in a line (fake QKD modules, a real Mosquitto, the
stand-in control plane of tests/support/fake_control.py playing access and admission)."""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from qkdtwin.bus import BrokerConfig
from qkdtwin.cli import main
from qkdtwin.labops.lab import DeployedLab
from qkdtwin.sae import SaeClient, SaeError
from tests.support.broker import TestBroker
from tests.support.fake_control import FakeControl
from tests.support.km_cluster import KmCluster

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto")]

USERS = {
    "sae-a0": {"user": "alice", "km": "km0"},
    "sae-a1": {"user": "alice", "km": "km1"},
    "sae-a2": {"user": "alice", "km": "km2"},
    "sae-m2": {"user": "mallory", "km": "km2", "active": False},
}
LINKS = [("km0", "km1"), ("km1", "km2")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def line(tmp_path_factory, test_ca):
    d = tmp_path_factory.mktemp("sae")
    broker = TestBroker(d / "broker", test_ca).start()
    ident = test_ca.issue("ctl", ou="node")
    ctl = FakeControl(BrokerConfig("127.0.0.1", broker.port, test_ca.ca, ident.cert, ident.key),
                      USERS, LINKS).start()
    cluster = KmCluster(d, test_ca, broker.port, LINKS)
    try:
        cluster.start()
        ids = {s: test_ca.issue(s, ou="sae", o=u["user"]) for s, u in USERS.items()}
        yield {"cluster": cluster, "ca": test_ca, "ids": ids, "dir": d}
    finally:
        cluster.stop()
        ctl.stop()
        broker.stop()


def client(line, sae: str) -> SaeClient:
    km = USERS[sae]["km"]
    i = line["ids"][sae]
    return SaeClient(line["cluster"].url(km), i.cert, i.key, line["ca"].ca, timeout=10,
                     sae_id=sae)


def cli(line, sae: str, *argv: str, capsys) -> tuple[int, dict, str]:
    i = line["ids"][sae]
    code = main(["sae", "-", "--sae", sae, "--km-url", line["cluster"].url(USERS[sae]["km"]),
                 "--cert", i.cert, "--key", i.key, "--ca", line["ca"].ca, "--compact", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


def test_014_status_get_key_and_by_id_relayed(line):
    with client(line, "sae-a0") as a0, client(line, "sae-a2") as a2:
        st = a0.status("sae-a2")
        assert st.ok and st.body["source_KME_ID"] == "km0" and st.body["target_KME_ID"] == "km2"
        r = a0.enc_keys("sae-a2", number=3, size=256)
        assert r.ok, r.body
        keys = r.keys()
        assert len(keys) == 3 and all(len(base64.b64decode(k["key"])) == 32 for k in keys)
        got = a2.dec_keys("sae-a0", [k["key_ID"] for k in keys])
        assert got.ok and got.keys() == keys
        # delivered once: the KM refuses a second time, with its ETSI 014 message
        again = a2.dec_keys("sae-a0", [keys[0]["key_ID"]])
        assert not again.ok and again.http == 400 and "not found" in again.message


def test_004_open_get_close_pair(line):
    sid = str(uuid.uuid4())
    with client(line, "sae-a0") as a0, client(line, "sae-a1") as a1:
        r = a0.open_connect("sae-a0", "sae-a1", {"key_chunk_size": 32, "timeout": 200}, sid)
        assert r.http == 200 and r.status == 1 and r.ok  # peer not connected yet
        r = a1.open_connect("sae-a0", "sae-a1", {"key_chunk_size": 32, "timeout": 3000}, sid)
        assert r.status == 0 and r.body["key_stream_id"] == sid
        k0 = [a0.wait_key(sid, timeout=10) for _ in range(2)]
        k1 = [a1.wait_key(sid, index=i, timeout=10) for i in range(2)]
        assert [k.status for k in k0 + k1] == [0, 0, 0, 0], [k.body for k in k0 + k1]
        assert [k.body["key_buffer"] for k in k0] == [k.body["key_buffer"] for k in k1]
        assert a0.close(sid).status == 0


def test_cli_014_and_004_round_trip(line, capsys):
    code, out, _ = cli(line, "sae-a1", "status", "--slave", "sae-a2", capsys=capsys)
    assert code == 0 and out["http"] == 200 and out["target_KME_ID"] == "km2"
    code, out, _ = cli(line, "sae-a1", "get-key", "--slave", "sae-a2", "--number", "2",
                       capsys=capsys)
    assert code == 0 and len(out["keys"]) == 2
    ids = [k["key_ID"] for k in out["keys"]]
    code, got, _ = cli(line, "sae-a2", "get-key-by-id", "--master", "sae-a1",
                       *[a for i in ids for a in ("--key-id", i)], capsys=capsys)
    assert code == 0 and got["keys"] == out["keys"]

    sid = str(uuid.uuid4())
    code, out, _ = cli(line, "sae-a1", "open", "--destination", "sae-a2", "--stream", sid,
                       "--chunk", "16", capsys=capsys)
    assert code == 0 and out["status"] == 1
    code, out, _ = cli(line, "sae-a2", "open", "--source", "sae-a1", "--stream", sid,
                       "--chunk", "16", "--qos-timeout", "3000", capsys=capsys)
    assert code == 0 and out["status"] == 0
    code, k1, _ = cli(line, "sae-a1", "get-key", "--stream", sid, "--wait", "10", capsys=capsys)
    code2, k2, _ = cli(line, "sae-a2", "get-key", "--stream", sid, "--index",
                       str(k1.get("index", 0)), "--wait", "10", capsys=capsys)
    assert code == code2 == 0, (k1, k2)
    assert k1["key_buffer"] == k2["key_buffer"] and len(base64.b64decode(k1["key_buffer"])) == 16
    code, out, _ = cli(line, "sae-a1", "close", "--stream", sid, capsys=capsys)
    assert code == 0 and out["status"] == 0


def test_cli_refusals_exit_1_with_the_kms_reason(line, capsys):
    code, out, err = cli(line, "sae-m2", "get-key", "--slave", "sae-a0", capsys=capsys)
    assert code == 1 and out["http"] == 401 and "disabled" in out["message"]
    assert "refused (401)" in err and "disabled" in err
    code, out, err = cli(line, "sae-a0", "get-key", "--slave", "sae-a1", "--size", "12",
                         capsys=capsys)
    assert code == 1 and out["http"] == 400 and "multiple of 8" in out["message"]
    code, out, err = cli(line, "sae-a0", "get-key", "--stream", str(uuid.uuid4()),
                         capsys=capsys)
    assert code == 1 and out["status"] == 10


def test_bad_input_and_unreachable_km_are_one_line_errors(line, capsys, tmp_path):
    i = line["ids"]["sae-a0"]
    base = ["sae", "-", "--cert", i.cert, "--key", i.key, "--ca", line["ca"].ca]
    assert main([*base, "--km-url", "https://127.0.0.1:1", "status", "--slave", "x"]) == 2
    assert "cannot reach the KM at https://127.0.0.1:1" in capsys.readouterr().err
    assert main([*base, "--km-url", line["cluster"].url("km0"), "get-key", "--stream",
                 "not-a-uuid"]) == 2
    assert "not a key stream id" in capsys.readouterr().err
    assert main(["sae", "-", "--km-url", "https://x", "status", "--slave", "y"]) == 2
    assert "without a LAB, give --cert, --ca" in capsys.readouterr().err
    # a certificate from another CA fails the TLS handshake: said so, no traceback
    from tests.support.pki import TestCA
    rogue = TestCA(tmp_path / "rogue").issue("sae-a0", ou="sae", o="alice")
    c = SaeClient(line["cluster"].url("km0"), rogue.cert, rogue.key, line["ca"].ca)
    with pytest.raises(SaeError, match="TLS with the KM"):
        c.status("sae-a1")
    with pytest.raises(SaeError, match="not found"):
        SaeClient("https://127.0.0.1:1", tmp_path / "nope.crt", i.key, line["ca"].ca)


def test_lab_mode_picks_the_sae_km_and_certificate(line, tmp_path, capsys, monkeypatch):
    """With a LAB: the SAE's KM comes from the inventory, the certificate from pki/sae/."""
    from qkdtwin.runtime.inventory import write_inventory
    from qkdtwin.runtime.registry import get_runtime
    from qkdtwin.topology import load_lab

    src = ROOT / "labs" / "line3.clab.yml"
    (tmp_path / "labs").mkdir()
    shutil.copy(src, tmp_path / "labs" / "line3.clab.yml")
    users = yaml.safe_load((ROOT / "labs" / "line3.users.yml").read_text())
    shutil.copy(ROOT / "labs" / "line3.users.yml", tmp_path / "labs" / "line3.users.yml")
    lab = load_lab(tmp_path / "labs" / "line3.clab.yml")
    write_inventory(lab, get_runtime("netns"))
    app = users["users"][0]["applications"][0]
    sae, km = app["sae_id"], app["km"]
    pki = lab.lab_dir / "pki"
    (pki / "sae").mkdir(parents=True)
    ident = line["ca"].issue(sae, ou="sae", o="alice")
    shutil.copy(line["ca"].ca, pki / "ca.crt")
    shutil.copy(ident.cert, pki / "sae" / f"{sae}.crt")
    shutil.copy(ident.key, pki / "sae" / f"{sae}.key")

    dl = DeployedLab.load(lab.path)
    assert dl.sae_km(sae) == km
    assert dl.km_url(km) == f"https://{lab.nodes[km].mgmt_ipv4}:8443"
    monkeypatch.chdir(tmp_path)
    # the lab's own KM address is not reachable from this test: point at the loopback KM;
    # the certificate and CA still come from the lab's pki/
    assert (sae, km) == ("sae-a0", "km0")
    code = main(["sae", "line3", "--sae", sae, "--km-url", line["cluster"].url(km),
                 "--compact", "status", "--slave", "sae-a1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["target_KME_ID"] == "km1"
    assert main(["sae", "line3", "--sae", "sae-nope", "status", "--slave", "x"]) == 2
    assert "has no application sae-nope" in capsys.readouterr().err
    assert main(["sae", "nolab", "--sae", sae, "status", "--slave", "x"]) == 2
    assert "no such lab" in capsys.readouterr().err
