"""How every store of qkdtwin opens its SQLite database (key stores, control elements).

One connection per store, shared by its threads (each store serialises access with its own
lock), in autocommit mode: a store writes with explicit ``BEGIN``/``COMMIT`` where several
rows must change together. WAL lets readers run beside the writer; how durable a commit is
(``synchronous``) is each store's choice and stays where it is set.

Stores that hold key material open with ``private=True``: the database is created 0600 in a
0700 directory (SQLite gives its ``-wal`` and ``-shm`` files the database file's mode), and
modes left wider by an older version are narrowed, so no other local user can read a key.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def open_db(path: str | Path, *, wal: bool = True, synchronous: str | None = None,
            timeout: float = 5.0, private: bool = False) -> sqlite3.Connection:
    """An autocommit connection to ``path`` usable from any thread; ``wal`` sets
    ``journal_mode=WAL``, ``synchronous`` (``FULL``, ``NORMAL``...) that pragma, ``timeout``
    how long a statement waits for another connection's lock (sqlite3's default 5 s),
    ``private`` owner-only modes for the file, its directory and its WAL."""
    if private:
        make_private(Path(path))
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                         timeout=timeout)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    if synchronous is not None:
        db.execute(f"PRAGMA synchronous={synchronous}")
    return db


def make_private(path: Path) -> None:
    """Create ``path`` (empty) 0600 in a 0700 directory if missing; narrow what exists."""
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path.parent, PRIVATE_DIR)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            os.chmod(p, PRIVATE_FILE)
