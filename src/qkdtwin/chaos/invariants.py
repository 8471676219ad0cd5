"""The invariants of a chaos soak and their checker.

Records in (what the applications received, what the KMs' stores say they delivered and
withdrew, the alarms monitoring raised, when relayed keys arrived, the sessions and processes
left at the end), violations out. Nothing here talks to a lab, so the checker can be fed
synthetic records (tests/unit/test_chaos_invariants.py).

The invariants:

- ``identical``: a key both applications of a pair received (same key ID; ETSI 004:
  ``<stream>:<index>``) has the same value at both ends, and the two ends are the pair's;
- ``delivered_once``: no application receives a key ID twice, no key value comes under two
  key IDs, no key is delivered on the same side by two KMs;
- ``after_alarm``: no key whose route crossed a link is delivered while that link is under a
  QBER alarm (``qber_high``/``qber_suspicious``: possibly eavesdropped) or after it, if the
  key was held at the KM when the alarm was raised: such keys must be withdrawn. A delivery
  within ``grace_s`` of the alarm's raise is counted as ``within_grace`` (the alarm is still
  on its way to the KMs), not as a violation. ``link_down`` alarms withdraw nothing (the
  keys that crossed the link before are as safe as they were; docs/architecture.md);
- ``session_stuck``: every ETSI 004 stream the applications closed is gone from every KM; no
  KM holds a session waiting for admission (USER_ACCEPTED) or in a key exchange
  (KEY_EXCHANGING) once the traffic has stopped; every application thread returned;
- ``process_leaked``: after teardown no namespace or process of the lab is left.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

COMPROMISED = ("qber_high", "qber_suspicious")  # as key_manager.alarms.COMPROMISED
INVARIANTS = ("identical", "delivered_once", "after_alarm", "session_stuck", "process_leaked")
STUCK_STATES = ("USER_ACCEPTED", "KEY_EXCHANGING")
MAX_LISTED = 50  # violations listed per invariant (all are counted)


@dataclass(frozen=True)
class AppKey:
    """One key an application received."""

    pair: str      # e.g. "014 sae-0>sae-1"
    api: str       # "014" or "004"
    key_id: str    # ETSI 014 key_ID; ETSI 004 "<key_stream_id>:<index>"
    end: str       # "a": master (014) / source (004); "b": slave / destination
    sae: str
    digest: str    # sha256 of the key's bytes, hex
    sent: float    # epoch s the request was sent (the KM delivered at or after it)
    got: float     # epoch s the answer came


@dataclass(frozen=True)
class KmDelivery:
    """A row of a KM store's ``delivered`` table."""

    km: str
    key_id: str
    side: str      # "src" / "dst"
    session_id: str
    sae: str
    ts: float
    via: tuple[str, ...]  # the links the key crossed


@dataclass(frozen=True)
class KmWithdrawal:
    """A row of a KM store's ``withdrawn`` table."""

    km: str
    key_id: str
    side: str
    session_id: str
    link: str
    kind: str
    since: float
    ts: float


@dataclass(frozen=True)
class AlarmMsg:
    """A message of monitoring on ``alarm/<link>``."""

    link: str
    kind: str
    ts: float


@dataclass(frozen=True)
class KmSession:
    """A session a KM still holds at the end."""

    km: str
    session_id: str
    api: str
    state: str
    live: bool = True  # the KM's state now (/healthz); False: the store's row, whose state
    #                    may be stale (KEY_EXCHANGING <-> OPERATIVE is not written)


@dataclass
class Records:
    app_keys: list[AppKey] = field(default_factory=list)
    deliveries: list[KmDelivery] = field(default_factory=list)
    withdrawals: list[KmWithdrawal] = field(default_factory=list)
    alarms: list[AlarmMsg] = field(default_factory=list)
    arrivals: dict[str, float] = field(default_factory=dict)  # key_id -> first arrival at dst
    streams_closed: set[str] = field(default_factory=set)     # 004 streams the apps closed
    sessions_left: list[KmSession] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)       # app threads that never returned
    leftovers: list[str] = field(default_factory=list)        # namespaces/processes after down


@dataclass
class Verdict:
    violations: dict[str, list[dict[str, Any]]]
    counts: dict[str, int]
    stats: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": self.counts, "stats": self.stats,
                "examples": {k: v for k, v in self.violations.items() if v}}


class _Found:
    def __init__(self) -> None:
        self.lists: dict[str, list[dict[str, Any]]] = {k: [] for k in INVARIANTS}
        self.counts: dict[str, int] = dict.fromkeys(INVARIANTS, 0)

    def add(self, invariant: str, **detail: Any) -> None:
        self.counts[invariant] += 1
        if len(self.lists[invariant]) < MAX_LISTED:
            self.lists[invariant].append(detail)


def check(rec: Records, grace_s: float = 2.0) -> Verdict:
    """Check every invariant on the records."""
    found = _Found()
    stats: dict[str, Any] = {}
    stats.update(_identical(rec, found))
    _delivered_once(rec, found)
    stats.update(_after_alarm(rec, found, grace_s))
    _stuck(rec, found)
    for what in rec.leftovers:
        found.add("process_leaked", what=what)
    return Verdict(found.lists, found.counts, stats)


