"""QKD module service, pure parts: framing, channel frames, key store, configuration."""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

from qkdtwin.errors import UserError
from qkdtwin.qkd_module.config import block_pulses, parse_config, sifted_signal_per_pulse
from qkdtwin.qkd_module.framing import (
    MAX_FRAME,
    FramedSocket,
    FrameError,
    pack_channel,
    unpack_channel,
)
from qkdtwin.qkd_module.store import KeyStore, StoreError
from qkdtwin.quantum.channel import AliceSource
from qkdtwin.quantum.params import LinkParams

pytestmark = pytest.mark.unit


def _roundtrip(msg: dict) -> dict:
    a, b = socket.socketpair()
    fa, fb = FramedSocket(a), FramedSocket(b)
    try:
        fa.send(msg)
        return fb.recv()
    finally:
        fa.close()
        fb.close()


@pytest.mark.parametrize("rate, eve", [(1e8, 0.0), (1e3, 0.5)])
def test_channel_frame_survives_the_wire(rate, eve):
    p = LinkParams.from_vars({"length_km": 5, "source_rate_hz": rate, "eve_fraction": eve,
                              "mu": 0.9})
    src = AliceSource(p, np.random.default_rng(1))
    src.emit(1234)
    frame = src.emit(2_000_000)
    got = unpack_channel(_roundtrip(pack_channel(frame, eve)))
    assert got.offset == frame.offset == 1234 and got.n_pulses == 2_000_000
    assert np.array_equal(got.positions, frame.positions)
    assert np.array_equal(got.basis, frame.basis) and np.array_equal(got.value, frame.value)
    assert np.array_equal(got.multi, frame.multi) and frame.multi.any()
    assert pack_channel(frame, eve)["gaps"].dtype.itemsize <= 2  # compact


def test_channel_frame_with_long_gaps_and_empty():
    p = LinkParams.from_vars({"length_km": 200})
    src = AliceSource(p, np.random.default_rng(2))
    frame = src.emit(5_000_000)
    msg = pack_channel(frame, 0.0)
    assert msg["gaps"].dtype == np.uint32
    assert np.array_equal(unpack_channel(msg).positions, frame.positions)
    empty = src.emit(1)
    assert len(unpack_channel(pack_channel(empty, 0.0)).positions) == len(empty.positions)


def test_inconsistent_channel_frame_is_refused():
    p = LinkParams.from_vars({"length_km": 5})
    msg = pack_channel(AliceSource(p, np.random.default_rng(3)).emit(1_000_000), 0.0)
    bad = dict(msg, n_pulses=1)
    with pytest.raises(ValueError, match="outside the frame"):
        unpack_channel(bad)
    with pytest.raises(ValueError, match="differ in length"):
        unpack_channel(dict(msg, state=msg["state"][:-1]))


