"""qkdtwin.bounded: the bounded tables behind finding L3."""

from __future__ import annotations

import time

import pytest

from qkdtwin.bounded import LruDict, RateGate, TokenBuckets

pytestmark = pytest.mark.unit


def test_lru_dict_keeps_the_newest_entries():
    d: LruDict[str, int] = LruDict(3)
    for i in range(10):
        d[f"k{i}"] = i
    assert list(d) == ["k7", "k8", "k9"]
    d.touch("k7")
    d["k10"] = 10
    assert list(d) == ["k9", "k7", "k10"]
    d["k9"] = 99  # setting again makes it the newest
    assert list(d) == ["k7", "k10", "k9"] and d["k9"] == 99


def test_rate_gate_allows_once_per_interval_and_stays_bounded():
    g = RateGate(10.0, maxlen=100)
    assert g.allow("a") and not g.allow("a") and g.allow("b")
    assert g.allow("a", interval_s=0.0)
    for i in range(10_000):
        g.allow(i)
    assert len(g) == 100


def test_token_buckets_burst_then_rate():
    b = TokenBuckets(burst=3, rate=100.0, maxlen=10)
    assert [b.take("x") for _ in range(4)] == [True, True, True, False]
    time.sleep(0.05)
    assert b.take("x")
    for i in range(1000):
        b.take(i)
    assert len(b) == 10


def test_km_counters_of_forgotten_sessions_are_pruned(tmp_path):
    from qkdtwin.key_manager.keystore import KeyStore

    ks = KeyStore(tmp_path / "km.sqlite")
    with ks.tx() as db:
        for sid in ("gone", "live"):
            ks.bump(db, f"idx:{sid}", 5)
            ks.bump(db, f"pos:{sid}:src", 2)
            ks.bump(db, f"pos:{sid}:dst", 2)
    ks.save_session("live", {"x": 1})
    ks.prune_records(time.time() - 100)
    assert ks.counter("idx:live") == 5 and ks.counter("pos:live:dst") == 2
    assert ks.counter("idx:gone") == 0 and ks.counter("pos:gone:src") == 0
