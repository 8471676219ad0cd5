"""Admission control's sessions on disk: one JSON row per session in SQLite, so a restart of
the element loses none; terminated ones stay as history."""

from __future__ import annotations

import json
import threading
from typing import Any

from qkdtwin.sqlite import open_db

LIVE = ("accepted", "routing", "active")  # a session in these states holds or awaits a path


class SessionStore:

    def __init__(self, path: str) -> None:
        self._db = open_db(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY,"
                         " state TEXT, body TEXT)")
        self._lock = threading.Lock()

    def save(self, s: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO sessions VALUES (?,?,?)",
                             (s["session_id"], s["state"], json.dumps(s)))

    def live(self) -> list[dict[str, Any]]:
        """Sessions to resume after a restart: live ones and those still terminating."""
        with self._lock:
            rows = self._db.execute("SELECT body FROM sessions WHERE state IN (?,?,?,?)",
                                    (*LIVE, "terminating")).fetchall()
        return [json.loads(r[0]) for r in rows]
