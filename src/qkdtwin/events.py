"""Recorded bus messages and the timeline model built from them.

The recorder (:mod:`qkdtwin.recorder`) writes one JSON object per line to
``labs/clab-<lab>/events/*.jsonl``::

    {"rx_ts": 1764161000.123, "topic": "qkd/v1/events/km0", "payload": {...}}

``payload`` is the message as published (events: ``type: "event"``, ``ts``, ``element``,
``kind``, ``session_id``...; alarms and the topology as in docs/architecture.md).
:func:`load_events` reads such files back; :func:`build_timeline` turns them into lanes (one
per element, and one per QKD module) and markers of the categories of the paper's Figure 4,
and its sessions table from :func:`fold_sessions` (:mod:`qkdtwin.session_fold`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdtwin.errors import UserError
from qkdtwin.session_fold import SessionFold

PREFIX = "qkd/v1/"

# Marker categories, in legend order, with the label and colour both renderers use.
CATEGORIES: dict[str, tuple[str, str, str]] = {
    # category: (legend label, colour, matplotlib marker) -- colours as in the paper's
    # figure: request and response red, QKD key yellow, relay blue
    "request": ("request arrival", "#d62728", "o"),
    "auth": ("authentication", "#9467bd", "D"),
    "config": ("configuration", "#2ca02c", "s"),
    "qkd_key": ("QKD key available", "#e6b800", "*"),
    "relay": ("relay hop", "#1f77b4", ">"),
    "response": ("response (keys delivered)", "#b00000", "P"),
    "alarm": ("alarm / re-route", "#ff7f0e", "X"),
    "operator": ("operator action", "#6d4c41", "v"),
    "end": ("session end", "#7f7f7f", "|"),
    "error": ("refusal / error", "#000000", "x"),
    "other": ("other", "#bcbd22", "."),
}

_KIND_CATEGORY = {
    # key managers
    "session_request": "request",
    "session_configured": "config",
    "forwarding_update": "config",
    "keys_delivered": "response",
    "key_available": "qkd_key",
    # QKD modules (source qkd:<link>, on their KM's line)
    "qkd_key_flowing": "qkd_key",
    "qkd_block_aborted": "alarm",
    "qkd_eve_changed": "alarm",
    "qkd_peer_lost": "alarm",
    "relay_send": "relay",
    "relay_forward": "relay",
    "relay_receive": "relay",
    "relay_ack": "relay",
    "session_deleted": "end",
    "config_refused": "error",
    # access control
    "auth_accepted": "auth",
    "auth_refused": "error",
    # admission control
    "config_request_received": "request",
    "peer_registered": "request",
    "session_accepted": "auth",
    "path_assigned": "config",
    "config_sent": "config",
    "session_active": "config",
    "session_rerouted": "alarm",
    "reroute_failed": "error",
    "alarm_received": "alarm",
    "session_rejected": "error",
    "session_terminated": "end",
    "deletion_sent": "end",
    "deletion_confirmed": "end",
    # routing, monitoring
    "path_computed": "config",
    "path_refused": "error",
    "link_alarm": "alarm",
    "link_cleared": "alarm",
    "alarm_raised": "alarm",
    "alarm_cleared": "alarm",
    "km_unreachable": "alarm",
}
_STATE_CATEGORY = {"USER_ACCEPTED": "auth", "OPERATIVE": "config", "TERMINATED": "end"}
_CONTROL_ORDER = ("host", "sdn", "access", "admission", "routing", "monitor", "broker")


@dataclass
class Event:
    """One recorded message."""

    ts: float  # the publisher's time (payload ``ts``), else the recorder's
    topic: str
    payload: dict[str, Any]
    rx_ts: float | None = None

    @property
    def channel(self) -> str:
        """``events``, ``alarm``, ``topology``, ``telemetry`` or another topic level."""
        rest = self.topic[len(PREFIX):] if self.topic.startswith(PREFIX) else self.topic
        return rest.split("/", 1)[0]

    @property
    def element(self) -> str:
        e = self.payload.get("element")
        if isinstance(e, str) and e:
            return e
        rest = self.topic[len(PREFIX):] if self.topic.startswith(PREFIX) else self.topic
        parts = rest.split("/")
        if self.channel == "alarm":
            return "monitor"
        return parts[1] if len(parts) > 1 else parts[0]

    @property
    def kind(self) -> str:
        if self.channel == "alarm":
            return f"alarm_{self.payload.get('kind', '?')}"
        return str(self.payload.get("kind") or self.payload.get("type") or self.channel)

    @property
    def session_id(self) -> str | None:
        s = self.payload.get("session_id")
        return s if isinstance(s, str) else None

    @property
    def lane(self) -> str:
        """The timeline line: the element. A QKD module speaks as its node's element (its
        ``source`` is ``qkd:<link>``), so, as in the paper's figure, "QKD key available" is a
        marker on its KM's line."""
        return self.element

    @property
    def from_module(self) -> bool:
        src = self.payload.get("source")
        return isinstance(src, str) and src.startswith("qkd")

    @property
    def category(self) -> str:
        return categorize(self)

    def as_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "rx_ts": self.rx_ts, "topic": self.topic, **self.payload}


