"""Priority queues of key-production jobs, one queue per outgoing link.

When link key is scarce, the job of the highest-priority session runs first; among equal
priorities, a job somebody waits for runs before a prefetch, then first come first served.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True)
class Job:
    sort_key: tuple = field(init=False, repr=False)
    priority: int = field(compare=False)
    prefetch: bool = field(compare=False)
    session_id: str = field(compare=False)
    need_bytes: int = field(compare=False)        # link key bytes the first hop needs
    run: Callable[[], Any] = field(compare=False)
    done: threading.Event = field(default_factory=threading.Event, compare=False)
    result: Any = field(default=None, compare=False)
    error: BaseException | None = field(default=None, compare=False)
    cancelled: bool = field(default=False, compare=False)
    alive: Callable[[], bool] = field(default=lambda: True, compare=False)  # its session


class LinkScheduler:
    """Runs jobs for one link in priority order, each only when the link has enough key."""

    def __init__(self, name: str, available_bytes: Callable[[], int]) -> None:
        self.name = name
        self._available = available_bytes
        self._heap: list[Job] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"sched-{name}")

    def start(self) -> LinkScheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def submit(self, job: Job) -> Job:
        job.sort_key = (-job.priority, job.prefetch, next(self._seq))
        with self._cond:
            heapq.heappush(self._heap, job)
            self._cond.notify_all()
        return job

    def key_arrived(self) -> None:
        """Wake the worker: the pool grew."""
        with self._cond:
            self._cond.notify_all()

    def queued(self) -> list[tuple[int, bool, str]]:
        with self._cond:
            return [(j.priority, j.prefetch, j.session_id) for j in sorted(self._heap)]

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop:
                    # nobody waits for these any more (a session ended): never let them
                    # block the queue
                    while self._heap and (self._heap[0].cancelled or not self._heap[0].alive()):
                        heapq.heappop(self._heap).done.set()
                    if self._heap and self._available() >= self._heap[0].need_bytes:
                        job = heapq.heappop(self._heap)
                        break
                    # poll as well: the pool also grows from the peer's side
                    self._cond.wait(0.05 if self._heap else 1.0)
                else:
                    return
            try:
                job.result = job.run()
            except BaseException as exc:  # reported to whoever waits for the job
                job.error = exc
            finally:
                job.done.set()
