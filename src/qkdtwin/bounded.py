"""Bounded bookkeeping (security finding L3): every table keyed by something a caller
chooses (a peer SAE name, a topic, a session id) has a maximum size, so that no stream of
distinct names can grow a process's memory without end.

* :class:`LruDict` — a dict that forgets its least recently used entries beyond ``maxlen``.
* :class:`RateGate` — at most one ``allow(key)`` per ``interval_s`` per key, in an LruDict.
* :class:`TokenBuckets` — per-key token buckets (burst, rate), in an LruDict.

Forgetting an entry only costs what the table saved: a cache miss, one more event, a fresh
bucket; never a wrong answer.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruDict(OrderedDict, Generic[K, V]):  # type: ignore[type-arg]
    """An OrderedDict of at most ``maxlen`` entries; setting a key makes it the newest, and
    the oldest are dropped beyond ``maxlen``. Callers hold their own lock."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        super().__setitem__(key, value)
        while len(self) > self.maxlen:
            self.popitem(last=False)

    def touch(self, key: K) -> None:
        """Mark ``key`` as recently used (keeps it longer)."""
        if key in self:
            self.move_to_end(key)


class RateGate:
    """``allow(key)`` is true at most once per ``interval_s`` for each key."""

    def __init__(self, interval_s: float, maxlen: int = 4096) -> None:
        self.interval_s = interval_s
        self._last: LruDict[Hashable, float] = LruDict(maxlen)
        self._lock = threading.Lock()

    def allow(self, key: Hashable, interval_s: float | None = None) -> bool:
        gap = self.interval_s if interval_s is None else interval_s
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < gap:
                return False
            self._last[key] = now
            return True

    def __len__(self) -> int:
        return len(self._last)


class TokenBuckets:
    """A token bucket per key: ``take(key)`` spends one token; ``burst`` tokens at most,
    refilled at ``rate`` per second."""

    def __init__(self, burst: float, rate: float, maxlen: int = 1024) -> None:
        self.burst = burst
        self.rate = rate
        self._b: LruDict[Hashable, tuple[float, float]] = LruDict(maxlen)
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._b.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            ok = tokens >= 1.0
            self._b[key] = (tokens - 1.0 if ok else tokens, now)
            return ok

    def __len__(self) -> int:
        return len(self._b)