def categorize(ev: Event) -> str:
    """The Figure-4 marker category of an event."""
    if ev.channel == "alarm":
        return "alarm"
    kind = ev.kind
    if kind == "session_state":
        return _STATE_CATEGORY.get(str(ev.payload.get("new")), "other")
    if kind in _KIND_CATEGORY:
        return _KIND_CATEGORY[kind]
    if ev.from_module:
        # the QKD module's events: a finished block / new key is "QKD key available"
        if "key" in kind or "block" in kind:
            return "qkd_key"
        if "eve" in kind or "abort" in kind or "qber" in kind:
            return "alarm"
    if kind.startswith("operator_"):
        return "operator"  # dashboard / scenario actions: Eve on, link cut...
    if "relay" in kind:
        return "relay"
    if "alarm" in kind or "reroute" in kind:
        return "alarm"
    if "refused" in kind or "rejected" in kind or "failed" in kind:
        return "error"
    return "other"


def record_line(topic: str, payload: dict[str, Any], rx_ts: float) -> str:
    """One line of a recording (without the newline)."""
    return json.dumps({"rx_ts": round(rx_ts, 6), "topic": topic, "payload": payload},
                      separators=(",", ":"), default=str)


def parse_line(line: str) -> Event | None:
    """An event from one recorded line; None for a blank or malformed line."""
    line = line.strip()
    if not line:
        return None
    try:
        d = json.loads(line)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    if "payload" in d and "topic" in d:
        payload, topic, rx = d["payload"], d["topic"], d.get("rx_ts")
    else:  # a bare event object (e.g. copied from a subscriber's output)
        topic = str(d.get("topic") or f"{PREFIX}events/{d.get('element', '?')}")
        payload, rx = d, None
    if not isinstance(payload, dict) or not isinstance(topic, str):
        return None
    ts = payload.get("ts", rx)
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        if not isinstance(rx, int | float):
            return None
        ts = rx
    return Event(float(ts), topic, payload, float(rx) if isinstance(rx, int | float) else None)


