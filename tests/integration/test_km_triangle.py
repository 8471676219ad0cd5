"""Key Managers in a triangle km0 – km1 – km2 – km0 with scarce key on km0–km1: priority
queues, and a forwarding-table update while a session lives (re-routing)."""

from __future__ import annotations

import threading
import time

import pytest

from qkdtwin.key_manager.sessions import session_id_014
from tests.support.km_cluster import km_lab

pytestmark = pytest.mark.integration

USERS = {
    "sae-a0": {"user": "alice", "km": "km0"},
    "sae-a1": {"user": "alice", "km": "km1"},
    "sae-a2": {"user": "alice", "km": "km2"},
    "sae-b0": {"user": "bob", "km": "km0", "max_priority": 3},
}
LINKS = [("km0", "km1"), ("km1", "km2"), ("km0", "km2")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, test_ca):
    d = tmp_path_factory.mktemp("triangle")
    with km_lab(d, test_ca, USERS, LINKS, rates={"km0-km1": 100.0},
                extra={"prefetch_keys": 0, "request_wait_s": 30},
                per_km={"km0": {"pool": {"low_keys": 40, "batch": 20, "max_keys": 40}}}) as lab:
        yield lab


@pytest.mark.slow
def test_higher_priority_served_first_when_key_is_scarce(lab):
    url = lab["cluster"].url("km0") + "/api/v1/keys/sae-a1/enc_keys"
    done: list[str] = []
    lock = threading.Lock()

    def ask(sae: str, prio: int, tag: str) -> None:
        s = sae_session_cache[sae]
        r = s.post(url, json={"number": 8, "size": 256,
                              "extension_optional": [{"qkdtwin_priority": prio}]}, timeout=30)
        assert r.status_code == 200, r.text
        with lock:
            done.append(tag)

    sae_session_cache = {s: lab["saes"][s] for s in ("sae-a0", "sae-b0")}
    # open both sessions first (priority is fixed when the session is configured)
    ask("sae-b0", 1, "warm-low")
    ask("sae-a0", 8, "warm-high")
    module = lab["cluster"].modules["km0-km1"][0]
    module.paused = True  # km0 holds at most 40 link keys: enough for two requests
    try:
        lows = [threading.Thread(target=ask, args=("sae-b0", 1, "low")) for _ in range(8)]
        for t in lows:
            t.start()
        time.sleep(1.5)
        highs = [threading.Thread(target=ask, args=("sae-a0", 8, "high")) for _ in range(5)]
        for t in highs:
            t.start()
        time.sleep(1.5)  # every request is now queued at km0, waiting for link key
        with lock:
            before = list(done)
    finally:
        module.paused = False
    for t in lows + highs:
        t.join(60)
    after = done[len(before):]
    print(f"before key arrived: {before}; after: {after}")
    assert "high" not in before and len(after) >= 8
    # a low job may already have been running when key came; then every high one
    assert after[:6].count("high") == 5 or after[:5] == ["high"] * 5, after
    assert after[-1] == "low"


def test_forwarding_update_reroutes_a_live_session(lab):
    ctl = lab["ctl"]
    a0, a2 = lab["saes"]["sae-a0"], lab["saes"]["sae-a2"]
    base0, base2 = lab["cluster"].url("km0"), lab["cluster"].url("km2")
    sid = session_id_014("sae-a0", "sae-a2")
    k1 = a0.post(f"{base0}/api/v1/keys/sae-a2/enc_keys", json={"number": 2}).json()["keys"]
    assert ctl.paths[sid] == ["km0", "km2"]
    ctl.reroute(sid, ["km0", "km1", "km2"])
    time.sleep(0.5)
    r = a0.post(f"{base0}/api/v1/keys/sae-a2/enc_keys", json={"number": 2})
    assert r.status_code == 200, r.text
    k2 = r.json()["keys"]
    r = a2.post(f"{base2}/api/v1/keys/sae-a0/dec_keys",
                json={"key_IDs": [{"key_ID": k["key_ID"]} for k in k1 + k2]})
    assert r.status_code == 200 and r.json()["keys"] == k1 + k2
    time.sleep(0.3)
    ev = [e for e in ctl.events if e.get("session_id") == sid]
    assert any(e["element"] == "km1" and e["kind"] == "relay_forward" for e in ev)
    upd = [e for e in ev if e["kind"] == "forwarding_update" and e["element"] == "km0"]
    assert upd and upd[0]["old_next_hop"] == "km2" and upd[0]["next_hop"] == "km1"
