"""Unit tests of the rollout helpers: deploy output parsing, the pki and common role
filters, and the qkdtwin_files module."""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qkdtwin.deploy import _Condenser, parse_recap

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pki = _load(ROOT / "roles/pki/filter_plugins/qkdtwin_pki.py", "qkdtwin_pki_filters")
net = _load(ROOT / "roles/common/filter_plugins/qkdtwin_net.py", "qkdtwin_net_filters")

# --------------------------------------------------------------------------- deploy output

OUTPUT = """\
PLAY [PKI and base of every node] **********************************************

TASK [pki : Generate private keys] *********************************************
changed: [km0 -> localhost] => (item=nodes/km0)
ok: [km1 -> localhost] => (item=nodes/km1)
skipping: [km2]

TASK [pki : Issue the missing certificates] ************************************
included: /work/main/roles/pki/tasks/issue.yml for km0, km1

TASK [common : Start supervisord] **********************************************
fatal: [km2]: FAILED! =>
    msg: non-zero return code
    stderr: boom
ok: [km0]

PLAY RECAP *********************************************************************
km0                        : ok=11   changed=1    unreachable=0    failed=0    skipped=4    rescued=0    ignored=0
km1                        : ok=11   changed=0    unreachable=0    failed=0    skipped=4    rescued=0    ignored=0
km2                        : ok=3    changed=0    unreachable=0    failed=1    skipped=1    rescued=0    ignored=0
"""  # noqa: E501


def test_parse_recap():
    recap = parse_recap(OUTPUT.splitlines())
    assert set(recap) == {"km0", "km1", "km2"}
    assert recap["km0"]["changed"] == 1 and recap["km2"]["failed"] == 1
    assert recap["km1"] == {"ok": 11, "changed": 0, "unreachable": 0, "failed": 0,
                            "skipped": 4, "rescued": 0, "ignored": 0}


def test_condenser_one_line_per_task_errors_and_recap():
    out: list[str] = []
    c = _Condenser(out.append, start=0.0)
    for line in OUTPUT.splitlines():
        c.feed(line)
    c.close()
    text = "\n".join(out)
    assert "== PKI and base of every node" in text
    task_line = next(ln for ln in out if "pki : Generate private keys" in ln)
    assert "ok=1 changed=1 skipped=1" in task_line
    assert "ok=2" in next(ln for ln in out if "Issue the missing certificates" in ln)
    assert "fatal: [km2]: FAILED!" in text and "stderr: boom" in text
    assert "common : Start supervisord" in text and "failed=1" in text
    assert sum(1 for ln in out if " : ok=" in ln) == 3  # the recap, in full


# --------------------------------------------------------------------------- pki filters


