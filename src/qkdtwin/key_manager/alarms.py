"""Link alarms as a Key Manager sees them (retained ``qkd/v1/alarm/<link>`` from monitoring).

A link under any alarm is *quarantined* at this KM: no relay is sent or accepted over it, and
a relay whose route crossed it is refused, until a ``clear`` for that link arrives. A QBER
alarm (``qber_high``, ``qber_suspicious``: a possible eavesdropper) also makes the KM withdraw
the undelivered keys whose route crossed the link; ``link_down`` does not (the keys that
crossed it before are as safe as they were).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from qkdtwin.messages import LinkAlarm

QUARANTINE = ("link_down", "qber_high", "qber_suspicious")
COMPROMISED = ("qber_high", "qber_suspicious")  # keys that crossed the link are withdrawn
KINDS = (*QUARANTINE, "clear")


@dataclass(frozen=True)
class Alarm:
    link: str
    kind: str
    since: float  # when the link went under alarm (the first non-clear message's ts)
    ts: float  # the latest message's ts

    def describe(self) -> str:
        return (f"link {self.link} is under alarm ({self.kind} since"
                f" {time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(self.since))}Z)")


class BadAlarm(ValueError):
    """An alarm message that cannot be used (logged and ignored)."""


class LinkAlarms:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alarms: dict[str, Alarm] = {}
        self._last_ts: dict[str, float] = {}

    def apply(self, topic_link: str, msg: LinkAlarm) -> tuple[Alarm | None, Alarm | None]:
        """Take one alarm message; returns (before, after) for its link (None = clear), or
        raises BadAlarm. Messages older than the last one seen for the link are ignored
        (the bus may hand two quick messages to its workers out of order): then before is
        after."""
        link, kind, ts = msg.link, msg.kind, msg.ts  # ts: now when the payload had none
        if link != topic_link or not link:
            raise BadAlarm(f"alarm on the topic of {topic_link!r} names link {link!r}")
        if kind not in KINDS:
            raise BadAlarm(f"alarm kind {kind!r} is not one of {', '.join(KINDS)}")
        with self._lock:
            before = self._alarms.get(link)
            if ts < self._last_ts.get(link, float("-inf")):
                return before, before
            self._last_ts[link] = ts
            if kind == "clear":
                self._alarms.pop(link, None)
                return before, None
            after = Alarm(link, kind, before.since if before else ts, ts)
            self._alarms[link] = after
            return before, after

    def get(self, link: str) -> Alarm | None:
        with self._lock:
            return self._alarms.get(link)

    def first_in(self, route: list[str]) -> Alarm | None:
        """The alarm of the first link of ``route`` that is under one, or None."""
        with self._lock:
            for link in route:
                a = self._alarms.get(link)
                if a is not None:
                    return a
        return None

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return {k: a.kind for k, a in self._alarms.items()}
