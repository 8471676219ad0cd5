"""Unit tests of the Key Manager's parts: token bucket, priority scheduler, relay crypto,
key store, configuration, session state machine."""

from __future__ import annotations

import os
import threading

import pytest

from qkdtwin.errors import UserError
from qkdtwin.key_manager import relay as rl
from qkdtwin.key_manager.config import parse_config
from qkdtwin.key_manager.forwarding import Entry, ForwardingTable
from qkdtwin.key_manager.keystore import E2EKey, KeyStore, NotFound, WrongOwner
from qkdtwin.key_manager.scheduler import Job, LinkScheduler
from qkdtwin.key_manager.sessions import (
    InvalidTransition,
    Session,
    SessionTable,
    session_id_014,
)
from qkdtwin.key_manager.token_bucket import TokenBucket

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_burst_rate_and_refund():
    c = Clock()
    b = TokenBucket(1000, 100, clock=c)
    assert b.take(600) and b.take(400)
    assert not b.take(1)
    assert b.retry_after(50) == pytest.approx(0.5)
    c.t = 0.5
    assert b.take(50) and not b.take(1)
    b.give_back(50)
    assert b.take(50)
    c.t = 100
    assert b.tokens == 1000  # never above the size
    assert b.retry_after(2000) == float("inf")
    b.reconfigure(100, 10)
    assert b.tokens == 100


def test_scheduler_runs_highest_priority_first_when_key_arrives():
    avail = {"bytes": 0}
    sched = LinkScheduler("l", lambda: avail["bytes"]).start()
    order = []

    def job(tag, prio, prefetch=False):
        def run():
            avail["bytes"] -= 10
            order.append(tag)
        return sched.submit(Job(priority=prio, prefetch=prefetch, session_id=tag,
                                need_bytes=10, run=run))

    jobs = [job("low", 1), job("prefetch-high", 8, True), job("high", 8), job("mid", 5)]
    cancelled = job("gone", 9)
    cancelled.cancelled = True
    assert [q[2] for q in sched.queued()][:2] == ["gone", "high"]
    avail["bytes"] = 40
    sched.key_arrived()
    for j in jobs:
        assert j.done.wait(5)
    sched.stop()
    assert order == ["high", "prefetch-high", "mid", "low"]


def test_scheduler_drops_jobs_of_ended_sessions_instead_of_blocking_the_link():
    """A big job of a session that ended (it could never run: the pool is too small) must
    not hold up the jobs queued behind it."""
    sched = LinkScheduler("l", lambda: 100).start()
    live = {"big": True}
    ran = []
    big = sched.submit(Job(priority=9, prefetch=False, session_id="big", need_bytes=10**9,
                           run=lambda: ran.append("big"), alive=lambda: live["big"]))
    small = sched.submit(Job(priority=1, prefetch=False, session_id="small", need_bytes=10,
                             run=lambda: ran.append("small")))
    assert not small.done.wait(0.3)  # behind the higher-priority job, as it should be
    live["big"] = False  # its session ended
    sched.key_arrived()
    assert small.done.wait(5) and big.done.wait(5)
    sched.stop()
    assert ran == ["small"]


def test_scheduler_reports_errors_to_the_waiter():
    sched = LinkScheduler("l", lambda: 100).start()

    def boom():
        raise RuntimeError("no peer")
    j = sched.submit(Job(priority=1, prefetch=False, session_id="s", need_bytes=1, run=boom))
    assert j.done.wait(5) and isinstance(j.error, RuntimeError)
    sched.stop()


def _msg(values, pad):
    header = {"session_id": "s", "source_km": "km0", "from_km": "km0", "to_km": "km1",
              "link": "km0-km1", "link_key_IDs": ["a", "b"], "initiator_sae_id": "sae-0",
              "target_sae_ids": ["sae-1"], "api": "014"}
    entries = [{"key_ID": f"k{i}", "index": i, "size": len(v) * 8} for i, v in enumerate(values)]
    return rl.seal(header, entries, values, pad)


def test_relay_one_time_pad_and_mac():
    values = [os.urandom(32), os.urandom(16)]
    pad = os.urandom(rl.pad_bytes_needed(values))
    msg = rl.validate_message(_msg(values, pad))
    import base64
    cts = [base64.b64decode(k["value"]) for k in msg["keys"]]
    assert cts[0] != values[0] and cts[0] == rl.xor(values[0], pad[:32])
    assert rl.open_sealed(msg, pad) == values
    # any change to header or ciphertext, or another pad, fails authentication
    for mutate in (lambda m: m.update(session_id="t"),
                   lambda m: m["keys"][0].update(value=base64.b64encode(b"\0" * 32).decode()),
                   lambda m: m["link_key_IDs"].append("c")):
        bad = _msg(values, pad)
        mutate(bad)
        with pytest.raises(rl.RelayError, match="authentication"):
            rl.open_sealed(bad, pad)
    with pytest.raises(rl.RelayError):
        rl.open_sealed(_msg(values, pad), os.urandom(len(pad)))
    with pytest.raises(ValueError):
        _msg(values, pad[:-1])


