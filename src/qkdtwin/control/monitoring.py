"""Monitoring Element: link health from telemetry, alarms, metrics for the Routing Element.

Inputs: ``qkd/v1/telemetry/<node>/<link>`` from QKD modules (``source: qkd``: qber, skr_bps,
stored_bits, status, ...) and KMs (``source: km``: pool_bits, sessions, optional rtt_ms), and
the retained ``qkd/v1/topology`` (which PHYS links and KM nodes exist).

Per link, every ``interval_s`` (and on each module sample, for QBER) the element decides:

* ``link_down``  — a link that has reported before is silent for ``stale_s``, its module
  reports status ``down``/``error``/``failed``/``stopped`` (or anything but ``up``, e.g.
  ``connecting``, after having been ``up``), or its key rate fell to 0 after
  having been positive and stayed 0 for ``stale_s``. A link never heard from raises nothing
  (modules need a while for their first block; that is not an outage).
* ``qber_high``  — QBER >= ``qber_threshold`` (0.11: above it BB84 distils no secret key).
* ``qber_suspicious`` — QBER >= intrinsic + ``suspicion_margin`` (0.03) where the link's
  intrinsic QBER is configured (``links: {<id>: {intrinsic_qber}}``, Ansible puts the
  link's misalignment there) or ``suspicion_qber`` is set: an eavesdropper intercepting a
  fraction f adds about f/4, so this catches partial intercept-resend well below 0.11.
* ``clear`` — after ``clear_after`` consecutive healthy checks.

Alarms are published retained on ``qkd/v1/alarm/<link>`` (republished after a reconnect)
and as events. Metrics go to the Routing Element as ``link_metrics`` messages on
``qkd/v1/routing/in`` every round. Classical RTT: the element runs on its own node and cannot
reach the p2p links, so it measures the TCP handshake time to each KM's mgmt address
(``rtt_port``, 8443; then a clean mTLS ``GET /healthz`` with the node certificate unless
``rtt_tls: false``) as the control-channel RTT (``/metrics``, ``km_unreachable`` events) and
forwards a link's RTT only when KMs report ``rtt_ms`` in their telemetry.

Who a sample is from (finding M1): the broker's ACL lets a node write only under
``telemetry/<its node>/``, so the node and the link are taken from the topic, never from the
payload. A sample is refused (logged and dropped by the bus, with its reason) when its payload
names another node or link than its topic, when the link is not a PHYS link of the retained
topology, or when the topic's node does not end that link: one KM cannot raise or clear an
alarm on a link it does not end, and only the topology's links are ever tracked (the state
is bounded by the topology). The periodic loops survive any error of one link's round.
"""


from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
import time
from typing import Any

from prometheus_client import Gauge

from qkdtwin import bus
from qkdtwin import messages as m
from qkdtwin.bus import Message
from qkdtwin.control.common import Element
from qkdtwin.service import run_service
from qkdtwin.sqlite import open_db

log = logging.getLogger("qkdtwin.control.monitoring")
TELEMETRY_PREFIX = bus.telemetry("", "")[:-1]  # "qkd/v1/telemetry/"
DOWN_STATUS = ("down", "error", "failed", "stopped")
SEVERITY = {"clear": 0, "qber_suspicious": 1, "qber_high": 2, "link_down": 3}


class LinkState:
    def __init__(self) -> None:
        self.last_seen: float | None = None
        self.qber: float | None = None
        self.skr: float | None = None
        self.stored: float | None = None
        self.status: str | None = None
        self.ever_positive = False
        self.ever_up = False
        self.zero_since: float | None = None
        self.pool: dict[str, float] = {}
        self.sessions: int | None = None
        self.rtt_ms: float | None = None
        self.healthy_checks = 0


