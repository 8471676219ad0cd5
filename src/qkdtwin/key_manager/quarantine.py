"""Link alarms at the Key Manager: quarantine (no relay over a link under alarm, state in
``alarms.LinkAlarms``) and withdrawal of the undelivered keys whose route crossed a link
under a QBER alarm (docs/architecture.md, "Key Manager as built")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from qkdtwin.key_manager.alarms import COMPROMISED, BadAlarm
from qkdtwin.key_manager.keystore import Withdrawal
from qkdtwin.key_manager.sessions import Session
from qkdtwin.key_manager.shared import Part, Shared
from qkdtwin.messages import LinkAlarm

log = logging.getLogger("qkdtwin.key_manager")


def withdrawn_message(what: str, w: Withdrawal) -> str:
    """The answer's text for a key an application asks for after it was withdrawn."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(w.since))
    return (f"{what} was withdrawn: it crossed link {w.link}, under alarm ({w.kind}) since"
            f" {since}Z")


class Quarantine(Part):
    def __init__(self, sh: Shared, refill: Callable[[Session], None]) -> None:
        super().__init__(sh)
        self.refill = refill  # the source's prefetch after a withdrawal

    def on_alarm(self, topic: str, msg: LinkAlarm) -> None:
        """A retained ``alarm`` from monitoring (docs/architecture.md, Key Manager)."""
        try:
            before, after = self.alarms.apply(topic.rsplit("/", 1)[-1], msg)
        except BadAlarm as exc:
            log.warning("ignoring alarm: %s", exc, extra={"topic": topic})
            return
        link = topic.rsplit("/", 1)[-1]
        if after is not None and (before is None or before.kind != after.kind):
            log.warning("%s: no relay over it until it clears", after.describe())
            self.control.event("link_quarantined", None, link=link, alarm=after.kind,
                               since=after.since, reason=msg.reason)
        elif after is None and before is not None:
            log.info("alarm of link %s cleared: relays over it again", link)
            self.control.event("link_released", None, link=link, alarm="clear",
                               was=before.kind)
            self.retries.clear()  # pending relays waiting for this link: try again soon
        if link in self.pools:
            self.metrics.quarantined.labels(link=link).set(0 if after is None else 1)
        if after is not None and after.kind in COMPROMISED:
            # also on a repeated message (e.g. a restarted KM gets the retained alarm): keys
            # stored before, or while this KM was down, go too
            self.withdraw(self.store.withdraw_route(link, after.kind, after.since))

    def withdraw(self, ws: list[Withdrawal]) -> None:
        """Account for keys the store has just withdrawn: ready counts, metrics, one event
        per session and side, and a refill of the source's prefetch (over the new path once
        admission has re-routed the session)."""
        if not ws:
            return
        groups: dict[tuple[str, str, str], list[Withdrawal]] = {}
        for w in ws:
            groups.setdefault((w.session_id, w.side, w.link), []).append(w)
        refill = []
        for (sid, side, link), g in groups.items():
            idxs = sorted(w.idx for w in g)
            s = self.sessions.get(sid)
            if s is not None and side == "src":
                for size in {w.size for w in g}:
                    self.ready.add(s, size, -sum(1 for w in g if w.size == size))
                refill.append(s)
            self.metrics.withdrawn.labels(link=link, side=side).inc(len(g))
            log.warning("withdrew %d undelivered key(s): they crossed link %s (%s)", len(g),
                        link, g[0].kind, extra={"session_id": sid})
            self.control.event("keys_withdrawn", sid, link=link, alarm=g[0].kind, side=side,
                               count=len(g), first_index=idxs[0], last_index=idxs[-1],
                               indexes=idxs[:64], api=s.api if s else None)
        self.sh.notify_arrivals()  # GET_KEY waiting for a withdrawn index: look again
        for s in refill:
            self.refill(s)
