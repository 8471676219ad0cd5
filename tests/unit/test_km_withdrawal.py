"""Link alarms at a Key Manager: relay route validation, the alarm state (quarantine), and
the store's withdrawal of undelivered keys whose route crossed a link under a QBER alarm."""

from __future__ import annotations

import os
import time

import pytest

from qkdtwin.key_manager import relay as rl
from qkdtwin.key_manager.alarms import BadAlarm, LinkAlarms
from qkdtwin.key_manager.keystore import E2EKey, KeyStore, NotFound, via_route, via_text

pytestmark = pytest.mark.unit

FIELDS = ("session_id", "source_km", "from_km", "to_km", "initiator_sae_id", "api")


def _msg(route=None, link="km1-km2"):
    values = [os.urandom(32)]
    pad = os.urandom(rl.pad_bytes_needed(values))
    header = {**{f: "x" for f in FIELDS}, "link": link, "link_key_IDs": ["a"],
              "target_sae_ids": ["sae-1"]}
    if route is not None:
        header["route"] = route
    msg = rl.seal(header, [{"key_ID": "k0", "index": 0, "size": 256}], values, pad)
    return msg, pad, values


def test_relay_route_is_checked_and_authenticated():
    msg, pad, values = _msg(["km0-km1", "km1-km2"])
    assert rl.route_of(rl.validate_message(msg)) == ["km0-km1", "km1-km2"]
    assert rl.open_sealed(msg, pad) == values
    # the MAC covers the route: a hop cannot hide a link the keys crossed
    msg["route"] = ["km1-km2"]
    with pytest.raises(rl.RelayError, match="authentication"):
        rl.open_sealed(msg, pad)
    # without a route (a KM without route tracking) the receiver knows the last link only
    assert rl.route_of(rl.validate_message(_msg(None)[0])) == ["km1-km2"]


@pytest.mark.parametrize("route, why", [
    (["km0-km1"], "ends with km0-km1"),
    ([], "route must be"),
    ("km1-km2", "route must be"),
    (["km1-km2", "km1-km2"], "twice"),
    (["a|b", "km1-km2"], "route must be"),
    ([3, "km1-km2"], "route must be"),
    ([f"l{i}" for i in range(40)] + ["km1-km2"], "route must be"),
])
def test_relay_refuses_a_bad_route(route, why):
    with pytest.raises(rl.RelayError, match=why) as exc:
        rl.validate_message(_msg(route)[0])
    assert exc.value.status == 400


def test_via_text_matches_whole_link_names():
    assert via_text(["km0-km1", "km1-km2"]) == "|km0-km1|km1-km2|"
    assert via_route("|km0-km1|km1-km2|") == ["km0-km1", "km1-km2"]
    assert via_text([]) == "" and via_route("") == []


def test_alarm_state_quarantines_until_clear_and_ignores_stale_messages():
    a = LinkAlarms()
    before, after = a.apply("L", {"link": "L", "kind": "qber_suspicious", "ts": 10.0})
    assert before is None and after.kind == "qber_suspicious" and after.since == 10.0
    _, after = a.apply("L", {"link": "L", "kind": "qber_high", "ts": 12.0})
    assert after.kind == "qber_high" and after.since == 10.0  # still the same alarm
    assert "link L is under alarm (qber_high since" in after.describe()
    assert a.first_in(["M", "L"]).link == "L" and a.first_in(["M"]) is None
    # an older message handed over late by the bus changes nothing
    before, after = a.apply("L", {"link": "L", "kind": "clear", "ts": 11.0})
    assert before is after and a.get("L").kind == "qber_high"
    before, after = a.apply("L", {"kind": "clear", "ts": 13.0})
    assert before.kind == "qber_high" and after is None and a.snapshot() == {}
    for bad in ({"link": "L", "kind": "eve"}, {"link": "M", "kind": "clear"}, {"kind": None}):
        with pytest.raises(BadAlarm):
            a.apply("L", bad)


def _keys(idxs, side_via, session="s"):
    return [E2EKey(f"{session}:{i}", session, i, 256, "a", "b", bytes([i]) * 32, side_via)
            for i in idxs]


def test_store_withdraws_keys_whose_route_crossed_the_link(tmp_path):
    store = KeyStore(tmp_path / "km.sqlite")
    try:
        with store.tx() as db:
            store.put_e2e(db, "src", _keys([0, 1, 2], "|km0-km2|"))
            store.put_e2e(db, "src", _keys([3], "|km0-km1|km1-km2|"))
            store.put_e2e(db, "pend", _keys([4], ""))  # not yet routed
            store.put_e2e(db, "src", _keys([0], "|km0-km22|", session="t"))  # another link
        store.put_received(_keys([0, 1, 2], "|km0-km2|", session="u"))
        assert store.take_chunk("s", "src", 0, "a") is not None  # delivered before the alarm
        ws = store.withdraw_route("km0-km2", "qber_high", 100.0)
        assert [(w.session_id, w.side, w.idx) for w in ws] == [
            ("s", "src", 1), ("s", "src", 2), ("u", "dst", 0), ("u", "dst", 1),
            ("u", "dst", 2)]
        assert {w.link for w in ws} == {"km0-km2"} and ws[0].size == 256
        assert store.ready_count("s", "src") == 1 and store.ready_count("t", "src") == 1
        assert [k.idx for k in store.pending_keys("s", 10)] == [4]
        assert store.withdraw_route("km0-km2", "qber_high", 100.0) == []  # idempotent
        # the next position skips withdrawn indexes; an explicit one finds the record
        assert store.next_index("s", "src", 1) == 3 and store.next_index("s", "src", 0) == 0
        assert store.withdrawn_indexes("u", "dst") == [0, 1, 2]
        w = store.withdrawal("s:2", "src")
        assert (w.link, w.kind, w.since) == ("km0-km2", "qber_high", 100.0)
        assert store.withdrawal("s:2", "dst") is None
        # ETSI 014 by ID: gone
        with pytest.raises(NotFound):
            store.take_by_ids("a", "b", ["u:1"])
        # a retried relay of a withdrawn key is not stored again
        new, gone = store.receive(_keys([1, 3], "|km0-km1|km1-km2|", session="u"))
        assert new == 1 and [g.key_id for g in gone] == ["u:1"]
        assert store.ready_count("u", "dst") == 1
        # the source drops a pending key its destination withdrew; recorded as 'src'
        assert [w.key_id for w in store.withdraw_keys(["s:4"], "pend", "km0-km2", "qber_high",
                                                      100.0)] == ["s:4"]
        assert store.pending_keys("s", 10) == [] and store.next_index("s", "src", 4) == 5
        # delivery records keep the route
        k = store.take_chunk("s", "src", 3, "a")
        assert k.via == "|km0-km1|km1-km2|"
        assert store._db.execute("SELECT via FROM delivered WHERE key_id='s:3'"
                                 ).fetchone()[0] == "|km0-km1|km1-km2|"
        # acknowledged keys get their route
        store.put_e2e_keys("pend", _keys([7], "", session="v"))
        assert store.acknowledge(["v:7"], "|km0-km2|") == 1
        assert [w.key_id for w in store.withdraw_route("km0-km2", "qber_suspicious", 1.0)
                ] == ["v:7"]
        # records are pruned with the delivery records
        store.prune_records(time.time() + 1)
        assert store.withdrawal("s:2", "src") is None
    finally:
        store.close()
