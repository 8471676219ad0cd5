"""One fold of the event stream into sessions, for every reader of it: the timeline
(:func:`qkdtwin.events.build_timeline`), the dashboard (:class:`qkdtwin.dashboard.state.LiveState`)
and the scenario runner (:func:`qkdtwin.scenario.runner.paths_from_events`).

:class:`SessionFold` takes events in order (a session id, the event's kind, element, time and
payload, as in docs/architecture.md) and keeps one :class:`SessionRecord` per session: what
the control plane and the KMs said about it (applications, user, path and re-routes, the
KMs' forwarding entries, keys delivered, its end). Each reader takes its view of a record:
:meth:`SessionRecord.timeline_view`, :meth:`SessionRecord.live_view`,
:meth:`SessionRecord.path_changes`.

Two ways to read a stream. Recorded (``live=False``): every event with a session id belongs
to that id's one record, so a window of a recording may start in the middle of a session.
Live (``live=True``, the dashboard): a session is opened only by one of its first events
(:data:`OPENING`), and an id that asks again after its session ended opens a new session
(ETSI 014 session ids come from the SAE pair, so they repeat).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The application's request, as the KM (session_request) and admission control saw it.
REQUESTS = ("config_request_received", "session_request")
# Events that can open a session in the live view.
OPENING = (*REQUESTS, "session_accepted", "path_assigned", "session_active",
           "session_configured")
# Admission control's path of a session, and the KMs' forwarding entries of it.
ADMISSION_PATH = ("path_assigned", "session_active", "session_rerouted")
KM_HOPS = ("session_configured", "forwarding_update")
ENDED = ("terminated", "rejected")

_ABSENT: Any = object()  # a live-view key that only exists once something set it


def path_from_hops(by_km: dict[str, dict[str, Any]]) -> list[str] | None:
    """A session's path from its KMs' latest configurations (each knows only its next hop)."""
    src = next((km for km, p in by_km.items() if p.get("role") == "source"), None)
    if src is None:
        return None
    path = [src]
    while len(path) <= len(by_km):
        nxt = (by_km.get(path[-1]) or {}).get("next_hop")
        if not nxt or nxt in path:
            break
        path.append(nxt)
    return path


@dataclass
class SessionRecord:
    """What the events said about one session (times as published)."""

    id: str
    started: Any
    updated: Any
    saes: list[Any] | None = None
    user: Any = None
    api: Any = None
    path: list[Any] | None = None  # admission's path, else the one the KMs' entries give
    links: list[Any] | None = None
    state: str = "requested"  # requested, accepted, active, terminated, rejected
    keys: int = 0  # delivered, counted once per request (not on the slave side)
    reroutes: int = 0
    old_path: list[Any] | None = None
    reason: Any = None
    reroute_link: Any = _ABSENT
    path_from_kms: Any = _ABSENT
    ended: Any = _ABSENT
    hops: dict[str, dict[str, Any]] = field(default_factory=dict)  # KM -> its latest entry
    km_request: dict[str, Any] | None = None  # the first session_request
    last_path: list[Any] | None = None  # the latest ``path`` of any event
    admission_paths: list[tuple[Any, list[str]]] = field(default_factory=list)

    def note(self, kind: Any, element: Any, ts: Any, p: dict[str, Any]) -> None:
        """Take one event of this session."""
        path = p.get("path")
        if isinstance(path, list):
            self.last_path = path
            if kind in ("path_assigned", "session_rerouted"):
                self.admission_paths.append((ts, [str(x) for x in path]))
        if kind == "session_request" and self.km_request is None:
            self.km_request = p
        if kind in REQUESTS and self.saes is None:
            self.saes = [p.get("sae_id"), p.get("peer_sae_id")]
            self.api = self.api or p.get("api")
        elif kind == "session_accepted":
            self.user, self.api = p.get("user"), p.get("api") or self.api
            self.state = "accepted"
        elif kind in ADMISSION_PATH:
            self._admission_path(kind, p)
        elif kind in KM_HOPS and isinstance(element, str):
            self._km_hop(kind, element, p)
        elif kind == "keys_delivered" and p.get("side") != "slave":
            n = p.get("number", 1)
            self.keys += n if isinstance(n, int) else 1
        elif kind in ("session_terminated", "session_rejected"):
            self.state = "terminated" if kind == "session_terminated" else "rejected"
            self.reason, self.ended = p.get("reason"), ts
        elif kind == "session_state" and p.get("new") == "TERMINATED" and self.state != "active":
            self.state, self.reason, self.ended = "terminated", p.get("reason"), ts

    def _admission_path(self, kind: str, p: dict[str, Any]) -> None:
        if isinstance(p.get("path"), list):
            if kind == "session_rerouted":
                self.old_path = p.get("old_path") or self.path
                self.reroutes += 1
                self.reroute_link = p.get("link")
            self.path = p["path"]
        if isinstance(p.get("links"), list):
            self.links = p["links"]
        self.state = "active"

    def _km_hop(self, kind: str, element: str, p: dict[str, Any]) -> None:
        self.hops[element] = p
        derived = path_from_hops(self.hops)
        from_kms = self.path_from_kms is not _ABSENT and self.path_from_kms
        if derived and (self.path is None or from_kms):
            if self.path and derived != self.path and kind == "forwarding_update":
                self.old_path = self.path
                self.reroutes += 1
            self.path, self.path_from_kms = derived, True
        if self.state == "requested":
            self.state = "active"

    # -- the readers' views --

    def live_view(self) -> dict[str, Any]:
        """The dashboard's session (``reroute_link``, ``path_from_kms`` and ``ended`` only
        once set)."""
        out = {"id": self.id, "saes": self.saes, "user": self.user, "api": self.api,
               "path": self.path, "links": self.links, "state": self.state, "keys": self.keys,
               "reroutes": self.reroutes, "old_path": self.old_path, "started": self.started,
               "updated": self.updated, "reason": self.reason}
        for key in ("reroute_link", "path_from_kms", "ended"):
            value = getattr(self, key)
            if value is not _ABSENT:
                out[key] = value
        return out

    @property
    def has_ended(self) -> bool:
        return self.ended is not _ABSENT and bool(self.ended)

    def timeline_view(self, t0: float) -> dict[str, Any]:
        """The timeline's session: times from ``t0``, the applications of the KM's request,
        the latest path any event named, else the one the KMs' entries give."""
        req = self.km_request
        return {"first": self.started - t0, "last": self.updated - t0,
                "path": self.last_path if self.last_path is not None
                else path_from_hops(self.hops),
                "saes": [req.get("sae_id"), req.get("peer_sae_id")] if req is not None else None,
                "api": req.get("api") if req is not None else None, "keys": self.keys}

    def path_changes(self, since: float) -> list[list[str]]:
        """Admission's paths of the session from ``since`` on: the one it had at ``since``
        and every change after (empty without admission events)."""
        seen: list[list[str]] = []
        for ts, path in self.admission_paths:
            if ts < since:
                seen[:] = [path]
            elif not seen or seen[-1] != path:
                seen.append(path)
        return seen


class SessionFold:
    """Sessions of an event stream, fed in order (see the module's docstring)."""

    def __init__(self, *, live: bool = False) -> None:
        self.live = live
        self.sessions: dict[str, SessionRecord] = {}

    def feed(self, sid: str, kind: Any, element: Any, ts: Any,
             payload: dict[str, Any]) -> SessionRecord | None:
        """Take one event of session ``sid``; returns its record (None: the live view
        ignores an event of a session it did not see open)."""
        s = self.sessions.get(sid)
        if self.live:
            if s is not None and kind in REQUESTS and s.state in ENDED:
                s = None  # the same id again: a new session
            if s is None and kind not in OPENING:
                return None
        if s is None:
            s = self.sessions[sid] = SessionRecord(sid, started=ts, updated=ts)
        s.updated = ts
        s.note(kind, element, ts, payload)
        return s

    def forget(self, sid: str) -> None:
        self.sessions.pop(sid, None)