class Monitoring(Element):
    role = "monitoring"
    default_port = 9105

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.threshold = float(config.get("qber_threshold", 0.11))
        self.margin = float(config.get("suspicion_margin", 0.03))
        self.suspicion_abs = config.get("suspicion_qber")
        self.link_cfg: dict[str, Any] = config.get("links") or {}
        self.stale_s = float(config.get("stale_s", 15))
        self.interval_s = float(config.get("interval_s", 2))
        self.clear_after = int(config.get("clear_after", 2))
        self.rtt_port = int(config.get("rtt_port", 8443))
        self.rtt_interval_s = float(config.get("rtt_interval_s", 10))
        b = config["broker"]
        self.probe_tls = probe_context(b.get("ca"), b.get("cert"), b.get("key")) \
            if config.get("rtt_tls", True) else None
        self.lock = threading.RLock()
        self.links: dict[str, LinkState] = {}
        self.topo_links: dict[str, frozenset[str]] = {}  # PHYS link -> the nodes it ends at
        self.kms: dict[str, str | None] = {}
        self.km_rtt: dict[str, float | None] = {}
        self._db = open_db(config.get("db") or self.data_dir / "monitoring.db", wal=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS alarms (link TEXT PRIMARY KEY, kind TEXT,"
                         " body TEXT)")
        self.alarms: dict[str, dict[str, Any]] = {
            lk: json.loads(b) for lk, _, b in self._db.execute("SELECT * FROM alarms")}
        self.g_qber = Gauge("qkdtwin_monitor_link_qber", "last QBER", ["link"],
                            registry=self.registry)
        self.g_skr = Gauge("qkdtwin_monitor_link_skr_bps", "last secret key rate", ["link"],
                           registry=self.registry)
        self.g_alarm = Gauge("qkdtwin_monitor_link_alarm",
                             "0 ok, 1 suspicious, 2 qber high, 3 down", ["link"],
                             registry=self.registry)
        self.g_rtt = Gauge("qkdtwin_monitor_km_rtt_ms", "TCP handshake time to a KM", ["node"],
                           registry=self.registry)

    def suspicion_level(self, link: str) -> float | None:
        if self.suspicion_abs is not None:
            return float(self.suspicion_abs)
        intrinsic = (self.link_cfg.get(link) or {}).get("intrinsic_qber")
        return None if intrinsic is None else float(intrinsic) + self.margin

    # -- lifecycle --

    def setup(self) -> None:
        self.bus.subscribe(bus.telemetry("+", "+"), self.on_telemetry)
        self.bus.subscribe(bus.TOPOLOGY, self.on_topology)
        self.bus.on_connected(self.republish_alarms)
        threading.Thread(target=self._loop, daemon=True, name="monitor-loop").start()
        threading.Thread(target=self._rtt_loop, daemon=True, name="monitor-rtt").start()

    def healthz(self) -> dict[str, Any]:
        return {**super().healthz(), "links": len(self.links),
                "alarms": {k: v["kind"] for k, v in self.alarms.items()}}

    def republish_alarms(self) -> None:
        for link, body in list(self.alarms.items()):
            try:  # a row written by an older version may lack fields: send it as it is
                body = m.build(m.LinkAlarm, body).to_payload()
            except m.BadMessage:
                body = dict(body)
            self.bus.publish(bus.alarm(link), body, retain=True)

    # -- inputs --

    def on_topology(self, topic: str, p: dict[str, Any], msg: Message) -> None:
        topo = m.decode(p, m.Topology)
        links = {str(lk["id"]): frozenset((str(lk.get("a")), str(lk.get("b"))))
                 for lk in topo.links if isinstance(lk, dict) and "id" in lk
                 and lk.get("type", "PHYS") == "PHYS"}
        with self.lock:
            self.topo_links = links
            self.kms = {n["id"]: n.get("mgmt_ipv4") for n in topo.nodes
                        if isinstance(n, dict) and "id" in n}
            for gone in set(self.links) - set(links):  # only the topology's links are kept
                self.links.pop(gone, None)

    def sender(self, topic: str, t: m.ModuleTelemetry | m.KmTelemetry) -> tuple[str, str]:
        """(node, link) of a sample, from its topic (bound to the publisher by the broker's
        ACL); BadMessage when the payload or the topology disagree."""
        rest = topic[len(TELEMETRY_PREFIX):] if topic.startswith(TELEMETRY_PREFIX) else ""
        node, _, link = rest.partition("/")
        if not node or not link or "/" in link:
            raise m.BadMessage(f"telemetry on an unexpected topic {topic!r}", "telemetry")
        if t.link != link or (t.node and t.node != node):
            raise m.BadMessage(f"telemetry of node {t.node!r} link {t.link!r} published on"
                               f" the topic of node {node!r} link {link!r}", "telemetry")
        with self.lock:
            ends = self.topo_links.get(link)
        if ends is None:
            raise m.BadMessage(f"telemetry of link {link!r}, not a PHYS link of the topology",
                               "telemetry")
        if node not in ends:
            raise m.BadMessage(f"telemetry of link {link!r} from node {node!r}, which does not"
                               " end it", "telemetry")
        return node, link

    def on_telemetry(self, topic: str, p: dict[str, Any], msg: Message) -> None:
        t = m.decode_telemetry(p)
        node, link = self.sender(topic, t)
        self.count("telemetry")
        now = time.time()
        with self.lock:
            st = self.links.setdefault(link, LinkState())
            if isinstance(t, m.KmTelemetry):
                if t.pool_bits is not None:
                    st.pool[node] = t.pool_bits
                if t.sessions is not None:
                    st.sessions = t.sessions
                if t.rtt_ms is not None:
                    st.rtt_ms = t.rtt_ms
                return
            st.last_seen = now
            if t.qber is not None:
                st.qber = t.qber
                self.g_qber.labels(link).set(st.qber)
            if t.skr_bps is not None:
                st.skr = t.skr_bps
                self.g_skr.labels(link).set(st.skr)
                if st.skr > 0:
                    st.ever_positive, st.zero_since = True, None
                elif st.zero_since is None:
                    st.zero_since = now
            if t.stored_bits is not None:
                st.stored = t.stored_bits
            st.status = t.status
            st.ever_up = st.ever_up or st.status == "up"
        # QBER alarms right away: every second of delay is key from a tapped link
        self.evaluate(link, now, immediate=True)

    # -- decisions --

    def classify(self, link: str, st: LinkState, now: float) -> tuple[str, str]:
        """(alarm kind or 'clear', why)."""
        if st.last_seen is not None and now - st.last_seen > self.stale_s:
            return "link_down", f"no telemetry for {now - st.last_seen:.0f} s"
        if st.status in DOWN_STATUS or (st.ever_up and st.status not in ("up", None)):
            return "link_down", f"module status {st.status}"
        if st.ever_positive and st.zero_since and now - st.zero_since > self.stale_s:
            return "link_down", f"secret key rate 0 for {now - st.zero_since:.0f} s"
        if st.qber is not None and st.qber >= self.threshold:
            return "qber_high", f"QBER {st.qber:.4f} >= {self.threshold}"
        level = self.suspicion_level(link)
        if st.qber is not None and level is not None and st.qber >= level:
            return "qber_suspicious", f"QBER {st.qber:.4f} >= {level:.4f}"
        return "clear", "healthy"

    def evaluate(self, link: str, now: float, immediate: bool = False) -> None:
        with self.lock:
            st = self.links.get(link)
            if st is None:
                return
            kind, why = self.classify(link, st, now)
            current = self.alarms.get(link, {}).get("kind", "clear")
            if kind == current:
                st.healthy_checks = 0
                return
            if SEVERITY[kind] < SEVERITY[current]:
                # clearing or downgrading needs clear_after better periodic checks in a row
                if immediate:
                    return
                st.healthy_checks += 1
                if st.healthy_checks < self.clear_after:
                    return
            st.healthy_checks = 0
            body = m.LinkAlarm(link=link, kind=kind, qber=st.qber, threshold=self.threshold,
                               suspicion=self.suspicion_level(link), reason=why,
                               skr_bps=st.skr).to_payload()
            if kind == "clear":
                self.alarms.pop(link, None)
                self._db.execute("DELETE FROM alarms WHERE link=?", (link,))
            else:
                self.alarms[link] = body
                self._db.execute("INSERT OR REPLACE INTO alarms VALUES (?,?,?)",
                                 (link, kind, json.dumps(body)))
            self.g_alarm.labels(link).set(SEVERITY[kind])
        self.bus.publish(bus.alarm(link), dict(body), retain=True)
        self.event("alarm_raised" if kind != "clear" else "alarm_cleared", link=link,
                   alarm=kind, reason=why, qber=st.qber)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = time.time()
            with self.lock:
                names = list(self.links)
            for link in names:
                try:  # one link's failure must not end link-down detection for all
                    self.evaluate(link, now)
                    self.send_metrics(link)
                except Exception:
                    log.exception("monitoring round of link %s failed", link,
                                  extra={"link": link})

    def send_metrics(self, link: str) -> None:
        with self.lock:
            st = self.links.get(link)
            if st is None:
                return
            stored = min(st.pool.values()) if st.pool else st.stored
            alarm = self.alarms.get(link, {}).get("kind")
            body = m.LinkMetrics(link=link, skr_bps=st.skr, qber=st.qber, stored_bits=stored,
                                 rtt_ms=st.rtt_ms, sessions=st.sessions,
                                 status="down" if alarm == "link_down" else "up")
        self.bus.publish(bus.ROUTING_IN, body.to_payload())

    def _rtt_loop(self) -> None:
        while not self._stop.wait(self.rtt_interval_s):
            with self.lock:
                targets = {n: a for n, a in self.kms.items() if a}
            for node, addr in targets.items():
                try:
                    self._probe(node, addr)
                except Exception:
                    log.exception("RTT probe of %s failed", node, extra={"node": node})

    def _probe(self, node: str, addr: str) -> None:
        rtt = tcp_rtt_ms(addr, self.rtt_port, self.probe_tls)
        was = self.km_rtt.get(node, 0.0)
        self.km_rtt[node] = rtt
        if rtt is None:
            self.g_rtt.labels(node).set(-1)
            if was is not None:
                self.event("km_unreachable", node=node, addr=addr, port=self.rtt_port)
        else:
            self.g_rtt.labels(node).set(rtt)
            if was is None:
                self.event("km_reachable", node=node, rtt_ms=round(rtt, 3))


def tcp_rtt_ms(host: str, port: int, tls: ssl.SSLContext | None = None,
               timeout: float = 2.0) -> float | None:
    """TCP handshake time in ms, or None when the port does not answer. With ``tls`` the
    probe then completes a TLS handshake and a ``GET /healthz`` and closes cleanly, so the
    KM does not log a dropped handshake for every probe."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            rtt = (time.perf_counter() - t0) * 1000.0
            if tls is not None:
                with tls.wrap_socket(raw, server_hostname=host) as s:
                    s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n"
                              "Connection: close\r\n\r\n".encode())
                    while s.recv(4096):
                        pass
            return rtt
    except (OSError, ssl.SSLError):
        return None


def probe_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """Client TLS context of the probe (the element's node identity), if it has one."""
    if not (ca and cert and key):
        return None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def main(config: dict[str, Any]) -> None:
    Monitoring(config).serve_forever()


if __name__ == "__main__":
    sys.exit(run_service(main, "qkdtwin Monitoring Element"))
