"""Routing Element: owns the topology DB and answers path requests.

Learns nodes and PHYS links from the SDN controller's retained ``qkd/v1/topology``, link
alarms from ``qkd/v1/alarm/#``, and link metrics from the Monitoring Element, which sends
``link_metrics`` messages to ``qkd/v1/routing/in``.

Requests on ``qkd/v1/routing/in``:

* ``path_request`` {session_id, src, dst, rate_bps, exclude_links, reserve?, backup?} →
  ``path`` {ok, path, links, backup, weight, reason}. ``reserve`` (default true when a
  session_id is given) books ``rate_bps`` on every link of the path for that session.
* ``release`` {session_id} → {ok} frees a session's booking.
* ``link_metrics`` {link, skr_bps, qber, stored_bits, rtt_ms, sessions, status}.
* ``topology_view`` → the whole DB (links with metrics, alarms, weights, reservations).

Config: ``db`` (default ``<data_dir>/topology.db``), ``qber_threshold`` (0.11),
``default_capacity_bps`` (1e6), ``stored_ref_bits`` (1e6), ``suspect_penalty`` (4).
"""

from __future__ import annotations

import sys
from typing import Any

from qkdtwin import bus
from qkdtwin import messages as m
from qkdtwin.bus import Message
from qkdtwin.control.common import Element
from qkdtwin.control.topodb import TopologyDB
from qkdtwin.service import run_service


class RoutingElement(Element):
    role = "routing"
    default_port = 9103

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.topo = TopologyDB(
            config.get("db") or self.data_dir / "topology.db",
            qber_threshold=float(config.get("qber_threshold", 0.11)),
            default_capacity_bps=float(config.get("default_capacity_bps", 1e6)),
            stored_ref_bits=float(config.get("stored_ref_bits", 1e6)),
            suspect_penalty=float(config.get("suspect_penalty", 4.0)))

    def setup(self) -> None:
        self.bus.subscribe(bus.ROUTING_IN, self.on_request)
        self.bus.subscribe(bus.TOPOLOGY, self.on_topology)
        self.bus.subscribe(bus.alarm("+"), self.on_alarm)

    def healthz(self) -> dict[str, Any]:
        return {**super().healthz(), "nodes": len(self.topo.nodes),
                "links": len(self.topo.links), "reservations": len(self.topo.reservations)}

    def on_topology(self, topic: str, payload: dict[str, Any], msg: Message) -> None:
        self.count("topology")
        self.topo.set_topology(m.decode(payload, m.Topology).to_payload())
        self.event("topology_updated", nodes=len(self.topo.nodes), links=len(self.topo.links))

    def on_alarm(self, topic: str, payload: dict[str, Any], msg: Message) -> None:
        self.count("alarm")
        alarm = m.decode(payload, m.LinkAlarm)
        link, kind = alarm.link, alarm.kind
        if self.topo.alarms.get(link) == kind or (kind == "clear" and link not in self.topo.alarms):
            return  # retained repeat
        self.topo.set_alarm(link, kind)
        self.event("link_alarm" if kind != "clear" else "link_cleared", link=link, alarm=kind)

    def on_request(self, topic: str, payload: dict[str, Any], msg: Message) -> None:
        kind = payload.get("type")
        self.count(str(kind))
        try:
            req = m.decode_any(payload, m.ROUTING_IN)
        except m.BadMessage as exc:
            if msg.response_topic:  # the asker gets the reason instead of a timeout
                reason = str(exc) if kind in {c.TYPE for c in m.ROUTING_IN} \
                    else f"unknown request type {kind!r}"
                self.bus.reply(msg, m.ErrorReply(reason=reason).to_payload())
            raise
        if isinstance(req, m.PathRequest):
            self.bus.reply(msg, self.path_request(req).to_payload())
        elif isinstance(req, m.Release):
            found = self.topo.release(req.session_id)
            if found:
                self.event("reservation_released", req.session_id)
            if msg.response_topic:
                self.bus.reply(msg, m.Released(ok=True, found=found).to_payload())
        elif isinstance(req, m.LinkMetrics):
            self.topo.set_metrics(req.link, req.to_payload())
            if msg.response_topic:
                self.bus.reply(msg, m.OkReply(ok=True).to_payload())
        elif isinstance(req, m.TopologyViewRequest):
            self.bus.reply(msg, m.TopologyView(ok=True, extra=self.topo.view()).to_payload())

    def path_request(self, req: m.PathRequest) -> m.PathReply:
        sid = req.session_id
        rate = req.rate_bps
        if rate < 0:
            return m.PathReply(ok=False, reason="rate_bps must be a number >= 0")
        reserve = req.reserve if req.reserve is not None else sid is not None
        res = self.topo.find_path(req.src, req.dst, rate, list(req.exclude_links), sid,
                                  reserve=reserve,
                                  backup=req.backup if req.backup is not None else True)
        if res["ok"]:
            self.event("path_computed", sid, path=res["path"], links=res["links"],
                       rate_bps=rate, backup=(res["backup"] or {}).get("path"))
        else:
            self.event("path_refused", sid, src=req.src, dst=req.dst, rate_bps=rate,
                       reason=res["reason"])
        return m.build(m.PathReply, {"session_id": sid, **res})


def main(config: dict[str, Any]) -> None:
    RoutingElement(config).serve_forever()


if __name__ == "__main__":
    sys.exit(run_service(main, "qkdtwin Routing Element"))
