"""qkdtwin.sqlite.open_db: the one way the stores open SQLite."""

from __future__ import annotations

import threading

import pytest

from qkdtwin.sqlite import open_db

pytestmark = pytest.mark.unit


def test_open_db_sets_the_stores_pragmas_and_autocommits(tmp_path):
    db = open_db(tmp_path / "a.db", synchronous="FULL", timeout=7)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.isolation_level is None
    db.execute("CREATE TABLE t (x)")
    done = threading.Thread(target=lambda: db.execute("INSERT INTO t VALUES (1)"))
    done.start()
    done.join()  # any thread may use it (the store holds its own lock)
    assert open_db(tmp_path / "a.db").execute("SELECT x FROM t").fetchall() == [(1,)]


def test_open_db_without_wal_keeps_the_default_journal(tmp_path):
    db = open_db(tmp_path / "b.db", wal=False)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # sqlite's default, FULL
