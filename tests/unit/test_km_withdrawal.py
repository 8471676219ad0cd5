"""Link alarms at a Key Manager: relay route validation, the alarm state (quarantine), and
the store's withdrawal of undelivered keys whose route crossed a link under a QBER alarm."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from qkdtwin.key_manager import relay as rl
from qkdtwin.key_manager.alarms import BadAlarm, LinkAlarms
from qkdtwin.key_manager.keystore import E2EKey, KeyStore, NotFound, via_route, via_text
from qkdtwin.messages import BadMessage, LinkAlarm, decode

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
    before, after = a.apply("L", LinkAlarm(link="L", kind="qber_suspicious", ts=10.0))
    assert before is None and after.kind == "qber_suspicious" and after.since == 10.0
    _, after = a.apply("L", LinkAlarm(link="L", kind="qber_high", ts=12.0))
    assert after.kind == "qber_high" and after.since == 10.0  # still the same alarm
    assert "link L is under alarm (qber_high since" in after.describe()
    assert a.first_in(["M", "L"]).link == "L" and a.first_in(["M"]) is None
    # an older message handed over late by the bus changes nothing
    before, after = a.apply("L", LinkAlarm(link="L", kind="clear", ts=11.0))
    assert before is after and a.get("L").kind == "qber_high"
    before, after = a.apply("L", LinkAlarm(link="L", kind="clear", ts=13.0))
    assert before.kind == "qber_high" and after is None and a.snapshot() == {}
    for bad in ({"link": "L", "kind": "eve"}, {"link": "M", "kind": "clear"},
                {"link": "", "kind": "clear"}):
        with pytest.raises(BadAlarm):
            a.apply("L", decode({"type": "alarm", **bad}, LinkAlarm))
    for bad in ({"kind": "clear"}, {"link": "L", "kind": None}):  # refused before the state
        with pytest.raises(BadMessage):
            decode({"type": "alarm", **bad}, LinkAlarm)


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


# -- a Key Manager (in process, no broker) receiving relays while a link is under alarm -----

@pytest.fixture
def km9(tmp_path, test_ca):
    from qkdtwin.key_manager.config import parse_config
    from qkdtwin.key_manager.manager import KeyManager
    node = test_ca.issue("km9", ou="node")
    km = KeyManager(parse_config({
        "node": "km9", "listen": {"host": "127.0.0.1", "port": 0},
        "tls": {"ca": test_ca.ca, "cert": node.cert, "key": node.key},
        "data_dir": str(tmp_path / "km9"),
        "modules": [{"link": "km8-km9", "peer": "km8", "peer_url": "https://127.0.0.1:1",
                     "module_url": "http://127.0.0.1:1"}]}))
    yield km
    km.store.close()


def _relay_to_km9(km, sid, key_id, value, route):
    """A relay from km8 as km8 would seal it, with fresh link key shared with km9."""
    pads = [(uuid.uuid4().hex, os.urandom(32)) for _ in range(2)]
    km.store.add_link_keys("km8-km9", [(k, "km8", v) for k, v in pads], 1)
    header = {"session_id": sid, "source_km": "km7", "from_km": "km8", "to_km": "km9",
              "link": "km8-km9", "link_key_IDs": [k for k, _ in pads], "api": "004",
              "initiator_sae_id": "sae-a", "target_sae_ids": ["sae-b"], "route": route}
    return rl.seal(header, [{"key_ID": key_id, "index": 0, "size": 256}], [value],
                   b"".join(v for _, v in pads))


def _alarm(km, link, kind, ts):
    km.quarantine.on_alarm(f"qkd/v1/alarm/{link}", LinkAlarm(link=link, kind=kind, ts=ts))


def test_km_refuses_relays_over_or_across_a_link_under_alarm(km9):
    from qkdtwin.key_manager.forwarding import Entry
    km, sid, route = km9, "s1", ["km7-km8", "km8-km9"]
    km.forwarding.set(sid, Entry("destination", "km8", None))
    value = os.urandom(32)
    _alarm(km, "km8-km9", "link_down", 1.0)
    with pytest.raises(rl.RelayError) as exc:
        km.relay_in.ext_keys("km8", _relay_to_km9(km, sid, "s1:0", value, route))
    assert exc.value.status == 503 and "link km8-km9 is under alarm (link_down" in str(exc.value)
    _alarm(km, "km8-km9", "clear", 2.0)
    _alarm(km, "km7-km8", "qber_suspicious", 3.0)  # upstream: the relay crossed it
    with pytest.raises(rl.RelayError) as exc:
        km.relay_in.ext_keys("km8", _relay_to_km9(km, sid, "s1:0", value, route))
    assert exc.value.status == 409 and "crossed link km7-km8" in str(exc.value)
    assert km.health()["alarms"] == {"km7-km8": "qber_suspicious"}
    _alarm(km, "km7-km8", "clear", 4.0)
    # accepted: stored with its route, which the acknowledgement returns to the source
    ack = km.relay_in.ext_keys("km8", _relay_to_km9(km, sid, "s1:0", value, route))
    assert ack["route"] == route and ack["key_IDs"] == [{"key_ID": "s1:0"}]
    assert ack["withdrawn_key_IDs"] == []
    assert km.store._db.execute("SELECT via FROM e2e_keys WHERE key_id='s1:0'").fetchone() == (
        "|km7-km8|km8-km9|",)
    # a QBER alarm upstream withdraws it here; a retry of it (its ack was lost) after the
    # alarm cleared is not stored again, and the ack tells the source to drop its copy
    _alarm(km, "km7-km8", "qber_high", 5.0)
    assert km.store.withdrawal("s1:0", "dst").link == "km7-km8"
    assert km.metrics.withdrawn.labels(link="km7-km8", side="dst")._value.get() == 1
    _alarm(km, "km7-km8", "clear", 6.0)
    ack = km.relay_in.ext_keys("km8", _relay_to_km9(km, sid, "s1:0", value,
                                                     ["km6-km8", "km8-km9"]))
    assert ack["key_IDs"] == [] and ack["withdrawn_key_IDs"] == [
        {"key_ID": "s1:0", "link": "km7-km8", "alarm": "qber_high"}]
    assert km.store.ready_count(sid, "dst") == 0
    # a route that does not end with the link the message came on
    with pytest.raises(rl.RelayError, match="ends with"):
        km.relay_in.ext_keys("km8", _relay_to_km9(km, sid, "s1:1", value,
                                                  ["km8-km9", "km7-km8"]))
