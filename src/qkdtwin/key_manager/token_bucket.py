"""A token bucket per session: ``size_bits`` of burst, refilled at ``rate_bps``."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    def __init__(self, size_bits: float, rate_bps: float, clock=time.monotonic) -> None:
        self.size = float(size_bits)
        self.rate = float(rate_bps)
        self._clock = clock
        self._tokens = self.size
        self._t = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.size, self._tokens + (now - self._t) * self.rate)
        self._t = now

    def take(self, bits: float) -> bool:
        """Consume ``bits`` if available; False (and nothing consumed) otherwise."""
        with self._lock:
            self._refill()
            if bits <= self._tokens:
                self._tokens -= bits
                return True
            return False

    def give_back(self, bits: float) -> None:
        """Return tokens of a request that was refused further on (no key was handed out)."""
        with self._lock:
            self._tokens = min(self.size, self._tokens + bits)

    def retry_after(self, bits: float) -> float:
        """Seconds until ``bits`` would be available (inf if never: larger than the bucket)."""
        with self._lock:
            self._refill()
            if bits > self.size:
                return float("inf")
            if self.rate <= 0:
                return float("inf") if bits > self._tokens else 0.0
            return max(0.0, (bits - self._tokens) / self.rate)

    def reconfigure(self, size_bits: float, rate_bps: float) -> None:
        with self._lock:
            self._refill()
            self.size, self.rate = float(size_bits), float(rate_bps)
            self._tokens = min(self._tokens, self.size)

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens
