"""The Key Manager's store across code versions (schema version, migration of a km.sqlite
from older KM code) and its parts for relay recovery: pending relays until acknowledged, a
destination that recognises a relay it has seen."""

from __future__ import annotations

import sqlite3
import time

import pytest

from qkdtwin.errors import UserError
from qkdtwin.key_manager.keystore import (
    SCHEMA_VERSION,
    E2EKey,
    KeyConflict,
    KeyStore,
    SchemaError,
)

pytestmark = pytest.mark.unit

# the schema the first KM code wrote (no version; used_link_keys without ts)
OLD_SCHEMA = """
CREATE TABLE link_keys (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, link TEXT NOT NULL, key_id TEXT NOT NULL,
  owner TEXT NOT NULL, state INTEGER NOT NULL, key BLOB NOT NULL, UNIQUE (link, key_id));
CREATE INDEX link_keys_use ON link_keys (link, owner, state, seq);
CREATE TABLE used_link_keys (
  link TEXT NOT NULL, key_id TEXT NOT NULL, PRIMARY KEY (link, key_id)) WITHOUT ROWID;
CREATE TABLE e2e_keys (
  key_id TEXT NOT NULL, session_id TEXT NOT NULL, side TEXT NOT NULL, idx INTEGER NOT NULL,
  size INTEGER NOT NULL, master TEXT NOT NULL, slave TEXT NOT NULL, key BLOB NOT NULL,
  created REAL NOT NULL, PRIMARY KEY (key_id, side));
CREATE INDEX e2e_keys_take ON e2e_keys (session_id, side, size, idx);
CREATE TABLE delivered (
  key_id TEXT NOT NULL, side TEXT NOT NULL, session_id TEXT NOT NULL, sae TEXT NOT NULL,
  ts REAL NOT NULL, PRIMARY KEY (key_id, side)) WITHOUT ROWID;
CREATE TABLE sessions (session_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _old_db(path):
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO used_link_keys VALUES ('km0-km1', 'used-1')")
    db.execute("INSERT INTO link_keys (link, key_id, owner, state, key) VALUES"
               " ('km0-km1', 'k-1', 'km0', 1, ?)", (b"\x01" * 32,))
    db.execute("INSERT INTO sessions VALUES ('s1', '{\"session_id\": \"s1\"}')")
    db.commit()
    db.close()


def test_old_database_is_migrated_and_works(tmp_path):
    path = tmp_path / "km.sqlite"
    _old_db(path)
    store = KeyStore(path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # key production consumes link key (3-column insert into used_link_keys) ...
        with store.tx() as db:
            assert store.take_own_link_keys(db, "km0-km1", "km0", 1) == [("k-1", b"\x01" * 32)]
        # ... housekeeping prunes (needs ts) without failing, and keeps recent records
        assert store.prune_records(time.time() - 3600) == 0
        # a link key used before the upgrade is still refused (replay guard kept)
        assert store.add_link_keys("km0-km1", [("used-1", "km0", b"\x02" * 32)], 1) == 0
        assert store.load_sessions() == [{"session_id": "s1"}]
    finally:
        store.close()
    # opening again is a no-op
    KeyStore(path).close()


def test_database_of_a_newer_km_is_refused_clearly(tmp_path):
    path = tmp_path / "km.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaError) as exc:
        KeyStore(path)
    assert isinstance(exc.value, UserError)
    assert "newer KM" in str(exc.value) and str(path) in str(exc.value)


def _keys(n, session="s", start=0, value=b"\x05"):
    return [E2EKey(f"{session}:{i}", session, i, 256, "a", "b", value * 32)
            for i in range(start, start + n)]


def test_pending_relays_become_ready_only_when_acknowledged(tmp_path):
    store = KeyStore(tmp_path / "km.sqlite")
    try:
        store.put_e2e_keys("pend", _keys(3))
        assert store.ready_count("s", "src") == 0
        assert store.pending_sessions() == ["s"]
        assert [k.idx for k in store.pending_keys("s", 2)] == [0, 1]
        assert store.max_idx("s") == 2  # pending indices are never produced again
        assert store.acknowledge(["s:0", "s:1"]) == 2
        assert store.acknowledge(["s:0"]) == 0  # a late second acknowledgement: no change
        assert store.ready_count("s", "src") == 2
        assert [k.key_id for k in store.pending_keys("s", 10)] == ["s:2"]
    finally:
        store.close()


def test_destination_stores_a_retried_relay_once(tmp_path):
    store = KeyStore(tmp_path / "km.sqlite")
    try:
        assert store.put_received(_keys(2)) == 2
        assert store.take_chunk("s", "dst", 0, "b") is not None  # index 0 delivered
        # the same relay again (its acknowledgement was lost) plus one new key
        assert store.put_received(_keys(3)) == 1
        assert store.take_chunk("s", "dst", 0, "b") is None  # not delivered twice
        assert store.ready_count("s", "dst") == 2
        with pytest.raises(KeyConflict):
            store.put_received(_keys(1, start=1, value=b"\x06"))
    finally:
        store.close()


# the schema of version 1 (routes not recorded: no via columns, no withdrawn table)
V1_SCHEMA = OLD_SCHEMA.replace(
    "link TEXT NOT NULL, key_id TEXT NOT NULL, PRIMARY KEY (link, key_id)) WITHOUT ROWID;",
    "link TEXT NOT NULL, key_id TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (link, key_id))"
    " WITHOUT ROWID;")


def test_version_1_database_gains_routes_and_withdrawals(tmp_path):
    path = tmp_path / "km.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    now = time.time()
    for i, side in ((0, "dst"), (1, "dst"), (2, "src")):
        db.execute("INSERT INTO e2e_keys VALUES (?,?,?,?,?,?,?,?,?)",
                   (f"s:{i}", "s", side, i, 256, "a", "b", b"\x07" * 32, now))
    db.execute("INSERT INTO delivered VALUES ('s:9', 'dst', 's', 'b', ?)", (now,))
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = KeyStore(path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        # keys from before the upgrade have no known route: an alarm withdraws none of them
        assert store.withdraw_route("km0-km1", "qber_high", now) == []
        k = store.take_chunk("s", "dst", 0, "b")
        assert k is not None and k.via == "" and k.key == b"\x07" * 32
        assert store.was_delivered("s:9", "dst") and store.was_delivered("s:0", "dst")
        # new keys carry their route; the withdrawn table works
        store.put_received([E2EKey("s:5", "s", 5, 256, "a", "b", b"\x08" * 32, "|x|km0-km1|")])
        assert [w.key_id for w in store.withdraw_route("km0-km1", "qber_high", now)] == ["s:5"]
        assert store.withdrawal("s:5", "dst").link == "km0-km1"
    finally:
        store.close()
    KeyStore(path).close()  # opening again is a no-op