@pytest.mark.parametrize("bad", [None, [], {"session_id": 1}, {**{
    f: "x" for f in ("session_id", "source_km", "from_km", "to_km", "link", "initiator_sae_id",
                     "mac", "api")}, "link_key_IDs": ["a", "a"]}])
def test_relay_validate_refuses_malformed(bad):
    with pytest.raises(rl.RelayError):
        rl.validate_message(bad)


def test_keystore_link_keys_are_used_once(tmp_path):
    ks = KeyStore(tmp_path / "km.sqlite")
    ks.add_link_keys("l", [("k1", "km0", b"a" * 32), ("k2", "km1", b"b" * 32),
                           ("k3", "km0", b"c" * 32)], state=0)
    assert ks.link_key_count("l") == 0  # pending until the peer confirms
    ks.confirm_link_keys("l", ["k1", "k2", "k3"])
    assert ks.link_key_count("l", "km0") == 2
    with ks.tx() as db:
        assert ks.take_own_link_keys(db, "l", "km0", 3) == []  # not enough: nothing taken
        got = ks.take_own_link_keys(db, "l", "km0", 2)
    assert [k for k, _ in got] == ["k1", "k3"]
    with ks.tx() as db:
        assert ks.take_peer_link_keys(db, "l", "km1", ["k2"]) == [b"b" * 32]
    with pytest.raises(NotFound), ks.tx() as db:
        ks.take_peer_link_keys(db, "l", "km1", ["k2"])
    # a used key cannot come back (e.g. a re-sent announcement)
    assert ks.add_link_keys("l", [("k1", "km0", b"a" * 32)], state=1) == 0
    import time
    assert ks.prune_records(time.time() - 3600) == 0  # recent records stay
    assert ks.prune_records(time.time() + 10) == 3    # k1, k2, k3
    ks.close()


def test_keystore_e2e_keys_delivered_once_to_the_right_slave(tmp_path):
    ks = KeyStore(tmp_path / "km.sqlite")
    keys = [E2EKey(f"id{i}", "s", i, 256, "m", "sl", os.urandom(32)) for i in range(3)]
    ks.put_e2e_keys("dst", keys)
    ks.put_e2e_keys("src", keys[:2])
    assert ks.take_ready("s", 256, 3, "m") == []
    assert [k.key_id for k in ks.take_ready("s", 256, 2, "m")] == ["id0", "id1"]
    with pytest.raises(WrongOwner):
        ks.take_by_ids("m", "other", ["id0"])
    with pytest.raises(NotFound):
        ks.take_by_ids("other-master", "sl", ["id0"])
    with pytest.raises(NotFound):
        ks.take_by_ids("m", "sl", ["id0", "nope"])
    assert [k.key for k in ks.take_by_ids("m", "sl", ["id0", "id2"])] == [keys[0].key,
                                                                         keys[2].key]
    with pytest.raises(NotFound):
        ks.take_by_ids("m", "sl", ["id0"])
    assert ks.owner_of("id1") == ("m", "sl")
    ks.close()
    # everything survives a reopen (the file is the state)
    ks = KeyStore(tmp_path / "km.sqlite")
    assert [k.key_id for k in ks.take_by_ids("m", "sl", ["id1"])] == ["id1"]
    assert ks.was_delivered("id1", "dst") and not ks.was_delivered("id1", "nope")
    ks.close()


def test_keystore_chunks_per_side(tmp_path):
    ks = KeyStore(tmp_path / "km.sqlite")
    c = E2EKey("s:0", "s", 0, 256, "a", "b", b"x" * 32)
    ks.put_e2e_keys("src", [c])
    ks.put_e2e_keys("dst", [c])
    assert ks.take_chunk("s", "src", 0, "a").key == b"x" * 32
    assert ks.take_chunk("s", "src", 0, "a") is None
    assert ks.take_chunk("s", "dst", 0, "b").key == b"x" * 32
    with ks.tx() as db:
        assert ks.bump(db, "idx:s", 5) == 0
    assert ks.max_idx("s") == 4 and ks.counter("idx:s") == 5
    ks.close()


def test_keystore_take_chunk_moves_the_position_in_the_same_transaction(tmp_path):
    """Finding L1: the chunk and the side's position change together (never one alone)."""
    ks = KeyStore(tmp_path / "km.sqlite")
    ks.put_e2e_keys("src", [E2EKey(f"s:{i}", "s", i, 256, "a", "b", b"x" * 32)
                            for i in (0, 3, 1)])
    assert ks.take_chunk("s", "src", 0, "a", "pos:s:src").idx == 0
    assert ks.counter("pos:s:src") == 1
    assert ks.take_chunk("s", "src", 3, "a", "pos:s:src").idx == 3  # ran ahead
    assert ks.counter("pos:s:src") == 4
    assert ks.take_chunk("s", "src", 1, "a", "pos:s:src").idx == 1  # behind: stays
    assert ks.counter("pos:s:src") == 4
    assert ks.take_chunk("s", "src", 5, "a", "pos:s:src") is None  # none: nothing moves
    assert ks.counter("pos:s:src") == 4
    ks.close()


