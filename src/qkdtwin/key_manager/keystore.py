"""Durable state of a Key Manager: link-key pools, end-to-end keys not yet delivered,
delivery records and sessions, in one SQLite database (WAL) in the KM's data dir.

Every change that hands out or consumes key is one transaction, so a KM killed with SIGKILL
and restarted neither loses a key nor hands one out twice. A host crash (power cut, panic)
keeps only what was synced, so before an effect of a commit leaves the process — an answer
to an application or a peer, a relay sent — :meth:`KeyStore.durable` syncs the WAL: a crash
cannot roll back a consumed link key (which would then pad a second relay: a two-time pad)
or a delivery (a key handed out twice). It is a group commit: commits run at
``synchronous=NORMAL`` and one ``fdatasync`` covers every commit made before it, so
concurrent requests share a sync instead of paying one each (``synchronous=FULL`` costs
half the ETSI 014 throughput here). The file, its ``-wal`` and ``-shm`` are 0600 in a 0700
directory: the WAL holds recent pages in clear, keys included.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.sqlite import open_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS link_keys (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  link TEXT NOT NULL, key_id TEXT NOT NULL,
  owner TEXT NOT NULL,            -- the KM that may encrypt with this key (the other decrypts)
  state INTEGER NOT NULL,         -- 0 pending (peer not yet confirmed), 1 available
  key BLOB NOT NULL,
  UNIQUE (link, key_id));
CREATE INDEX IF NOT EXISTS link_keys_use ON link_keys (link, owner, state, seq);
CREATE TABLE IF NOT EXISTS used_link_keys (
  link TEXT NOT NULL, key_id TEXT NOT NULL, ts REAL NOT NULL,
  PRIMARY KEY (link, key_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS e2e_keys (
  key_id TEXT NOT NULL,
  session_id TEXT NOT NULL,
  side TEXT NOT NULL,             -- 'src' ready for the source's application, 'dst' for the peer,
                                  -- 'pend' at the source: relayed, not yet acknowledged
  idx INTEGER NOT NULL,
  size INTEGER NOT NULL,          -- bits
  master TEXT NOT NULL, slave TEXT NOT NULL,
  key BLOB NOT NULL,
  created REAL NOT NULL,
  via TEXT NOT NULL DEFAULT '',   -- links the key crossed, "|l1|l2|" ('' = none or unknown)
  PRIMARY KEY (key_id, side));
CREATE INDEX IF NOT EXISTS e2e_keys_take ON e2e_keys (session_id, side, size, idx);
CREATE TABLE IF NOT EXISTS delivered (
  key_id TEXT NOT NULL, side TEXT NOT NULL, session_id TEXT NOT NULL, sae TEXT NOT NULL,
  ts REAL NOT NULL, via TEXT NOT NULL DEFAULT '', PRIMARY KEY (key_id, side)) WITHOUT ROWID;
-- undelivered keys taken away because their route crossed a link under a QBER alarm
CREATE TABLE IF NOT EXISTS withdrawn (
  key_id TEXT NOT NULL, side TEXT NOT NULL, session_id TEXT NOT NULL, idx INTEGER NOT NULL,
  link TEXT NOT NULL, kind TEXT NOT NULL,
  since REAL NOT NULL,            -- the alarm's time as this KM knows it
  ts REAL NOT NULL,               -- when this KM withdrew the key
  PRIMARY KEY (key_id, side)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS withdrawn_idx ON withdrawn (session_id, side, idx);
CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# Counters (idx:<sid>, pos:<sid>:<side>) of sessions with no row, key, delivery or withdrawal
# record left (L3: one row per session for ever); while a record remains, they stay.
PRUNE_COUNTERS = """DELETE FROM counters WHERE name IN (SELECT name FROM (SELECT name, CASE
 WHEN name LIKE 'idx:%' THEN substr(name, 5) ELSE substr(name, 5, length(name) - 8) END AS sid
 FROM counters WHERE name LIKE 'idx:%' OR name LIKE 'pos:%') WHERE sid NOT IN (SELECT
 session_id FROM sessions) AND sid NOT IN (SELECT session_id FROM e2e_keys) AND sid NOT IN
 (SELECT session_id FROM delivered) AND sid NOT IN (SELECT session_id FROM withdrawn))"""

# PRAGMA user_version of the schema above. A database without a version (0) was written by
# KM code before versioning; _migrate brings it up to date in one transaction.
# 1: used_link_keys.ts. 2: e2e_keys.via, delivered.via (route of a key), table withdrawn.
SCHEMA_VERSION = 2


class SchemaError(UserError):
    """The database was written by a newer KM (or is not a KM database)."""


@dataclass(frozen=True)
class E2EKey:
    key_id: str
    session_id: str
    idx: int
    size: int
    master: str
    slave: str
    key: bytes
    via: str = ""  # links crossed, "|l1|l2|" (see via_text)


@dataclass(frozen=True)
class Withdrawal:
    key_id: str
    side: str
    session_id: str
    idx: int
    size: int
    link: str
    kind: str
    since: float


def via_text(route: Iterable[str]) -> str:
    """A route as stored: "|l1|l2|", so that instr(via, '|L|') finds link L exactly."""
    route = list(route)
    return "|" + "|".join(route) + "|" if route else ""


def via_route(via: str) -> list[str]:
    return [x for x in via.split("|") if x]


class _NotEnough(Exception):
    """Inside a transaction: fewer keys than asked for (rolls the transaction back)."""


class NotFound(LookupError):
    """One or more keys named by ID are not (or no longer) here."""


class KeyConflict(ValueError):
    """A key ID arrived again with a different value."""


class WrongOwner(PermissionError):
    """The keys exist but belong to another SAE."""


class KeyStore:
    """One SQLite connection shared by all threads, serialised by a lock (short transactions)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # NORMAL, and durable() before anything leaves the process (see the module doc)
        self._db = open_db(path, synchronous="NORMAL", timeout=10, private=True)
        self._db.execute("PRAGMA secure_delete=ON")  # consumed key bytes are overwritten
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self._synced = 0  # total_changes covered by the last sync
        self._wal: tuple[int, int] | None = None  # (fd, inode) of the WAL file
        self._migrate()
        self.durable()

    def durable(self) -> None:
        """Return once every commit made so far is on disk (group commit, module doc)."""
        mine = self._db.total_changes  # counts the caller's commits (made before this call)
        if mine <= self._synced:
            return
        with self._sync_lock:
            if mine <= self._synced:
                return  # the sync that ran while we waited covered our commits
            with self._lock:  # no transaction is open while this is held
                target = self._db.total_changes
            os.fdatasync(self._wal_fd())  # outside _lock: others commit meanwhile
            self._synced = target

    def _wal_fd(self) -> int:
        """An fd of the WAL file (SQLite keeps it while its connection is open; reopened
        if it was unlinked: fstat, not a path lookup per answer)."""
        if self._wal is not None and os.fstat(self._wal[0]).st_nlink > 0:
            return self._wal[0]
        if self._wal is not None:
            os.close(self._wal[0])
        wal = self.path.with_name(self.path.name + "-wal")
        self._wal = (os.open(wal, os.O_RDONLY), os.stat(wal).st_ino)
        return self._wal[0]

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has schema version {version}, this KM knows up to"
                f" {SCHEMA_VERSION}: it was written by a newer KM; run that version, or move the"
                " file away to start with empty pools (its undelivered keys are then lost)")
        if version == SCHEMA_VERSION:
            return
        with self.tx() as db:
            cols = [r[1] for r in db.execute("PRAGMA table_info(used_link_keys)")]
            if cols and "ts" not in cols:
                # before version 1 used link-key IDs had no timestamp (pruning needs one):
                # count the old ones as used now, so that they are kept for a full period
                db.execute("ALTER TABLE used_link_keys ADD COLUMN ts REAL NOT NULL DEFAULT 0")
                db.execute("UPDATE used_link_keys SET ts=?", (time.time(),))
            for table in ("e2e_keys", "delivered"):
                cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
                if cols and "via" not in cols:
                    # before version 2 routes were not recorded: '' = unknown (never withdrawn)
                    db.execute(f"ALTER TABLE {table} ADD COLUMN via TEXT NOT NULL DEFAULT ''")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._wal is not None:
                os.close(self._wal[0])
                self._wal = None

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def ok(self) -> bool:
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    # -- link-key pools ----------------------------------------------------------------------

    def add_link_keys(self, link: str, keys: Iterable[tuple[str, str, bytes]], state: int) -> int:
        """Insert (key_id, owner, key); keys already present or already used are skipped."""
        n = 0
        with self.tx() as db:
            for key_id, owner, key in keys:
                if db.execute("SELECT 1 FROM used_link_keys WHERE link=? AND key_id=?",
                              (link, key_id)).fetchone():
                    continue
                cur = db.execute("INSERT OR IGNORE INTO link_keys (link, key_id, owner, state, key)"
                                 " VALUES (?,?,?,?,?)", (link, key_id, owner, state, key))
                n += cur.rowcount
        return n

    def has_link_keys(self, link: str, key_ids: list[str]) -> set[str]:
        with self._lock:
            q = ",".join("?" * len(key_ids))
            rows = self._db.execute(
                f"SELECT key_id FROM link_keys WHERE link=? AND key_id IN ({q})",
                (link, *key_ids)).fetchall()
        return {r[0] for r in rows}

    def confirm_link_keys(self, link: str, key_ids: list[str]) -> None:
        with self.tx() as db:
            db.executemany("UPDATE link_keys SET state=1 WHERE link=? AND key_id=?",
                           [(link, k) for k in key_ids])

    def pending_link_keys(self, link: str) -> list[tuple[str, str]]:
        with self._lock:
            return self._db.execute("SELECT key_id, owner FROM link_keys WHERE link=? AND state=0"
                                    " ORDER BY seq", (link,)).fetchall()

    def link_key_count(self, link: str, owner: str | None = None) -> int:
        with self._lock:
            if owner is None:
                return self._db.execute("SELECT count(*) FROM link_keys WHERE link=? AND state=1",
                                        (link,)).fetchone()[0]
            return self._db.execute("SELECT count(*) FROM link_keys WHERE link=? AND owner=? AND"
                                    " state=1", (link, owner)).fetchone()[0]

    @staticmethod
    def take_own_link_keys(db: sqlite3.Connection, link: str, owner: str, n: int
                           ) -> list[tuple[str, bytes]]:
        """Within a transaction: remove ``n`` available keys this KM may encrypt with."""
        rows = db.execute("SELECT seq, key_id, key FROM link_keys WHERE link=? AND owner=? AND"
                          " state=1 ORDER BY seq LIMIT ?", (link, owner, n)).fetchall()
        if len(rows) < n:
            return []
        db.executemany("DELETE FROM link_keys WHERE seq=?", [(r[0],) for r in rows])
        now = time.time()
        db.executemany("INSERT INTO used_link_keys VALUES (?,?,?)",
                       [(link, r[1], now) for r in rows])
        return [(r[1], r[2]) for r in rows]

    @staticmethod
    def take_peer_link_keys(db: sqlite3.Connection, link: str, owner: str, key_ids: list[str]
                            ) -> list[bytes]:
        """Within a transaction: remove the keys the peer encrypted with, in the given order."""
        out = []
        for key_id in key_ids:
            row = db.execute("SELECT seq, key FROM link_keys WHERE link=? AND key_id=? AND owner=?",
                             (link, key_id, owner)).fetchone()
            if row is None:
                raise NotFound(f"link key {key_id} of {link} not in the pool")
            db.execute("DELETE FROM link_keys WHERE seq=?", (row[0],))
            db.execute("INSERT INTO used_link_keys VALUES (?,?,?)", (link, key_id, time.time()))
            out.append(row[1])
        return out

    # -- end-to-end keys ---------------------------------------------------------------------

    @staticmethod
    def put_e2e(db: sqlite3.Connection, side: str, keys: Iterable[E2EKey]) -> None:
        now = time.time()
        db.executemany(
            "INSERT INTO e2e_keys (key_id, session_id, side, idx, size, master, slave, key,"
            " created, via) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(k.key_id, k.session_id, side, k.idx, k.size, k.master, k.slave, k.key, now,
              k.via) for k in keys])

    def put_e2e_keys(self, side: str, keys: list[E2EKey]) -> None:
        with self.tx() as db:
            self.put_e2e(db, side, keys)

    # relays not yet acknowledged: side 'pend' at the source until the destination's ack
    # moves them to 'src'; a restarted source finds them here and sends them again

    def acknowledge(self, key_ids: list[str], via: str = "") -> int:
        """Pending keys the destination acknowledged become ready ('src') with the route they
        took; returns how many (0 for keys another attempt acknowledged already)."""
        with self.tx() as db:
            return sum(db.execute("UPDATE e2e_keys SET side='src', via=? WHERE key_id=? AND"
                                  " side='pend'", (via, k)).rowcount for k in key_ids)

    def drop_keys(self, key_ids: list[str], side: str) -> None:
        with self.tx() as db:
            db.executemany("DELETE FROM e2e_keys WHERE key_id=? AND side=?",
                           [(k, side) for k in key_ids])

    def pending_sessions(self, older_than: float | None = None) -> list[str]:
        """Sessions with pending keys (created before ``older_than``, epoch s, if given)."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT DISTINCT session_id FROM e2e_keys WHERE side='pend' AND created < ?",
                (time.time() + 1 if older_than is None else older_than,))]

    def pending_keys(self, session_id: str, limit: int, older_than: float | None = None
                     ) -> list[E2EKey]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, idx, size, master, slave, key FROM e2e_keys WHERE"
                " session_id=? AND side='pend' AND created < ? ORDER BY idx LIMIT ?",
                (session_id, time.time() + 1 if older_than is None else older_than, limit)
            ).fetchall()
        return [E2EKey(r[0], session_id, r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def put_received(self, keys: list[E2EKey]) -> int:
        """Destination side: store relayed keys once. A key already held or already delivered
        (a retried relay whose acknowledgement was lost) is skipped; returns how many are new.
        KeyConflict if a held key arrives again with another value."""
        return self.receive(keys)[0]

    def receive(self, keys: list[E2EKey]) -> tuple[int, list[Withdrawal]]:
        """:meth:`put_received` that also skips keys withdrawn here before (a retried relay
        of a key whose first copy crossed a link under alarm); returns (new, withdrawn)."""
        gone: list[Withdrawal] = []
        with self.tx() as db:
            new = []
            for k in keys:
                w = self._withdrawal(db, k.key_id, "dst")
                if w is not None:
                    gone.append(w)
                    continue
                row = db.execute("SELECT key FROM e2e_keys WHERE key_id=? AND side='dst'",
                                 (k.key_id,)).fetchone()
                if row is not None:
                    if row[0] != k.key:
                        raise KeyConflict(k.key_id)
                    continue
                if db.execute("SELECT 1 FROM delivered WHERE key_id=? AND side='dst'",
                              (k.key_id,)).fetchone():
                    continue
                new.append(k)
            self.put_e2e(db, "dst", new)
        return len(new), gone

    def ready_count(self, session_id: str, side: str, size: int | None = None) -> int:
        with self._lock:
            if size is None:
                return self._db.execute("SELECT count(*) FROM e2e_keys WHERE session_id=? AND"
                                        " side=?", (session_id, side)).fetchone()[0]
            return self._db.execute("SELECT count(*) FROM e2e_keys WHERE session_id=? AND side=?"
                                    " AND size=?", (session_id, side, size)).fetchone()[0]

    def take_ready(self, session_id: str, size: int, n: int, sae: str) -> list[E2EKey]:
        """Hand ``n`` source-side keys of ``size`` bits to ``sae``: all or nothing, once.

        One statement on the hot path: the keys are deleted as they are read (the source
        side keeps no delivery record; the destination side does)."""
        try:
            with self.tx() as db:
                rows = db.execute(
                    "DELETE FROM e2e_keys WHERE rowid IN (SELECT rowid FROM e2e_keys WHERE"
                    " session_id=? AND side='src' AND size=? ORDER BY idx LIMIT ?)"
                    " RETURNING key_id, idx, master, slave, key", (session_id, size, n)
                ).fetchall()
                if len(rows) < n:
                    raise _NotEnough
        except _NotEnough:
            return []
        rows.sort(key=lambda r: r[1])
        return [E2EKey(r[0], session_id, r[1], size, r[2], r[3], r[4]) for r in rows]

    @staticmethod
    def _deliver(db: sqlite3.Connection, session_id: str, side: str, sae: str,
                 keys: list[E2EKey]) -> None:
        now = time.time()
        db.executemany("DELETE FROM e2e_keys WHERE key_id=? AND side=?",
                       [(k.key_id, side) for k in keys])
        db.executemany("INSERT INTO delivered (key_id, side, session_id, sae, ts, via)"
                       " VALUES (?,?,?,?,?,?)",
                       [(k.key_id, side, session_id, sae, now, k.via) for k in keys])

    def take_by_ids(self, master: str, slave: str, key_ids: list[str]) -> list[E2EKey]:
        """ETSI 014 dec_keys: all named keys, made by ``master`` for ``slave``, exactly once.

        NotFound if any is missing (or was delivered already); WrongOwner if any exists but was
        made for another slave SAE.
        """
        if len(set(key_ids)) != len(key_ids):
            raise NotFound("a key ID is named twice")
        with self.tx() as db:
            out = []
            for key_id in key_ids:
                row = db.execute("SELECT session_id, idx, size, master, slave, key, via FROM"
                                 " e2e_keys WHERE key_id=? AND side='dst'", (key_id,)).fetchone()
                if row is None:
                    raise NotFound(key_id)
                if row[4] != slave:
                    raise WrongOwner(key_id)
                if row[3] != master:
                    raise NotFound(key_id)
                out.append(E2EKey(key_id, row[0], row[1], row[2], row[3], row[4], row[5],
                                  row[6]))
            self._deliver(db, out[0].session_id if out else "", "dst", slave, out)
        return out

    def owner_of(self, key_id: str) -> tuple[str, str] | None:
        """(master, slave) of a key still held on the destination side, or None."""
        with self._lock:
            row = self._db.execute("SELECT master, slave FROM e2e_keys WHERE key_id=? AND"
                                   " side='dst'", (key_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def take_chunk(self, session_id: str, side: str, idx: int, sae: str,
                   position: str | None = None) -> E2EKey | None:
        """ETSI 004 GET_KEY: the chunk at ``idx`` for this side's application, once. The
        side's ``position`` counter moves past ``idx`` in the same transaction (a crash cannot
        leave a delivered chunk at the next position)."""
        with self.tx() as db:
            row = db.execute("SELECT key_id, size, master, slave, key, via FROM e2e_keys WHERE"
                             " session_id=? AND side=? AND idx=?", (session_id, side, idx)
                             ).fetchone()
            if row is None:
                return None
            key = E2EKey(row[0], session_id, idx, row[1], row[2], row[3], row[4], row[5])
            self._deliver(db, session_id, side, sae, [key])
            if position is not None:
                got = db.execute("SELECT value FROM counters WHERE name=?", (position,)
                                 ).fetchone()
                cur = got[0] if got else 0
                if idx >= cur:
                    self.bump(db, position, idx + 1 - cur)
        return key

    def was_delivered(self, key_id: str, side: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM delivered WHERE key_id=? AND side=?",
                                    (key_id, side)).fetchone() is not None

    def max_idx(self, session_id: str) -> int:
        """Highest chunk/key index ever produced for a session (held or delivered), or -1."""
        with self._lock:
            a = self._db.execute("SELECT max(idx) FROM e2e_keys WHERE session_id=?",
                                 (session_id,)).fetchone()[0]
        c = self.counter(f"idx:{session_id}")
        return max(a if a is not None else -1, c - 1)

    def drop_session_keys(self, session_id: str, side: str | None = None) -> int:
        with self.tx() as db:
            if side is None:
                return db.execute("DELETE FROM e2e_keys WHERE session_id=?", (session_id,)
                                  ).rowcount
            return db.execute("DELETE FROM e2e_keys WHERE session_id=? AND side=?",
                              (session_id, side)).rowcount

    def prune_records(self, older_than: float) -> int:
        """Forget used link-key IDs and delivery records older than ``older_than`` (epoch s):
        they only guard against replays of recent announcements and requests."""
        with self.tx() as db:
            n = db.execute("DELETE FROM used_link_keys WHERE ts < ?", (older_than,)).rowcount
            n += db.execute("DELETE FROM delivered WHERE ts < ?", (older_than,)).rowcount
            n += db.execute("DELETE FROM withdrawn WHERE ts < ?", (older_than,)).rowcount
            n += db.execute(PRUNE_COUNTERS).rowcount
        return n

    def expire_e2e(self, older_than: float) -> int:
        with self.tx() as db:
            return db.execute("DELETE FROM e2e_keys WHERE created < ?", (older_than,)).rowcount

    # -- withdrawal (a link of the key's route is under a QBER alarm) -------------------------

    def withdraw_route(self, link: str, kind: str, since: float) -> list[Withdrawal]:
        """Take away every undelivered end-to-end key (both sides) whose route crossed
        ``link``, recording each, in one transaction. Pending keys have no route yet."""
        with self.tx() as db:
            rows = db.execute(
                "DELETE FROM e2e_keys WHERE side IN ('src','dst') AND instr(via, ?) > 0"
                " RETURNING key_id, side, session_id, idx, size", (f"|{link}|",)).fetchall()
            out = [Withdrawal(r[0], r[1], r[2], r[3], r[4], link, kind, since) for r in rows]
            self._record_withdrawn(db, out)
        return sorted(out, key=lambda w: (w.session_id, w.side, w.idx))

    def withdraw_keys(self, key_ids: list[str], side: str, link: str, kind: str,
                      since: float) -> list[Withdrawal]:
        """Take away the named keys of ``side`` (e.g. pending ones whose acknowledgement says
        they crossed ``link``), recording each."""
        out = []
        with self.tx() as db:
            for k in key_ids:
                r = db.execute("DELETE FROM e2e_keys WHERE key_id=? AND side=? RETURNING"
                               " session_id, idx, size", (k, side)).fetchone()
                if r is not None:
                    out.append(Withdrawal(k, side, r[0], r[1], r[2], link, kind, since))
            # recorded under the side the application would have taken it from
            self._record_withdrawn(db, [Withdrawal(w.key_id, "src" if side == "pend" else side,
                                                   w.session_id, w.idx, w.size, w.link, w.kind,
                                                   w.since) for w in out])
        return out

    @staticmethod
    def _record_withdrawn(db: sqlite3.Connection, ws: list[Withdrawal]) -> None:
        now = time.time()
        db.executemany("INSERT OR REPLACE INTO withdrawn (key_id, side, session_id, idx, link,"
                       " kind, since, ts) VALUES (?,?,?,?,?,?,?,?)",
                       [(w.key_id, w.side, w.session_id, w.idx, w.link, w.kind, w.since, now)
                        for w in ws])

    @staticmethod
    def _withdrawal(db: sqlite3.Connection, key_id: str, side: str) -> Withdrawal | None:
        r = db.execute("SELECT session_id, idx, link, kind, since FROM withdrawn WHERE key_id=?"
                       " AND side=?", (key_id, side)).fetchone()
        return None if r is None else Withdrawal(key_id, side, r[0], r[1], 0, r[2], r[3], r[4])

    def withdrawal(self, key_id: str, side: str) -> Withdrawal | None:
        """The record of a key withdrawn on ``side`` ('src'/'dst'), or None."""
        with self._lock:
            return self._withdrawal(self._db, key_id, side)

    def next_index(self, session_id: str, side: str, idx: int) -> int:
        """The first index >= ``idx`` not withdrawn on ``side`` (ETSI 004 next position)."""
        with self._lock:
            rows = self._db.execute("SELECT idx FROM withdrawn WHERE session_id=? AND side=? AND"
                                    " idx >= ? ORDER BY idx", (session_id, side, idx))
            for (w,) in rows:
                if w != idx:
                    break
                idx += 1
        return idx

    def withdrawn_indexes(self, session_id: str, side: str) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT idx FROM withdrawn WHERE session_id=? AND side=? ORDER BY idx",
                (session_id, side))]

    # -- counters (monotonic, e.g. next chunk index of a stream) ------------------------------

    @staticmethod
    def bump(db: sqlite3.Connection, name: str, by: int) -> int:
        """Within a transaction: add ``by`` and return the value before."""
        row = db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        before = row[0] if row else 0
        db.execute("INSERT INTO counters VALUES (?,?) ON CONFLICT(name) DO UPDATE SET value=?",
                   (name, before + by, before + by))
        return before

    def counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return row[0] if row else 0

    # -- sessions ----------------------------------------------------------------------------

    def save_session(self, session_id: str, data: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO sessions VALUES (?,?) ON CONFLICT(session_id) DO UPDATE SET"
                       " data=excluded.data", (session_id, json.dumps(data)))

    def delete_session(self, session_id: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM sessions WHERE session_id=?", (session_id,))

    def load_sessions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(r[0]) for r in self._db.execute("SELECT data FROM sessions")]
