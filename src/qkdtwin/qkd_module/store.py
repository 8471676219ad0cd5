"""The module's key store: SQLite (WAL) in the node's data dir, so a restart neither loses
nor duplicates key.

Secret key arrives per post-processing block (`blocks`: bytes, a `used` pointer, `ready`).
Alice keeps a block *pending* until Bob confirms he stored it too. Keys for the KM are
carved from ready blocks in block order, byte by byte (`keys`: id, bytes, the block
segments they came from, `synced`); Alice tells Bob the segments under the new key IDs
before handing them out, and Bob accepts only the segments that follow what he already
assigned, so no byte is ever handed out under two IDs. Delivered keys are deleted.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from qkdtwin.sqlite import open_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
  id INTEGER PRIMARY KEY, key BLOB NOT NULL, used INTEGER NOT NULL DEFAULT 0,
  ready INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, key BLOB NOT NULL,
  segments TEXT NOT NULL, synced INTEGER NOT NULL, created REAL NOT NULL);
"""

Segment = tuple[int, int, int]  # block id, byte offset, length


class StoreError(Exception):
    """An inconsistent request against the store (e.g. out-of-order key assignment)."""


class KeyStore:
    def __init__(self, path: Path) -> None:
        self._db = open_db(path, synchronous="FULL", private=True)
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- meta ---------------------------------------------------------------------------

    def get_meta(self, k: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return row[0] if row else default

    def set_meta(self, k: str, v: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta(k, v) VALUES (?, ?)", (k, v))

    def next_block_id(self) -> int:
        """First block id of a new channel session (ids never repeat, across restarts too)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM blocks").fetchone()
            top = max(int(self.get_meta("next_block", "0") or 0), (row[0] or -1) + 1)
            return top

    # -- blocks -------------------------------------------------------------------------

    def add_block(self, block: int, key: bytes, ready: bool) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO blocks(id, key, used, ready, created) "
                             "VALUES (?, ?, 0, ?, ?)", (block, key, int(ready), time.time()))

    def has_blocks(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            return []
        with self._lock:
            q = ",".join("?" * len(ids))
            return [r[0] for r in self._db.execute(
                f"SELECT id FROM blocks WHERE id IN ({q})", ids)]

    def pending_blocks(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT id FROM blocks WHERE ready=0 ORDER BY id")]

    def resolve_pending(self, confirmed: Iterable[int], candidates: Iterable[int]) -> None:
        """Alice: pending blocks Bob has become ready; the other candidates are dropped."""
        confirmed = {int(i) for i in confirmed}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for b in candidates:
                    if int(b) in confirmed:
                        self._db.execute("UPDATE blocks SET ready=1 WHERE id=?", (int(b),))
                    else:
                        self._db.execute("DELETE FROM blocks WHERE id=? AND ready=0", (int(b),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- carving (Alice) -----------------------------------------------------------------

    def available_bytes(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(key) - used), 0) FROM blocks WHERE ready=1"
            ).fetchone()
        return int(row[0])

    def carve(self, number: int, size_bytes: int) -> list[tuple[str, bytes, list[Segment]]]:
        """Alice: cut `number` keys from ready blocks (all or none), stored as unsynced."""
        need = number * size_bytes
        with self._lock:
            if self.available_bytes() < need:
                return []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT id, key, used FROM blocks WHERE ready=1 AND used < LENGTH(key) "
                    "ORDER BY id").fetchall()
                out = []
                it = iter(rows)
                cur = next(it)
                bid, data, used = cur[0], cur[1], cur[2]
                for _ in range(number):
                    left = size_bytes
                    parts: list[bytes] = []
                    segs: list[Segment] = []
                    while left:
                        if used >= len(data):
                            self._finish_block(bid, used, len(data))
                            bid, data, used = next(it)
                        k = min(left, len(data) - used)
                        parts.append(data[used:used + k])
                        segs.append((bid, used, k))
                        used += k
                        left -= k
                    kid = str(uuid.uuid4())
                    key = b"".join(parts)
                    self._db.execute("INSERT INTO keys(id, key, segments, synced, created) "
                                     "VALUES (?, ?, ?, 0, ?)",
                                     (kid, key, json.dumps(segs), time.time()))
                    out.append((kid, key, segs))
                self._finish_block(bid, used, len(data))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def _finish_block(self, bid: int, used: int, length: int) -> None:
        if used >= length:
            self._db.execute("DELETE FROM blocks WHERE id=?", (bid,))
        else:
            self._db.execute("UPDATE blocks SET used=? WHERE id=?", (used, bid))

    def unsynced(self) -> list[tuple[str, list[Segment]]]:
        with self._lock:
            return [(r[0], [tuple(s) for s in json.loads(r[1])]) for r in self._db.execute(
                "SELECT id, segments FROM keys WHERE synced=0 ORDER BY seq")]

    def mark_synced(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._db.executemany("UPDATE keys SET synced=1 WHERE id=?", [(i,) for i in ids])

    def synced_count(self, size_bytes: int) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM keys WHERE synced=1 AND LENGTH(key)=?",
                                   (size_bytes,)).fetchone()
        return int(row[0])

    def take_synced(self, number: int, size_bytes: int) -> list[tuple[str, bytes]]:
        """Alice: deliver (delete) up to `number` synced keys of exactly `size_bytes`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key FROM keys WHERE synced=1 AND LENGTH(key)=? ORDER BY seq LIMIT ?",
                (size_bytes, number)).fetchall()
            if len(rows) < number:
                return []
            self._db.executemany("DELETE FROM keys WHERE id=?", [(r[0],) for r in rows])
        return [(r[0], r[1]) for r in rows]

    # -- assignment and delivery (Bob) ----------------------------------------------------

    def assign(self, keys: list[tuple[str, list[Segment]]]) -> None:
        """Bob: store the keys Alice carved, in order; idempotent for known key IDs."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for kid, segs in keys:
                    have = self._db.execute("SELECT segments FROM keys WHERE id=?",
                                            (kid,)).fetchone()
                    if have is not None:
                        if [tuple(s) for s in json.loads(have[0])] != [tuple(s) for s in segs]:
                            raise StoreError(f"key {kid} re-assigned with other segments")
                        continue
                    parts = []
                    for bid, off, k in segs:
                        row = self._db.execute("SELECT key, used FROM blocks WHERE id=?",
                                               (int(bid),)).fetchone()
                        if row is None:
                            raise StoreError(f"key {kid}: block {bid} not stored here")
                        data, used = row
                        if int(off) != used or int(k) <= 0 or used + int(k) > len(data):
                            raise StoreError(f"key {kid}: segment ({bid}, {off}, {k}) does not "
                                             f"follow the assigned part of block {bid} "
                                             f"(used {used} of {len(data)} bytes)")
                        parts.append(data[used:used + int(k)])
                        self._finish_block(int(bid), used + int(k), len(data))
                    self._db.execute("INSERT INTO keys(id, key, segments, synced, created) "
                                     "VALUES (?, ?, ?, 1, ?)",
                                     (kid, b"".join(parts), json.dumps(segs), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def take_ids(self, ids: list[str]) -> dict[str, bytes] | None:
        """Bob: deliver (delete) exactly these keys, or None when one is unknown."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = {}
                for kid in ids:
                    row = self._db.execute("SELECT key FROM keys WHERE id=? AND synced=1",
                                           (kid,)).fetchone()
                    if row is None or kid in out:
                        self._db.execute("ROLLBACK")
                        return None
                    out[kid] = row[0]
                self._db.executemany("DELETE FROM keys WHERE id=?", [(k,) for k in ids])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def expire(self, ttl_s: float) -> int:
        """Bob: drop assigned keys nobody fetched within ttl_s (the KM gave them up)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM keys WHERE synced=1 AND created < ?",
                                   (time.time() - ttl_s,))
        return cur.rowcount

    # -- figures ------------------------------------------------------------------------

    def stored_bits(self) -> int:
        """Secret bits held for the KM: unassigned ready block bytes plus undelivered keys."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(LENGTH(key)), 0) FROM keys").fetchone()
        return 8 * (self.available_bytes() + int(row[0]))

    def key_count(self, size_bytes: int) -> int:
        """Keys of this size the KM could still get (carvable plus undelivered)."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM keys WHERE LENGTH(key)=?",
                                   (size_bytes,)).fetchone()
        return self.available_bytes() // max(size_bytes, 1) + int(row[0])