def _issue(directory: Path, ident: dict, ca_key, ca_cert, *, days: int = 100,
           curve: ec.EllipticCurve | None = None) -> None:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, ident["cn"]),
             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ident["ou"])]
    if ident.get("o"):
        names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, ident["o"]))
    sans = []
    for s in ident["sans"]:
        kind, value = s.split(":", 1)
        sans.append(x509.DNSName(value) if kind == "DNS"
                    else x509.IPAddress(ipaddress.ip_address(value)))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name(names))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    base = directory / ident["path"]
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    base.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def _make_ca(directory: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return key, cert


def test_identities():
    node = pki.node_identity("km1", "172.31.3.21", [{"name": "eth1", "ipv4": "10.10.1.2/30"}])
    assert node["cn"] == "km1" and node["ou"] == "node" and node["path"] == "nodes/km1"
    assert set(node["sans"]) == {"DNS:km1", "DNS:localhost", "IP:172.31.3.21", "IP:127.0.0.1",
                                 "IP:10.10.1.2"}
    users = [{"name": "alice", "applications": [{"sae_id": "sae-a0", "km": "km0"}]}]
    clients = pki.client_identities(users)
    assert [c["path"] for c in clients] == ["sae/sae-a0", "host"]
    assert clients[0]["o"] == "alice" and clients[0]["ou"] == "sae"
    assert clients[1]["cn"] == "host" and clients[1]["ou"] == "operator"


def test_share_spreads_work_over_hosts():
    items = list(range(7))
    hosts = ["a", "b", "c"]
    shares = [pki.share(items, hosts, h) for h in hosts]
    assert sorted(sum(shares, [])) == items
    assert pki.share(items, hosts, "zzz") == []


def test_stale_detects_missing_changed_and_foreign_certificates(tmp_path):
    assert not pki.ca_valid(str(tmp_path))
    ca_key, ca_cert = _make_ca(tmp_path)
    assert pki.ca_valid(str(tmp_path))
    good = pki.node_identity("km0", "172.31.3.20", [{"name": "eth1", "ipv4": "10.10.1.1/30"}])
    moved = pki.node_identity("km1", "172.31.3.21")
    expiring = pki.node_identity("km2", "172.31.3.22")
    rsa_like = pki.node_identity("ctl", "172.31.3.11")
    foreign = pki.node_identity("broker", "172.31.3.10")
    missing = pki.node_identity("km9", "172.31.3.29")
    _issue(tmp_path, good, ca_key, ca_cert)
    _issue(tmp_path, {**moved, "sans": ["DNS:km1"]}, ca_key, ca_cert)  # SANs out of date
    _issue(tmp_path, expiring, ca_key, ca_cert, days=3)
    _issue(tmp_path, rsa_like, ca_key, ca_cert, curve=ec.SECP384R1())  # not P-256
    other_key, other_cert = _make_ca(tmp_path / "other")
    _issue(tmp_path, foreign, other_key, other_cert)  # signed by another CA
    idents = [good, moved, expiring, rsa_like, foreign, missing]
    stale = pki.stale(idents, str(tmp_path))
    assert [i["cn"] for i in stale] == ["km1", "km2", "ctl", "broker", "km9"]
    (tmp_path / "ca.crt").unlink()
    assert pki.stale([good], str(tmp_path)) == [good]


# --------------------------------------------------------------------------- common filter


IP_JSON = [
    {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "addr_info": []},
    {"ifname": "eth1", "flags": ["BROADCAST", "UP"],
     "addr_info": [{"family": "inet", "local": "10.10.1.1", "prefixlen": 30},
                   {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
    {"ifname": "eth2", "flags": ["BROADCAST"],
     "addr_info": [{"family": "inet", "local": "10.9.9.9", "prefixlen": 24}]},
]


def test_address_plan_adds_removes_and_brings_up():
    want = [{"name": "eth1", "ipv4": "10.10.1.1/30"}, {"name": "eth2", "ipv4": "10.10.2.1/30"}]
    plan = net.address_plan(want, IP_JSON)
    assert plan["missing_interfaces"] == []
    assert plan["changes"] == ["addr del 10.9.9.9/24 dev eth2", "addr add 10.10.2.1/30 dev eth2",
                               "link set dev eth2 up"]
    assert plan["batch"].endswith("link set dev eth2 up\n")


def test_address_plan_nothing_to_do_and_missing_interface():
    assert net.address_plan([{"name": "eth1", "ipv4": "10.10.1.1/30"}], IP_JSON)["changes"] == []
    plan = net.address_plan([{"name": "eth7", "ipv4": "10.10.7.1/30"}], IP_JSON)
    assert plan["missing_interfaces"] == ["eth7"] and plan["batch"] == ""
    with pytest.raises(Exception, match="node km0 has no interface eth7"):
        net.address_plan([{"name": "eth7", "ipv4": "10.10.7.1/30"}], IP_JSON, "km0")


# --------------------------------------------------------------------------- qkdtwin_files


def _run_module(tmp_path: Path, args: dict) -> dict:
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.run([sys.executable, str(ROOT / "plugins/modules/qkdtwin_files.py"),
                           str(argfile)], capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout)


def test_qkdtwin_files_is_idempotent_and_fixes_drift(tmp_path):
    root = tmp_path / "node"
    args = {
        "directories": [{"path": str(root / "etc/supervisord.d"), "mode": "0755"}],
        "files": [{"path": str(root / "etc/a.conf"), "content": "a=1\n", "mode": "0644"},
                  {"path": str(root / "tls/node.key"), "content": "KEY\n", "mode": "0600"}],
    }
    first = _run_module(tmp_path, args)
    assert first["changed"] is True and len(first["changed_paths"]) == 3
    assert (root / "etc/a.conf").read_text() == "a=1\n"
    assert oct(os.stat(root / "tls/node.key").st_mode & 0o777) == "0o600"
    second = _run_module(tmp_path, args)
    assert second["changed"] is False and second["changed_paths"] == []
    os.chmod(root / "tls/node.key", 0o644)
    (root / "etc/a.conf").write_text("edited\n")
    third = _run_module(tmp_path, args)
    assert sorted(third["changed_paths"]) == [str(root / "etc/a.conf"), str(root / "tls/node.key")]
    assert (root / "etc/a.conf").read_text() == "a=1\n"
    assert oct(os.stat(root / "tls/node.key").st_mode & 0o777) == "0o600"


def test_qkdtwin_files_reports_a_clear_error(tmp_path):
    (tmp_path / "plain").write_text("x")
    result = _run_module(tmp_path, {"directories": [{"path": str(tmp_path / "plain")}]})
    assert result.get("failed") and "exists and is not a directory" in result["msg"]
