"""How every store of qkdtwin opens its SQLite database (key stores, control elements).

One connection per store, shared by its threads (each store serialises access with its own
lock), in autocommit mode: a store writes with explicit ``BEGIN``/``COMMIT`` where several
rows must change together. WAL lets readers run beside the writer; how durable a commit is
(``synchronous``) is each store's choice and stays where it is set.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_db(path: str | Path, *, wal: bool = True, synchronous: str | None = None,
            timeout: float = 5.0) -> sqlite3.Connection:
    """An autocommit connection to ``path`` usable from any thread; ``wal`` sets
    ``journal_mode=WAL``, ``synchronous`` (``FULL``, ``NORMAL``...) that pragma, ``timeout``
    how long a statement waits for another connection's lock (sqlite3's default 5 s)."""
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                         timeout=timeout)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    if synchronous is not None:
        db.execute(f"PRAGMA synchronous={synchronous}")
    return db
