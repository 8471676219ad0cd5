"""The two ends of an `analytic` link (qkdtwin.quantum.analytic): no pulses, no post-processing.

The session is the same pair of connections as for `bb84` (engine.py), so a cut, a restart
or a refused peer behave the same. On the quantum connection (mutual TLS) Alice sends one
message, a fresh random seed; it then only tells that the link is up. Every block's link
time Alice sends `analytic_block` (block id, Eve's fraction) on the classical connection;
both ends compute the block's outcome from the same `vars.qkd`, store the same key derived
from the seed, and record the same telemetry. Key IDs, ETSI 014 and pending blocks work as
for `bb84`.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from qkdtwin.qkd_module.endpoint import Endpoint, PeerGone
from qkdtwin.qkd_module.engine import PP_TIMEOUT_S, Alice, Bob, BobSession
from qkdtwin.qkd_module.framing import FramedSocket, FrameError
from qkdtwin.qkd_module.statistical_engine import StatisticalAlice, StatisticalBob
from qkdtwin.quantum.analytic import (
    SEED_BYTES,
    AnalyticBlock,
    AnalyticBlocks,
    block_key,
    block_rng,
)

SEED_WAIT_S = 10.0


def _outcome(block: AnalyticBlock, key: bytes) -> str:
    return "ok" if key else ("aborted" if block.aborted else "nokey")


class AnalyticAlice(Alice):
    """Side a: paces the blocks in link time and announces each to Bob."""

    def _emit(self, fs_q: FramedSocket, ep: Endpoint, first: int) -> None:
        c = self.cfg
        seed = secrets.token_bytes(SEED_BYTES)
        fs_q.send({"type": "seed", "seed": seed.hex()})
        model = AnalyticBlocks(c.params, c.block_pulses)
        wall = c.block_pulses / c.pulses_per_wall_second
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
            out = model.outcome(eve, block_rng(seed, bid))
            key = block_key(seed, bid, out.secret_bits)
            if key:  # stored before Bob learns of the block, ready once he has it
                self.store.add_block(bid, key, ready=False)
            self.store.set_meta("next_block", str(bid + 1))
            self.stats.pulses(c.block_pulses)
            ep.request({"type": "analytic_block", "block": bid, "eve": eve},
                       timeout=PP_TIMEOUT_S)
            if key:
                self.store.resolve_pending([bid], [bid])
            self._record_block(bid, len(key) * 8, out.sifted_bits, out.qber,
                               _outcome(out, key), out.reason)
            bid += 1
            due += wall
        if ep.closed.is_set():
            raise PeerGone(ep.error)


class AnalyticBob(Bob):
    """Side b: takes the session's seed, then stores each announced block's key."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._model = AnalyticBlocks(self.cfg.params, self.cfg.block_pulses)
        self._seeds: dict[str, bytes] = {}   # session id -> seed (the newest session's)
        self._seeded = threading.Condition()

    def _start_receiving(self, s: BobSession) -> None:
        fs = s.quantum
        assert fs is not None
        fs.sock.settimeout(SEED_WAIT_S)
        msg = fs.recv()
        fs.sock.settimeout(None)
        seed = bytes.fromhex(str(msg.get("seed", ""))) if msg.get("type") == "seed" else b""
        if len(seed) != SEED_BYTES:
            raise FrameError(f"expected the analytic link's seed, got {msg.get('type')!r}")
        with self._seeded:
            self._seeds = {s.sid: seed}
            self._seeded.notify_all()

    def _seed_of(self, s: BobSession) -> bytes:
        with self._seeded:
            if not self._seeded.wait_for(lambda: s.sid in self._seeds, SEED_WAIT_S):
                raise ValueError("no seed on the quantum connection of this session")
            return self._seeds[s.sid]

    def _handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("type") != "analytic_block":
            return super()._handle(msg)
        s = self._session
        if s is None:
            raise ValueError("no session")
        seed = self._seed_of(s)
        bid, eve = int(msg["block"]), float(msg["eve"])
        if not 0.0 <= eve <= 1.0:
            raise ValueError(f"eve fraction {eve!r} out of range [0, 1]")
        self.current_block = bid
        if eve != self.eve_fraction:
            self.eve_since_block = bid
        self.eve_fraction = eve
        out = self._model.outcome(eve, block_rng(seed, bid))
        key = block_key(seed, bid, out.secret_bits)
        if key:
            self.store.add_block(bid, key, ready=True)
        self.stats.pulses(self.cfg.block_pulses)
        self._record_block(bid, len(key) * 8, out.sifted_bits, out.qber, _outcome(out, key),
                           out.reason)
        return {"type": "analytic_block_reply"}


def engine_class(model: str, alice: bool) -> type[Alice] | type[Bob]:
    """The engine of one link end for the link's model."""
    engines = {"analytic": (AnalyticAlice, AnalyticBob),
               "statistical": (StatisticalAlice, StatisticalBob)}
    a, b = engines.get(model, (Alice, Bob))
    return a if alice else b
