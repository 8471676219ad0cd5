"""Prometheus metrics of a Key Manager (its own registry, served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("qkdtwin_km_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "code"], registry=r)
        self.latency = Histogram("qkdtwin_km_request_seconds", "HTTP request latency",
                                 ["endpoint"], registry=r,
                                 buckets=(.001, .002, .005, .01, .02, .05, .1, .25, 1, 5))
        self.delivered = Counter("qkdtwin_km_keys_delivered", "keys/chunks handed to SAEs",
                                 ["api"], registry=r)
        self.refused = Counter("qkdtwin_km_refused", "key requests refused", ["reason"],
                               registry=r)
        self.relay = Counter("qkdtwin_km_relay_messages", "relay messages by step", ["step"],
                             registry=r)
        self.relay_seconds = Histogram("qkdtwin_km_relay_seconds",
                                       "source-to-destination relay round trip", registry=r,
                                       buckets=(.001, .002, .005, .01, .02, .05, .1, .5))
        self.pool_bits = Gauge("qkdtwin_km_link_pool_bits", "link key available", ["link"],
                               registry=r)
        self.sessions = Gauge("qkdtwin_km_sessions", "sessions by state", ["state"],
                              registry=r)
        self.transitions = Counter("qkdtwin_km_session_transitions",
                                   "session state transitions", ["state"], registry=r)
        self.withdrawn = Counter("qkdtwin_km_keys_withdrawn",
                                 "undelivered keys withdrawn: their route crossed a link under"
                                 " a QBER alarm", ["link", "side"], registry=r)
        self.quarantined = Gauge("qkdtwin_km_link_quarantined",
                                 "1 while a link is under alarm (no relay over it)", ["link"],
                                 registry=r)
