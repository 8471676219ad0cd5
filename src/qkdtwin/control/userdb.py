"""The user-profile database owned by Access Control (SQLite).

A user has a status, an SLA and applications (SAE IDs, each attached to one KM). The
certificate identity of an application is the lab PKI's: CN = SAE ID, O = user name,
OU = ``sae``; optionally a pinned SHA-256 fingerprint.

Records follow the lab users file (``labs/<lab>.users.yml``)::

    {name, status: active|disabled, sla: {max_priority, max_key_rate, max_key_size,
     max_sessions, allowed_destinations}, applications: [{sae_id, km, fingerprint?}]}
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from qkdtwin.sqlite import open_db

SLA_INT_FIELDS = ("max_priority", "max_key_rate", "max_key_size", "max_sessions")
STATUSES = ("active", "disabled")


class InvalidRecord(ValueError):
    """A user record that does not follow the users-file format."""


def validate_user(rec: Any) -> dict[str, Any]:
    """Check and normalise one user record; raise InvalidRecord with a clear reason."""
    if not isinstance(rec, dict):
        raise InvalidRecord("a user must be a mapping")
    name = rec.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise InvalidRecord("user name must be a non-empty string (max 64 chars)")
    status = rec.get("status", "active")
    if status not in STATUSES:
        raise InvalidRecord(f"user {name}: status must be one of {', '.join(STATUSES)}")
    sla_in = rec.get("sla")
    if not isinstance(sla_in, dict):
        raise InvalidRecord(f"user {name}: sla must be a mapping")
    sla: dict[str, Any] = {}
    for f in SLA_INT_FIELDS:
        v = sla_in.get(f)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise InvalidRecord(f"user {name}: sla.{f} must be a non-negative integer")
        sla[f] = v
    if sla["max_priority"] > 9:
        raise InvalidRecord(f"user {name}: sla.max_priority must be 0..9")
    dests = sla_in.get("allowed_destinations", [])
    if not isinstance(dests, list) or not all(isinstance(d, str) for d in dests):
        raise InvalidRecord(f"user {name}: sla.allowed_destinations must be a list of SAE IDs")
    sla["allowed_destinations"] = dests
    apps_in = rec.get("applications", [])
    if not isinstance(apps_in, list):
        raise InvalidRecord(f"user {name}: applications must be a list")
    apps = []
    for a in apps_in:
        if not isinstance(a, dict) or not isinstance(a.get("sae_id"), str) \
                or not isinstance(a.get("km"), str) or not a["sae_id"] or not a["km"]:
            raise InvalidRecord(f"user {name}: every application needs sae_id and km strings")
        fp = a.get("fingerprint")
        if fp is not None and not isinstance(fp, str):
            raise InvalidRecord(f"user {name}: fingerprint must be a string")
        apps.append({"sae_id": a["sae_id"], "km": a["km"],
                     "fingerprint": fp.lower().replace(":", "") if fp else None})
    return {"name": name, "status": status, "sla": sla, "applications": apps}


class UserDB:
    """Thread-safe SQLite store of users and applications."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = open_db(path)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS users (
                name TEXT PRIMARY KEY, status TEXT NOT NULL, sla TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS applications (
                sae_id TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name),
                km TEXT NOT NULL, fingerprint TEXT);
            """)

    def close(self) -> None:
        self._db.close()

    def upsert(self, rec: dict[str, Any]) -> dict[str, Any]:
        u = validate_user(rec)
        with self._lock:
            for a in u["applications"]:
                row = self._db.execute("SELECT user FROM applications WHERE sae_id=?",
                                       (a["sae_id"],)).fetchone()
                if row and row[0] != u["name"]:
                    raise InvalidRecord(f"SAE {a['sae_id']} already belongs to user {row[0]}")
            self._db.execute("BEGIN")
            try:
                self._db.execute("INSERT OR REPLACE INTO users VALUES (?,?,?)",
                                 (u["name"], u["status"], json.dumps(u["sla"])))
                self._db.execute("DELETE FROM applications WHERE user=?", (u["name"],))
                for a in u["applications"]:
                    self._db.execute("INSERT INTO applications VALUES (?,?,?,?)",
                                     (a["sae_id"], u["name"], a["km"], a["fingerprint"]))
                self._db.execute("COMMIT")
            except Exception:
                self._db.execute("ROLLBACK")
                raise
        return u

    def seed(self, users: list[Any], overwrite: bool = False) -> list[str]:
        """Load users from the lab users file; existing users are kept unless ``overwrite``
        (so a user disabled at run time stays disabled across restarts)."""
        added = []
        for rec in users:
            u = validate_user(rec)
            if overwrite or self.get(u["name"]) is None:
                self.upsert(u)
                added.append(u["name"])
        return added

    def set_status(self, name: str, status: str) -> bool:
        if status not in STATUSES:
            raise InvalidRecord(f"status must be one of {', '.join(STATUSES)}")
        with self._lock:
            cur = self._db.execute("UPDATE users SET status=? WHERE name=?", (status, name))
        return cur.rowcount == 1

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT name, status, sla FROM users WHERE name=?",
                                   (name,)).fetchone()
            if not row:
                return None
            apps = self._db.execute(
                "SELECT sae_id, km, fingerprint FROM applications WHERE user=? ORDER BY sae_id",
                (name,)).fetchall()
        return {"name": row[0], "status": row[1], "sla": json.loads(row[2]),
                "applications": [{"sae_id": s, "km": k, "fingerprint": f} for s, k, f in apps]}

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            names = [r[0] for r in self._db.execute("SELECT name FROM users ORDER BY name")]
        return [u for u in (self.get(n) for n in names) if u]

    def application(self, sae_id: str) -> dict[str, Any] | None:
        """The application with its owner's status and SLA, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT a.sae_id, a.user, a.km, a.fingerprint, u.status, u.sla "
                "FROM applications a JOIN users u ON u.name = a.user WHERE a.sae_id=?",
                (sae_id,)).fetchone()
        if not row:
            return None
        return {"sae_id": row[0], "user": row[1], "km": row[2], "fingerprint": row[3],
                "status": row[4], "sla": json.loads(row[5])}
