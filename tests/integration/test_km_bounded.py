"""Finding L3: the Key Manager's bookkeeping of names a caller chooses is bounded.

An application sends ``dec_keys`` naming 100,000 distinct master SAE IDs to a real KM
process (qkdtwin.testbed.km_cluster, with a Mosquitto and the stand-in control plane, whose
access control here answers "yes" for any peer, the worst case: every answer could be
cached). Before the fix each new name added an authentication-cache entry and cost an MQTT
request to access control (and an access-control event). After it the KM's RSS stays flat,
the lookups are rate-limited per certificate (refusals cached too), every answer is a 4xx or
503 with a JSON message, and the application's ordinary requests work again right after.

``QKDTWIN_L3_NAMES`` changes the number of names (default 100000).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.support.km_cluster import km_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMES = int(os.environ.get("QKDTWIN_L3_NAMES", "100000"))
THREADS = 8
WARMUP = min(10000, NAMES // 10)
USERS = {"sae-a0": {"user": "alice", "km": "km0"}, "sae-a1": {"user": "alice", "km": "km1"}}
LINKS = [("km0", "km1")]
# the KM's bounds (key_manager/control.py): burst and rate of lookups per certificate
LOOKUP_BURST, LOOKUP_RATE = 32, 5.0


class AnyPeer(dict):
    """The stand-in access control's user table, for which every peer SAE exists."""

    def __contains__(self, key: object) -> bool:
        return True


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def flood(url: str, app: requests.Session, names: range, codes: Counter, bad: list) -> None:
    """dec_keys on km1 as ``app`` (one certificate) naming each master of ``names``."""
    lock = threading.Lock()

    def run(part: range) -> None:
        s = requests.Session()
        s.cert, s.verify, s.trust_env = app.cert, app.verify, False
        for i in part:
            r = s.post(f"{url}/api/v1/keys/master-{i}/dec_keys",
                       json={"key_IDs": [{"key_ID": f"k-{i}"}]}, timeout=30)
            with lock:
                codes[r.status_code] += 1
                if r.status_code not in (400, 401, 503) or not r.json().get("message"):
                    bad.append((r.status_code, r.text[:200]))

    step = len(names) // THREADS + 1
    parts = [names[k:k + step] for k in range(0, len(names), step)]
    ts = [threading.Thread(target=run, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def test_100k_distinct_masters_keep_memory_flat_and_no_mqtt_storm(tmp_path, test_ca):
    with km_lab(tmp_path, test_ca, USERS, LINKS) as lab:
        ctl, cluster = lab["ctl"], lab["cluster"]
        users = AnyPeer(ctl.users)
        ctl.users = users
        url = cluster.url("km1")
        pid = cluster.procs["km1"].pid
        app = lab["saes"]["sae-a1"]  # the flooding application: one certificate

        def lookups() -> int:
            return sum(1 for p in list(ctl.log) if p.get("type") == "authenticate")

        codes: Counter = Counter()
        bad: list = []
        flood(url, app, range(WARMUP), codes, bad)
        rss0, n0, t0 = rss_kib(pid), lookups(), time.monotonic()
        flood(url, app, range(WARMUP, NAMES), codes, bad)
        rss1, n1, elapsed = rss_kib(pid), lookups(), time.monotonic() - t0
        print(f"\n{NAMES} names: answers {dict(codes)}, RSS {rss0} -> {rss1} KiB,"
              f" access-control lookups {n0} during warm-up, {n1 - n0} in {elapsed:.0f} s"
              f" after")
        assert bad == []
        # the lookups are rate-limited per certificate: what the bucket allows, not one per name
        assert n1 - n0 <= LOOKUP_BURST + LOOKUP_RATE * (elapsed + 5), (n0, n1, elapsed)
        # memory stays flat: 90 % of the names added less than 16 MiB
        assert rss1 - rss0 < 16 * 1024, (rss0, rss1)
        # the KM still works for the flooding application (its bucket refills) and others
        a0, a1 = lab["saes"]["sae-a0"], lab["saes"]["sae-a1"]
        time.sleep(1.0)
        r = a0.post(f"{cluster.url('km0')}/api/v1/keys/sae-a1/enc_keys", json={"number": 1})
        assert r.status_code == 200, r.text
        key = r.json()["keys"][0]
        r = a1.post(f"{url}/api/v1/keys/sae-a0/dec_keys",
                    json={"key_IDs": [{"key_ID": key["key_ID"]}]})
        assert r.status_code == 200 and r.json()["keys"] == [key], r.text
        assert cluster.health("km1")["ok"]