def _identical(rec: Records, found: _Found) -> dict[str, Any]:
    by_id: dict[str, dict[str, list[AppKey]]] = defaultdict(lambda: {"a": [], "b": []})
    for k in rec.app_keys:
        by_id[k.key_id][k.end].append(k)
    matched = only_a = only_b = 0
    withdrawn_ids = {w.key_id for w in rec.withdrawals}
    only_a_withdrawn = 0
    for kid, ends in by_id.items():
        a, b = ends["a"], ends["b"]
        if a and b:
            matched += 1
            if a[0].digest != b[0].digest:
                found.add("identical", key_id=kid, pair=a[0].pair,
                          detail="the two applications received different values")
            elif a[0].pair != b[0].pair:
                found.add("identical", key_id=kid, pair=f"{a[0].pair} / {b[0].pair}",
                          detail="the key reached an application of another pair")
        elif a:
            only_a += 1
            only_a_withdrawn += kid in withdrawn_ids
        else:
            only_b += 1
    return {"keys_matched": matched, "keys_only_first_end": only_a,
            "keys_only_first_end_withdrawn": only_a_withdrawn, "keys_only_second_end": only_b}


def _delivered_once(rec: Records, found: _Found) -> None:
    seen: dict[tuple[str, str], AppKey] = {}
    for k in rec.app_keys:
        prev = seen.get((k.key_id, k.end))
        if prev is not None:
            found.add("delivered_once", key_id=k.key_id, pair=k.pair, sae=k.sae,
                      detail=f"key ID received twice by the same end ({prev.sae}, {k.sae})")
        else:
            seen[(k.key_id, k.end)] = k
    ids_of: dict[str, set[str]] = defaultdict(set)
    for k in rec.app_keys:
        ids_of[k.digest].add(k.key_id)
    for digest, ids in ids_of.items():
        if len(ids) > 1:
            found.add("delivered_once", key_ids=sorted(ids), digest=digest[:16],
                      detail="the same key value was handed out under several key IDs")
    kms: dict[tuple[str, str], set[str]] = defaultdict(set)
    for d in rec.deliveries:
        kms[(d.key_id, d.side)].add(d.km)
    for (kid, side), where in kms.items():
        if len(where) > 1:
            found.add("delivered_once", key_id=kid, side=side, kms=sorted(where),
                      detail="delivered on the same side by more than one KM")


def compromise_intervals(alarms: list[AlarmMsg]) -> dict[str, list[tuple[float, float]]]:
    """Per link, the [raised, cleared) spans under a QBER alarm (cleared = inf if still on).
    A span starts at the first QBER alarm after a clear and ends at the next clear; other
    kinds in between (e.g. link_down) do not end it."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_link: dict[str, list[AlarmMsg]] = defaultdict(list)
    for a in alarms:
        by_link[a.link].append(a)
    for link, msgs in by_link.items():
        start: float | None = None
        for a in sorted(msgs, key=lambda m: m.ts):
            if a.kind in COMPROMISED and start is None:
                start = a.ts
            elif a.kind == "clear" and start is not None:
                out[link].append((start, a.ts))
                start = None
        if start is not None:
            out[link].append((start, math.inf))
    return dict(out)


def _after_alarm(rec: Records, found: _Found, grace_s: float) -> dict[str, Any]:
    spans = compromise_intervals(rec.alarms)
    via_of: dict[str, tuple[str, ...]] = {}
    for d in rec.deliveries:
        if d.via:
            via_of.setdefault(d.key_id, d.via)
    for w in rec.withdrawals:
        via_of.setdefault(w.key_id, (w.link,))
    # what is checked: every KM delivery (both sides of 004, the slave side of 014) and the
    # master side of 014 as the application saw it (the source KM keeps no record of it)
    checks: list[tuple[str, str, float, tuple[str, ...]]] = [
        (d.key_id, f"{d.km}/{d.side}", d.ts, d.via) for d in rec.deliveries]
    checks += [(k.key_id, f"{k.sae} (master)", k.sent, via_of.get(k.key_id, ()))
               for k in rec.app_keys if k.api == "014" and k.end == "a"]
    n_grace = n_unverifiable = n_no_route = 0
    for kid, who, ts, via in checks:
        if not via:
            n_no_route += 1
            continue
        arrived = rec.arrivals.get(kid)
        for link in via:
            for raised, cleared in spans.get(link, ()):
                if ts < raised:
                    continue
                held = (arrived if arrived is not None else ts) < cleared
                if ts < raised + grace_s:
                    n_grace += held
                elif held:
                    found.add("after_alarm", key_id=kid, at=who, link=link,
                              delivered=round(ts, 3), alarm_raised=round(raised, 3),
                              alarm_cleared=None if math.isinf(cleared) else round(cleared, 3),
                              arrived=None if arrived is None else round(arrived, 3),
                              detail="delivered after the alarm of a link it crossed")
                elif arrived is None:
                    n_unverifiable += 1
    return {"deliveries_checked": len(checks), "after_alarm_within_grace": n_grace,
            "after_clear_arrival_unknown": n_unverifiable, "deliveries_without_route": n_no_route,
            "compromise_spans": sum(len(v) for v in spans.values())}


def _stuck(rec: Records, found: _Found) -> None:
    for s in rec.sessions_left:
        if s.api == "004" and s.session_id in rec.streams_closed:
            found.add("session_stuck", km=s.km, session_id=s.session_id, state=s.state,
                      detail="a key stream both applications closed is still held")
        elif s.live and s.state in STUCK_STATES:
            found.add("session_stuck", km=s.km, session_id=s.session_id, state=s.state,
                      detail=f"still {s.state} after the traffic stopped")
    for name in rec.unfinished:
        found.add("session_stuck", thread=name, detail="an application's request never returned")


def records_summary(rec: Records) -> dict[str, int]:
    return {"app_keys": len(rec.app_keys), "km_deliveries": len(rec.deliveries),
            "km_withdrawals": len(rec.withdrawals), "alarm_messages": len(rec.alarms),
            "arrivals": len(rec.arrivals), "streams_closed": len(rec.streams_closed),
            "sessions_left": len(rec.sessions_left)}