def event_files(path: str | Path) -> list[Path]:
    """The recording files of a path: the file itself, or every ``*.jsonl`` of a directory."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(p.glob("*.jsonl"))
    raise UserError(f"no recorded events at {p}")


def load_events(path: str | Path, *, channels: Iterable[str] | None = ("events", "alarm"),
                skipped: list[str] | None = None) -> list[Event]:
    """Events of a file or directory, sorted by time. ``channels``: which topic kinds to keep
    (None keeps all). Malformed lines are skipped (and listed in ``skipped`` if given)."""
    keep = set(channels) if channels is not None else None
    out: list[Event] = []
    for f in event_files(path):
        with f.open(encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                ev = parse_line(line)
                if ev is None:
                    if line.strip() and skipped is not None:
                        skipped.append(f"{f.name}:{n}")
                    continue
                if keep is None or ev.channel in keep:
                    out.append(ev)
    out.sort(key=lambda e: e.ts)
    return out


# --- the timeline model --------------------------------------------------------------------

@dataclass
class Marker:
    t: float  # seconds since the timeline's t0
    lane: str
    category: str
    kind: str
    session_id: str | None
    label: str
    event: dict[str, Any]


@dataclass
class Timeline:
    t0: float
    lanes: list[str]
    markers: list[Marker]
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return max((m.t for m in self.markers), default=0.0)

    def categories(self) -> list[str]:
        used = {m.category for m in self.markers}
        return [c for c in CATEGORIES if c in used]

    def as_dict(self) -> dict[str, Any]:
        return {
            "t0": self.t0, "lanes": self.lanes, "duration": self.duration,
            "categories": {c: {"label": v[0], "color": v[1]} for c, v in CATEGORIES.items()},
            "sessions": self.sessions,
            "markers": [{"t": round(m.t, 6), "lane": m.lane, "category": m.category,
                         "kind": m.kind, "session_id": m.session_id, "label": m.label,
                         "event": m.event} for m in self.markers],
        }


def lane_order(lanes: Iterable[str]) -> list[str]:
    """Control elements first, then other elements, then the KMs in number order."""
    def key(lane: str) -> tuple[int, str]:
        if lane in _CONTROL_ORDER:
            return (0, f"{_CONTROL_ORDER.index(lane):02d}")
        if lane.startswith("km"):
            return (2, f"{len(lane):03d}{lane}")
        return (1, lane)
    return sorted(set(lanes), key=key)


def _label(ev: Event) -> str:
    p = ev.payload
    bits = [ev.kind]
    if ev.kind == "session_state":
        bits = [f"{p.get('old')} → {p.get('new')}"]
    for k in ("km", "role", "sae_id", "prev_hop", "next_hop", "to_km", "from_km", "path",
              "number", "keys", "link", "alarm", "reason", "api"):
        v = p.get(k)
        if v not in (None, "", []):
            bits.append(f"{k}={'-'.join(v) if isinstance(v, list) else v}")
    return " ".join(str(b) for b in bits)


def key_available_events(telemetry: Iterable[Event]) -> list[Event]:
    """Synthetic ``key_available`` events from telemetry: the moment a KM's link pool (or,
    without KM telemetry, a module's store) first holds key, and again after running dry."""
    out: list[Event] = []
    have: dict[tuple[str, str, str], bool] = {}
    km_sources = {(e.payload.get("node"), e.payload.get("link")) for e in telemetry
                  if e.payload.get("source") == "km"}
    for e in sorted(telemetry, key=lambda x: x.ts):
        p = e.payload
        node, link, src = p.get("node"), p.get("link"), p.get("source")
        if not isinstance(node, str) or not isinstance(link, str):
            continue
        if src != "km" and (node, link) in km_sources:
            continue  # the KM's own pool is what its applications can use
        bits = p.get("pool_bits") if src == "km" else p.get("stored_bits")
        if not isinstance(bits, int | float):
            continue
        k = (node, link, str(src))
        now = bits > 0
        if now and not have.get(k, False):
            out.append(Event(e.ts, f"{PREFIX}events/{node}", {
                "type": "event", "ts": e.ts, "element": node, "kind": "key_available",
                "link": link, "bits": bits, "derived_from": "telemetry"}, e.rx_ts))
        have[k] = now
    return out


def build_timeline(events: Iterable[Event], *, sessions: Iterable[str] | None = None,
                   since: float | None = None, until: float | None = None,
                   t0: float | None = None,
                   elements: Iterable[str] | None = None) -> Timeline:
    """Lanes and markers of the given events (optionally only some sessions, elements or a
    time window; events without a session, such as alarms, are kept when they fall in the
    window)."""
    wanted = set(sessions) if sessions else None
    lanes = set(elements) if elements else None
    chosen = []
    for ev in events:
        if lanes is not None and ev.lane not in lanes:
            continue
        if since is not None and ev.ts < since:
            continue
        if until is not None and ev.ts > until:
            continue
        if wanted is not None and ev.session_id is not None and ev.session_id not in wanted:
            continue
        if wanted is not None and ev.session_id is None and ev.category not in ("alarm",
                                                                               "qkd_key"):
            continue
        chosen.append(ev)
    if not chosen:
        raise UserError("no recorded events in the chosen window/sessions")
    start = t0 if t0 is not None else min(e.ts for e in chosen)
    markers = [Marker(e.ts - start, e.lane, e.category, e.kind, e.session_id, _label(e),
                      e.payload) for e in chosen]
    info = {sid: s.timeline_view(start) for sid, s in fold_sessions(chosen).sessions.items()}
    return Timeline(start, lane_order(m.lane for m in markers), markers, info)


def fold_sessions(events: Iterable[Event], *, live: bool = False) -> SessionFold:
    """The sessions of events (in order) by :class:`qkdtwin.session_fold.SessionFold`."""
    fold = SessionFold(live=live)
    for ev in events:
        if ev.session_id:
            fold.feed(ev.session_id, ev.kind, ev.element, ev.ts, ev.payload)
    return fold
