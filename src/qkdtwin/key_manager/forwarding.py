"""The forwarding table: session → (role, previous hop, next hop).

The control plane sets an entry with ``session_config`` and may change it while the session
lives (``update: true``, e.g. after re-routing); relay reads it for every message.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    role: str            # source | transit | destination
    prev_hop: str | None
    next_hop: str | None


class ForwardingTable:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._cond = threading.Condition()

    def set(self, session_id: str, entry: Entry) -> Entry | None:
        """Install or replace an entry; returns the previous one."""
        with self._cond:
            old = self._entries.get(session_id)
            self._entries[session_id] = entry
            self._cond.notify_all()
            return old

    def get(self, session_id: str) -> Entry | None:
        with self._cond:
            return self._entries.get(session_id)

    def wait(self, session_id: str, timeout: float) -> Entry | None:
        """The entry, waiting up to ``timeout`` s for the control plane to install it."""
        with self._cond:
            self._cond.wait_for(lambda: session_id in self._entries, timeout)
            return self._entries.get(session_id)

    def remove(self, session_id: str) -> Entry | None:
        with self._cond:
            return self._entries.pop(session_id, None)

    def snapshot(self) -> dict[str, Entry]:
        with self._cond:
            return dict(self._entries)
