"""Regenerate line3-paper.jsonl: a real recording (qkdtwin.recorder) of three Key Manager
processes km0 - km1 - km2 on loopback (fake QKD modules, a real Mosquitto, the stand-in
control plane of tests/support/fake_control.py) while two application pairs ask for keys in
parallel: sae-a0/sae-a1 adjacent (ETSI 014) and sae-a0/sae-a2 relayed through km1 (ETSI 014),
then an ETSI 004 stream sae-a1/sae-a2.

    .venv/bin/python -m tests.data.events.record_line3
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from qkdtwin.bus import BrokerConfig
from qkdtwin.recorder import Recorder
from qkdtwin.sae import SaeClient
from tests.support.broker import TestBroker
from tests.support.fake_control import FakeControl
from tests.support.km_cluster import KmCluster
from tests.support.pki import TestCA

USERS = {"sae-a0": {"user": "alice", "km": "km0"}, "sae-a1": {"user": "alice", "km": "km1"},
         "sae-a2": {"user": "alice", "km": "km2"}}
LINKS = [("km0", "km1"), ("km1", "km2")]
OUT = Path(__file__).with_name("line3-paper.jsonl")


def main() -> None:
    d = Path(tempfile.mkdtemp(prefix="rec-line3-"))
    ca = TestCA(d / "pki")
    broker = TestBroker(d / "broker", ca).start()
    host = ca.issue("host", ou="operator")
    rec = Recorder(BrokerConfig("127.0.0.1", broker.port, ca.ca, host.cert, host.key),
                   d / "events").start()
    ctl_id = ca.issue("ctl")
    ctl = FakeControl(BrokerConfig("127.0.0.1", broker.port, ca.ca, ctl_id.cert, ctl_id.key),
                      USERS, LINKS).start()
    cluster = KmCluster(d, ca, broker.port, LINKS).start()
    try:
        ids = {s: ca.issue(s, ou="sae", o=u["user"]) for s, u in USERS.items()}

        def client(sae: str) -> SaeClient:
            return SaeClient(cluster.url(USERS[sae]["km"]), ids[sae].cert, ids[sae].key, ca.ca)

        def pair_014(master: str, slave: str) -> None:
            with client(master) as m, client(slave) as s:
                keys = m.enc_keys(slave, number=2, size=256).keys()
                got = s.dec_keys(master, [k["key_ID"] for k in keys]).keys()
                assert got == keys, (keys, got)

        threads = [threading.Thread(target=pair_014, args=p)
                   for p in (("sae-a0", "sae-a1"), ("sae-a0", "sae-a2"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sid = str(uuid.uuid4())
        with client("sae-a1") as a1, client("sae-a2") as a2:
            a1.open_connect("sae-a1", "sae-a2", {"key_chunk_size": 32, "timeout": 200}, sid)
            a2.open_connect("sae-a1", "sae-a2", {"key_chunk_size": 32, "timeout": 3000}, sid)
            k1, k2 = a1.wait_key(sid, timeout=10), a2.wait_key(sid, index=0, timeout=10)
            assert k1.body.get("key_buffer") == k2.body.get("key_buffer"), (k1.body, k2.body)
            a1.close(sid)
        time.sleep(1.0)
    finally:
        cluster.stop()
        ctl.stop()
        rec.stop()
        broker.stop()
    shutil.copy(rec.path, OUT)
    print(f"{sum(1 for _ in OUT.open())} lines -> {OUT}")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
