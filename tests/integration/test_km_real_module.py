"""Two Key Managers on loopback pulling link key from the *real* emulated QKD modules of
``qkdtwin.qkd_module`` (one per link end, quantum channel and post-processing between them
over 127.0.0.2/127.0.0.3), with the stand-in control plane: ETSI 014 keys end to end."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time

import pytest
import requests
import yaml

from qkdtwin.bus import BrokerConfig
from tests.support.broker import TestBroker, free_port
from tests.support.fake_control import FakeControl
from tests.support.km_cluster import ROOT, KmCluster, sae_session

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QKD = {"protocol": "bb84-decoy", "length_km": 5, "source_rate_hz": 1.0e8, "mu": 0.5,
       "nu": 0.1, "block_size": 100000}


def start_module(root, broker, ca, side, peer_port):
    node, peer = ("km0", "km1") if side == "a" else ("km1", "km0")
    me, other = ("127.0.0.2", "127.0.0.3") if side == "a" else ("127.0.0.3", "127.0.0.2")
    ident = ca.issue(node, ou="node")  # the node certificate, as deployed
    port = free_port()
    cfg = root / f"qkd-{node}.yml"
    cfg.write_text(yaml.safe_dump({
        "node": node, "link": "km0-km1", "side": side, "peer": peer, "local_ipv4": me,
        "peer_ipv4": other, "peer_port": peer_port,
        "listen": {"host": "127.0.0.1", "port": port}, "data_dir": str(root / f"qkd-{node}"),
        "qkd": QKD, "telemetry_interval_s": 1.0, "log_level": "warning",
        "tls": {"ca": ca.ca, "cert": ident.cert, "key": ident.key},
        "broker": {"host": "127.0.0.1", "port": broker.port, "ca": ca.ca,
                   "cert": ident.cert, "key": ident.key}}))
    proc = subprocess.Popen([sys.executable, "-m", "qkdtwin.qkd_module", "--config", str(cfg)],
                            stdout=open(root / f"qkd-{node}.log", "ab"),
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            requests.get(url + "/healthz", timeout=1)
            return proc, url
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"module {node} did not start")


def test_km_pair_over_real_qkd_modules(tmp_path, test_ca):
    broker = TestBroker(tmp_path / "broker", test_ca).start()
    peer_port = free_port()
    procs = []
    cluster = ctl = None
    try:
        pb, ub = start_module(tmp_path, broker, test_ca, "b", peer_port)
        procs.append(pb)
        pa, ua = start_module(tmp_path, broker, test_ca, "a", peer_port)
        procs.append(pa)
        ident = test_ca.issue("ctl", ou="node")
        users = {"sae-a0": {"user": "alice", "km": "km0"},
                 "sae-a1": {"user": "alice", "km": "km1"}}
        ctl = FakeControl(BrokerConfig("127.0.0.1", broker.port, test_ca.ca, ident.cert,
                                       ident.key), users, [("km0", "km1")]).start()
        cluster = KmCluster(tmp_path, test_ca, broker.port, [("km0", "km1")],
                            module_urls={"km0-km1": (ua, ub)},
                            module_tokens={"km0-km1": tuple(  # type: ignore[dict-item]
                                str(tmp_path / f"qkd-{n}" / "qkd-km0-km1.api-token")
                                for n in ("km0", "km1"))},
                            extra={"prefetch_keys": 4, "pool": {"batch": 64, "low_keys": 64}})
        for n in cluster.nodes:
            cluster.start_node(n)
        for n in cluster.nodes:
            cluster.wait_healthy(n, pools=True, timeout=150)  # first QKD blocks take a while
        a0, a1 = sae_session(test_ca, "sae-a0", "alice"), sae_session(test_ca, "sae-a1", "alice")
        r = a0.post(f"{cluster.url('km0')}/api/v1/keys/sae-a1/enc_keys", json={"number": 2},
                    timeout=30)
        assert r.status_code == 200, r.text
        keys = r.json()["keys"]
        r = a1.post(f"{cluster.url('km1')}/api/v1/keys/sae-a0/dec_keys",
                    json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["keys"] == keys
        assert all(len(base64.b64decode(k["key"])) == 32 for k in keys)
    finally:
        if cluster:
            cluster.stop()
        if ctl:
            ctl.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
