"""What a deployed lab publishes, as the operator sees it on the lab's broker (CN=host):
every event (`qkd/v1/events/+`) and alarm (`qkd/v1/alarm/+`), with the time it arrived.
The Bus reconnects and resubscribes after a broker restart."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

Pred = Callable[[dict[str, Any]], bool]


class LabEvents:
    def __init__(self, sae_lab: Any) -> None:
        """``sae_lab``: a :class:`qkdtwin.labops.lab.DeployedLab` (broker and host identity)."""
        from qkdtwin.bus import Bus

        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self.bus = Bus(sae_lab.broker_config(), f"host-test-{uuid.uuid4().hex[:6]}",
                       workers=1)
        self.bus.subscribe("qkd/v1/events/+", self._on)
        self.bus.subscribe("qkd/v1/alarm/+", self._on)

    def _on(self, topic: str, payload: dict[str, Any], _msg: Any) -> None:
        with self._lock:
            self._items.append({**payload, "_topic": topic, "_rx": time.time()})

    def start(self) -> LabEvents:
        self.bus.start()
        assert self.bus.wait_connected(15), "cannot connect to the lab's broker as host"
        time.sleep(0.3)  # the subscriptions go out right after the connection
        return self

    def stop(self) -> None:
        self.bus.stop()

    # -- queries --

    def where(self, pred: Pred) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._items if pred(e)]

    def find(self, element: str | None = None, kind: str | None = None,
             session_id: str | None = None, since: float = 0.0) -> list[dict[str, Any]]:
        """Events by element, kind, session and publication time (any of them)."""
        return self.where(lambda e: (element is None or e.get("element") == element)
                          and (kind is None or e.get("kind") == kind)
                          and (session_id is None or e.get("session_id") == session_id)
                          and e.get("ts", 0) >= since)

    def of(self, sid: str, kind: str | None = None) -> list[dict[str, Any]]:
        return self.find(kind=kind, session_id=sid)

    def wait(self, pred: Pred, timeout: float, what: str, count: int = 1
             ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.where(pred)
            if len(got) >= count:
                return got
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def path_of(self, sid: str, timeout: float = 30.0) -> list[str]:
        """The session's path: admission's last path_assigned or session_rerouted."""
        ev = self.wait(lambda e: e.get("session_id") == sid and e.get("kind") in (
            "path_assigned", "session_rerouted"), timeout, f"a path for {sid}")
        return ev[-1]["path"]

    # -- alarms --

    def alarms(self, link: str, since: float) -> list[dict[str, Any]]:
        """Alarms (not clears) on ``link`` that arrived since ``since``."""
        return self.where(lambda e: e["_topic"] == f"qkd/v1/alarm/{link}"
                          and e.get("kind") != "clear" and e["_rx"] >= since)

    def active_alarms(self) -> dict[str, str]:
        """Link -> alarm kind of every link whose latest (retained) alarm is not a clear."""
        latest: dict[str, str] = {}
        for e in self.where(lambda e: e["_topic"].startswith("qkd/v1/alarm/")):
            latest[e["_topic"].rsplit("/", 1)[1]] = str(e.get("kind"))
        return {link: kind for link, kind in latest.items() if kind != "clear"}
