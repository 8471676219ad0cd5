"""The two ends of a `statistical` link (qkdtwin.quantum.statistical).

Everything but the quantum layer is the `bb84` engine's: sessions, the classical connection
and its post-processing messages (from `estimate` on; there is no `sift`), the key store,
ETSI 014 IDs, telemetry. On the quantum connection Alice sends one `sifted` message per
block, paced in link time: Bob's half of the drawn block (class labels, his bits with the
channel's errors, the counts). Alice keeps her half for the post-processing.
"""

from __future__ import annotations

import queue
import time

import numpy as np

from qkdtwin.qkd_module.endpoint import Endpoint, PeerGone
from qkdtwin.qkd_module.engine import Alice, Bob, BobSession
from qkdtwin.qkd_module.framing import FramedSocket, FrameError
from qkdtwin.quantum.statistical import SiftedHalf, draw_sifted_block


class StatisticalAlice(Alice):
    """Side a: draws each block when its link time has passed and sends Bob his half."""

    def _emit(self, fs_q: FramedSocket, ep: Endpoint, first: int) -> None:
        c = self.cfg
        rng = np.random.default_rng()
        wall = c.block_pulses / c.pulses_per_wall_second
        keep = c.max_inflight_blocks + c.max_queued_blocks + 2
        due = time.monotonic() + wall
        bid = first
        while not self.stop_event.is_set() and not ep.closed.is_set():
            self.current_block = bid
            now = time.monotonic()
            if due > now:
                if self.stop_event.wait(due - now):
                    break
            elif now - due > 1.0:
                due = now  # we fell behind (CPU): do not catch up in a burst
            eve = self.eve_fraction
            block = draw_sifted_block(c.params.replace(eve_fraction=eve), c.block_pulses, rng)
            with self._lock:  # in place before Bob can ask about the block
                self._records[bid] = block.alice  # type: ignore[assignment]
            fs_q.send(block.bob.to_message(bid, eve))
            self.stats.pulses(c.block_pulses)
            bid += 1
            self.store.set_meta("next_block", str(bid))
            # Bob is behind (CPU): wait instead of piling up blocks, as the bb84 source does
            while self._backlog() >= keep and not ep.closed.is_set() \
                    and not self.stop_event.wait(0.01):
                pass
            due += wall
        if ep.closed.is_set():
            raise PeerGone(ep.error)


class StatisticalBob(Bob):
    """Side b: queues each received block for the post-processing workers."""

    def _receive(self, s: BobSession, eve_cell: list) -> None:
        expected = s.first_block
        try:
            while not s.dead.is_set():
                msg = s.quantum.recv()  # type: ignore[union-attr]
                if msg.get("type") != "sifted":
                    raise FrameError(f"unexpected {msg.get('type')!r} on the quantum channel"
                                     " of a statistical link")
                bid, eve = int(msg["block"]), float(msg["eve"])
                if bid != expected:
                    raise FrameError(f"block {bid} arrived, {expected} expected")
                if not 0.0 <= eve <= 1.0:
                    raise FrameError(f"eve fraction {eve!r} out of range [0, 1]")
                half = SiftedHalf.from_message(msg)
                self.current_block = bid
                if eve != self.eve_fraction:
                    self.eve_since_block = bid
                self.eve_fraction = eve
                self.stats.pulses(s.block_pulses)
                with s.open_lock:
                    s.open.add(bid)
                while not s.dead.is_set():  # a full queue blocks Alice: backpressure
                    try:
                        s.queue.put((bid, half), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                expected += 1
        except (FrameError, OSError, ValueError, KeyError) as exc:
            self._end(s, f"quantum channel: {exc}")