def test_oversized_or_garbled_frames_close_the_connection():
    a, b = socket.socketpair()
    fb = FramedSocket(b)
    a.sendall(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(FrameError, match="exceeds"):
        fb.recv()
    a2, b2 = socket.socketpair()
    a2.sendall(struct.pack(">I", 5) + b"hello")
    with pytest.raises(FrameError, match="undecodable"):
        FramedSocket(b2).recv()
    a2.close()
    with pytest.raises(FrameError, match="closed"):
        FramedSocket(b2).recv()
    for s in (a, b, b2):
        s.close()


def _stores(tmp_path):
    return KeyStore(tmp_path / "alice.sqlite"), KeyStore(tmp_path / "bob.sqlite")


def test_keys_cut_across_blocks_match_and_are_delivered_once(tmp_path):
    alice, bob = _stores(tmp_path)
    blocks = {7: bytes(range(40)), 8: bytes(range(100, 150))}
    for bid, data in blocks.items():
        alice.add_block(bid, data, ready=False)
        bob.add_block(bid, data, ready=True)
    assert alice.carve(1, 8) == []  # pending blocks are not usable yet
    alice.resolve_pending([7, 8], alice.pending_blocks())
    assert alice.stored_bits() == 90 * 8
    carved = alice.carve(3, 32)      # 96 bytes > 90: refused whole
    assert carved == []
    carved = alice.carve(2, 32)      # 64 bytes: the second key spans both blocks
    assert [len(s) for _, _, s in carved] == [1, 2]
    assert carved[1][2] == [(7, 32, 8), (8, 0, 24)]
    bob.assign(alice.unsynced())
    bob.assign(alice.unsynced())  # a repeated assignment (lost reply) changes nothing
    alice.mark_synced([k for k, _ in alice.unsynced()])
    ids = [k for k, _, _ in carved]
    a_keys = alice.take_ids(ids)
    b_keys = bob.take_ids(ids)
    assert a_keys == b_keys == {k: v for k, v, _ in carved}
    assert b_keys[ids[1]] == blocks[7][32:] + blocks[8][:24]
    assert bob.take_ids(ids) is None and alice.take_ids(ids[:1]) is None  # once only
    assert alice.stored_bits() == bob.stored_bits() == (90 - 64) * 8


def test_bob_refuses_overlapping_or_unknown_segments(tmp_path):
    _, bob = _stores(tmp_path)
    bob.add_block(1, b"x" * 64, ready=True)
    bob.assign([("k1", [(1, 0, 32)])])
    with pytest.raises(StoreError, match="does not follow"):
        bob.assign([("k2", [(1, 0, 32)])])   # the same bytes again under another ID
    with pytest.raises(StoreError, match="not stored here"):
        bob.assign([("k3", [(2, 0, 8)])])
    with pytest.raises(StoreError, match="other segments"):
        bob.assign([("k1", [(1, 32, 32)])])
    assert bob.take_ids(["k2"]) is None and len(bob.take_ids(["k1"])["k1"]) == 32


def test_keys_nobody_fetches_expire_at_bob(tmp_path):
    _, bob = _stores(tmp_path)
    bob.add_block(1, b"y" * 64, ready=True)
    bob.assign([("old", [(1, 0, 32)])])
    assert bob.expire(3600) == 0
    time.sleep(0.05)
    bob.assign([("new", [(1, 32, 32)])])
    assert bob.expire(0.04) == 1
    assert bob.take_ids(["old"]) is None and bob.take_ids(["new"]) is not None


def test_store_survives_reopening(tmp_path):
    alice, _ = _stores(tmp_path)
    alice.add_block(3, b"a" * 16, ready=False)
    alice.add_block(4, b"b" * 16, ready=False)
    alice.set_meta("next_block", "5")
    alice.close()
    again = KeyStore(tmp_path / "alice.sqlite")
    assert again.pending_blocks() == [3, 4] and again.next_block_id() == 5
    again.resolve_pending([4], [3, 4])  # Bob had only block 4
    assert again.pending_blocks() == [] and again.has_blocks([3, 4]) == [4]
    assert again.stored_bits() == 128


BASE = {"node": "km0", "link": "km0-km1", "side": "a", "peer": "km1",
        "local_ipv4": "10.10.1.1", "peer_ipv4": "10.10.1.2", "data_dir": "/tmp/x",
        "qkd": {"length_km": 10}}


def test_config_defaults_and_block_size():
    cfg = parse_config(dict(BASE))
    assert cfg.is_alice and cfg.peer_port == 7700 and cfg.host == "127.0.0.1"
    p = cfg.params
    assert cfg.block_pulses == block_pulses(p)
    assert 0.99 * p.block_size <= cfg.block_pulses * sifted_signal_per_pulse(p) \
        <= 1.01 * p.block_size
    assert parse_config(dict(BASE, time_scale=4)).pulses_per_wall_second == 4e8


@pytest.mark.parametrize("change, message", [
    ({"side": "c"}, "side must be a or b"),
    ({"local_ipv4": "10.10.1"}, "not an IPv4 address"),
    ({"node": ""}, "node is required"),
    ({"qkd": {"length_km": -1}}, "length_km"),
    ({"qkd": {"nope": 1}}, "unknown field"),
    ({"qkd": [1]}, "must be a mapping"),
    ({"time_scale": 0}, "time_scale"),
    ({"peer_port": 70000}, "peer_port"),
    ({"key_size": 12}, "multiple of 8"),
    ({"broker": {"port": 1}}, "broker must be a mapping with host"),
    ({"qkd": {"length_km": 1000, "detector_efficiency": 1e-9, "dark_count_prob": 0}},
     "detection rate is zero"),
])
def test_bad_config_is_one_clear_error(change, message):
    with pytest.raises(UserError, match=message):
        parse_config({**BASE, **change})


def test_prediction_is_for_the_modules_block_and_zero_with_eve():
    from qkdtwin.qkd_module.predict import block_prediction

    p = LinkParams.from_vars({"length_km": 25})
    pred = block_prediction(p)
    assert pred["block_pulses"] == block_pulses(p)
    assert pred["skr_bps"] == pytest.approx(pred["secret_bits"] / pred["block_link_s"])
    # finite-size and real Cascade cost key against the asymptotic model, never add any
    assert 0 < pred["skr_bps"] < pred["asymptotic_skr_bps"]
    assert block_prediction(p.replace(eve_fraction=0.5))["secret_bits"] == 0


def test_eve_command_names_links_and_refuses_bad_input(capsys):
    from qkdtwin.cli import main
    from qkdtwin.labops.eve import find_link
    from qkdtwin.topology import load_lab

    lab = load_lab("line3")
    assert find_link(lab, "km1:km0").id == "km0-km1"
    with pytest.raises(UserError, match=r"no QKD link between km0 and km2 \(QKD links: "
                                        r"km0:km1, km1:km2\)"):
        find_link(lab, "km0:km2")
    with pytest.raises(UserError, match="NODE:NODE"):
        find_link(lab, "km0")
    with pytest.raises(SystemExit):
        main(["eve", "line3", "km0:km1", "--fraction", "1.5"])
    assert "must be in [0, 1]" in capsys.readouterr().err
