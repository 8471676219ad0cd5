"""What a module measures about its link: block outcomes, rates over a sliding window, and
the real-time factor (emulated link seconds per wall second, divided by time_scale)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class LinkStats:
    def __init__(self, link: str, pulses_per_wall_s: float, block_pulses: int,
                 source_rate_hz: float, window_s: float = 10.0) -> None:
        self.link = link
        self.rate = pulses_per_wall_s
        self.block_pulses = block_pulses
        self.source_rate = source_rate_hz
        self.window = window_s
        self._lock = threading.Lock()
        self._slots: deque[tuple[float, int]] = deque()     # (wall time, slots so far)
        self._blocks: deque[tuple[float, int, int]] = deque()  # (t, secret bits, sifted bits)
        self._slot_total = 0
        self._since = time.monotonic()
        self.connected_since: float | None = None
        self.blocks_ok = 0
        self.blocks_aborted = 0
        self.blocks_failed = 0      # lost (peer gone) or inconsistent blocks
        self.blocks_nokey = 0       # finished, but finite-size bounds leave no secret bits
        self.secret_bits_total = 0
        self.pulses_total = 0   # pulses emitted (Alice) or measured (Bob) since start
        self.last_qber: float | None = None
        self.last_qber_block: int | None = None  # the block that QBER was estimated on
        self.last_block = ""
        self.last_ok = True
        self.registry = CollectorRegistry()
        r = self.registry
        self.m_blocks = Counter("qkdtwin_qkd_blocks", "post-processed blocks", ["result"],
                                registry=r)
        self.m_secret = Counter("qkdtwin_qkd_secret_bits", "secret bits produced", registry=r)
        self.m_sifted = Counter("qkdtwin_qkd_sifted_bits", "sifted signal bits", registry=r)
        self.m_pulses = Counter("qkdtwin_qkd_pulses", "pulses emitted or measured", registry=r)
        self.m_keys = Counter("qkdtwin_qkd_keys_delivered", "keys handed to the KM", registry=r)
        self.g_qber = Gauge("qkdtwin_qkd_qber", "QBER of the last block", registry=r)
        self.g_rtf = Gauge("qkdtwin_qkd_realtime_factor", "real-time factor", registry=r)
        self.g_stored = Gauge("qkdtwin_qkd_stored_bits", "key bits held for the KM", registry=r)
        self.g_eve = Gauge("qkdtwin_qkd_eve_fraction", "intercepted fraction", registry=r)
        self.g_peer = Gauge("qkdtwin_qkd_peer_connected", "1 when the peer is connected",
                            registry=r)

    # -- inputs --

    def session_started(self) -> None:
        with self._lock:
            self.connected_since = time.monotonic()
            self._slots.clear()
            self._slot_total = 0
        self.g_peer.set(1)

    def session_ended(self) -> None:
        with self._lock:
            self.connected_since = None
        self.g_peer.set(0)

    def pulses(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.pulses_total += n
            self._slot_total += n
            self._slots.append((now, self._slot_total))
            while self._slots and now - self._slots[0][0] > self.window:
                self._slots.popleft()
        self.m_pulses.inc(n)

    def block(self, secret_bits: int, sifted_bits: int, qber: float | None,
              outcome: str, block_id: int | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            if outcome == "ok":
                self.blocks_ok += 1
            elif outcome == "aborted":
                self.blocks_aborted += 1
            elif outcome == "nokey":
                self.blocks_nokey += 1
            else:
                self.blocks_failed += 1
            self.secret_bits_total += secret_bits
            self._blocks.append((now, secret_bits, sifted_bits))
            # blocks are post-processed in parallel and a block that gives key takes longer
            # than an aborted one: the figure is the newest block's, not the last to finish
            if qber is not None and (block_id is None or self.last_qber_block is None
                                     or block_id >= self.last_qber_block):
                self.last_qber, self.last_qber_block = qber, block_id
            self.last_block = outcome
        self.m_blocks.labels(outcome.split(":")[0]).inc()
        self.m_secret.inc(secret_bits)
        self.m_sifted.inc(sifted_bits)
        if qber is not None and self.last_qber_block == block_id:
            self.g_qber.set(qber)

    # -- figures --

    def _span(self, now: float) -> float:
        start = self.connected_since if self.connected_since is not None else self._since
        return max(min(self.window, now - start), 1e-9)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            while self._blocks and now - self._blocks[0][0] > self.window:
                self._blocks.popleft()
            span = self._span(now)
            secret = sum(b[1] for b in self._blocks)
            sifted = sum(b[2] for b in self._blocks)
            n_blocks = len(self._blocks)
            rtf = 0.0
            if self.connected_since is not None and len(self._slots) >= 2:
                (t0, s0), s1 = self._slots[0], self._slots[-1][1]
                # the first sample's own pulses came before t0: measure from now back to t0
                rtf = (s1 - s0) / self.rate / max(now - t0, 1e-9) if now > t0 else 0.0
            link_s = n_blocks * self.block_pulses / self.source_rate
            out = {
                "qber": self.last_qber,
                "qber_block": self.last_qber_block,
                "skr_bps": secret / span,
                "sifted_bps": sifted / span,
                "realtime_factor": round(min(rtf, 10.0), 4),
                "skr_link_bps": secret / link_s if link_s else 0.0,
                "blocks_ok": self.blocks_ok,
                "blocks_aborted": self.blocks_aborted,
                "blocks_failed": self.blocks_failed,
                "blocks_nokey": self.blocks_nokey,
                "secret_bits_total": self.secret_bits_total,
                "last_block": self.last_block,
            }
        self.g_rtf.set(out["realtime_factor"])
        return out