BASE = {"node": "km0", "tls": {"ca": "ca", "cert": "c", "key": "k"}, "data_dir": "/tmp/x",
        "modules": [{"link": "km0-km1", "peer": "km1", "peer_url": "https://10.0.0.2:8443/",
                     "module_url": "http://127.0.0.1:9001"},
                    {"link": "km2-km0", "peer": "km2", "peer_url": "https://x:8443",
                     "module_url": "http://127.0.0.1:9002", "slave_sae_id": "qkd-b"}]}


def test_config_defaults_and_sides():
    cfg = parse_config(BASE)
    assert cfg.port == 8443 and cfg.key_size == 256 and cfg.broker is None
    a, b = cfg.links
    assert (a.side, a.module_sae_id, a.peer_url) == ("a", "km1", "https://10.0.0.2:8443")
    assert (b.side, b.module_sae_id) == ("b", "qkd-b")
    assert cfg.link_to("km2") is b and cfg.link_to("km9") is None


@pytest.mark.parametrize("change,msg", [
    ({"node": None}, "node"), ({"tls": None}, "tls"), ({"key_size": 12}, "key_size"),
    ({"modules": [{"link": "x"}]}, "peer"), ({"limits": {"max_key_size": -1}}, "limits"),
    ({"modules": [{"link": "a", "peer": "b", "peer_url": "u", "module_url": "m",
                   "side": "c"}]}, "side"),
])
def test_config_errors_are_clear(change, msg):
    with pytest.raises(UserError, match=msg):
        parse_config({**BASE, **change})


def test_session_state_machine():
    seen = []
    saved = []
    t = SessionTable(lambda s, o, n: seen.append((o, n)), lambda s: saved.append(s.state))
    s, created = t.get_or_create("x", lambda: Session("x", "014"))
    assert created and t.get_or_create("x", lambda: Session("x", "014")) == (s, False)
    for st in ("USER_ACCEPTED", "OPERATIVE", "KEY_EXCHANGING", "OPERATIVE"):
        t.transition(s, st)
    with pytest.raises(InvalidTransition):
        t.transition(s, "AUTHENTICATING")
    assert t.transition(s, "TERMINATED", "closed")
    assert not t.transition(s, "OPERATIVE")  # terminated stays terminated
    assert seen[-1] == ("OPERATIVE", "TERMINATED") and s.reason == "closed"
    assert "TERMINATED" in saved
    s2, created = t.get_or_create("x", lambda: Session("x", "014"))
    assert created and s2 is not s
    assert session_id_014("a", "b") == session_id_014("a", "b") != session_id_014("b", "a")
    restored = Session.from_dict(s.to_dict())
    assert restored.state == "TERMINATED" and restored.reason == "closed"


def test_forwarding_table_update_and_wait():
    ft = ForwardingTable()
    threading.Timer(0.1, ft.set, ("s", Entry("transit", "km0", "km2"))).start()
    assert ft.wait("s", 2) == Entry("transit", "km0", "km2")
    old = ft.set("s", Entry("transit", "km0", "km3"))
    assert old.next_hop == "km2" and ft.get("s").next_hop == "km3"
    assert ft.wait("nope", 0.05) is None
    assert ft.remove("s") and ft.get("s") is None


def test_revocation_matches_sessions_of_the_user_or_its_applications():
    """Finding M3: which sessions a user's revocation ends (either end, or the user)."""
    saes = {"sae-0", "sae-1"}
    mine = Session(session_id="a", api="014", state="OPERATIVE", user="ops",
                   local_sae_id="sae-0", peer_sae_id="sae-9")
    peer = Session(session_id="b", api="004", state="OPERATIVE", user="other",
                   local_sae_id="sae-8", peer_sae_id="sae-1")
    app = Session(session_id="c", api="004", state="USER_ACCEPTED", apps={"sae-1": "?"})
    other = Session(session_id="d", api="014", state="OPERATIVE", user="other",
                    local_sae_id="sae-8", peer_sae_id="sae-9")
    done = Session(session_id="e", api="014", state="TERMINATED", user="ops")
    assert [s.ended_for("ops", saes) for s in (mine, peer, app, other, done)] == [
        True, True, True, False, False]
    s = Session.from_dict({**mine.to_dict(), "certs": {"sae-0": "ab"}})
    assert s.certs == {"sae-0": "ab"}


def test_control_forgets_the_authentications_of_a_revoked_user():
    from qkdtwin.key_manager.control import Control
    from qkdtwin.messages import AuthResult
    c = Control("km0", None)
    c._auth_cache = {("f1", "p"): (0.0, AuthResult(ok=True, sae_id="sae-0", user="ops")),
                     ("f2", "p"): (0.0, AuthResult(ok=True, sae_id="sae-5", user="x")),
                     ("f3", "p"): (0.0, AuthResult(ok=True, sae_id="sae-7", user="x"))}
    c.forget_auth("ops", {"sae-7"})
    assert list(c._auth_cache) == [("f2", "p")]
