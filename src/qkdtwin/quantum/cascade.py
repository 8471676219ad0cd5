"""Cascade information reconciliation, vectorised across blocks, passes and frames.

The variant follows Martinez-Mateo, Pacher, Peev, Ciurana, Martin, "Demystifying the
information reconciliation protocol Cascade" (QIC 15, 2015): small power-of-two first-pass
blocks (~0.7/QBER), a second pass ~4x larger, many cheap final passes of n/2, block parity
inference, and reuse of every parity already disclosed (the cascade effect starts a search
at the smallest block known to hold an odd number of errors, and known sub-block parities
are never asked again).

Two parties:

* Alice holds the reference key and is a *parity oracle*: `ParityOracle.answer(nodes)` returns
  her parities for a batch of node ids. A node is a dyadic sub-block of a block of one pass in
  that pass's (shared, seeded) permutation, so a query is one integer.
* Bob drives: `CascadeBob.run()` calls `ask(nodes) -> parities` once per round trip. All blocks
  of all frames, all binary searches and all cascade searches advance in lockstep, so the
  number of round trips is about passes x (log2 block size + a few), independent of the
  number of errors and frames.

Both build the same `CascadeLayout` from a `CascadePlan` (sizes + seed), which Bob sends
first. Leakage = number of parities Alice disclosed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qkdtwin.quantum import cascade_kernels as kern

ALPHA_FIRST_BLOCK = 0.73


@dataclass(frozen=True)
class CascadePlan:
    """Everything both sides need to build the same layout."""

    n: int                      # bits per frame
    frames: int                 # frames reconciled together
    block_sizes: tuple[int, ...]
    seed: int

    @classmethod
    def for_qber(cls, n: int, frames: int, qber: float, seed: int, *,
                 variant: str = "option7", passes: int | None = None,
                 alpha1: float = 0.7, alpha2: float = 4.0) -> CascadePlan:
        """Block sizes for an estimated QBER.

        `option7` (after Martinez-Mateo et al. 2015; the name is cascade-python's): power-of-two
        blocks so every binary search is balanced, k1 = 2^round(log2(0.7/Q)),
        k2 = 2^round(log2(4/Q)) (2.8/Q below 1.5 % for n < 50000), then n/2; 12 passes below
        3 % QBER at n < 50000, else 16 (constants tuned on this implementation for f and FER).
        `original` (Brassard-Salvail): k1 = ceil(0.73/Q), doubling, 4 passes.
        """
        if n < 2:
            raise ValueError(f"frame length {n} too short for Cascade")
        q = min(max(float(qber), 1e-4), 0.25)
        cap = max(2, (n + 1) // 2)
        if variant == "original":
            k = max(2, math.ceil(ALPHA_FIRST_BLOCK / q))
            sizes = [min(k << i, cap) for i in range(4)]
        elif variant == "option7":
            k1 = 1 << max(1, round(math.log2(alpha1 / q)))
            # at low QBER and short frames the power-of-two rounding of 4/Q overshoots (512 at
            # 1 %): use 2.8/Q; fewer final passes at low QBER, where each one costs more of f
            a2 = alpha2 if q >= 0.015 or n >= 50_000 else alpha2 * 0.7
            if passes is None:
                passes = 12 if q < 0.03 and n < 50_000 else 16
            k2 = 1 << max(1, round(math.log2(a2 / q)))
            sizes = [min(k1, cap), min(k2, cap)] + [cap] * max(0, passes - 2)
        else:
            raise ValueError(f"unknown Cascade variant {variant!r}")
        return cls(int(n), int(frames), tuple(sizes), int(seed))

    def to_dict(self) -> dict:
        return {"n": self.n, "frames": self.frames, "block_sizes": list(self.block_sizes),
                "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> CascadePlan:
        return cls(int(d["n"]), int(d["frames"]), tuple(int(k) for k in d["block_sizes"]),
                   int(d["seed"]))


class CascadeLayout:
    """Permutations, padding and node numbering of every pass, shared by both ends.

    Pass p permutes each frame's n bits (the same public permutation, drawn from the plan's
    seed, for every frame) and cuts them into blocks of k_p bits, each padded to 2^K_p with
    dummy zero bits (identical on both sides). Level l of pass p has nodes of 2^(K_p - l)
    positions, numbered `offset[p, l] + frame * blocks_p * 2^l + index` (one integer per
    node, which is what travels in a parity query).
    """

    def __init__(self, plan: CascadePlan):
        self.plan = plan
        n, frames = plan.n, plan.frames
        self.n, self.frames, self.n_total = n, frames, n * frames
        sizes = plan.block_sizes
        self.passes = len(sizes)
        K = np.array([max(1, math.ceil(math.log2(k))) for k in sizes], np.int64)
        blocks = np.array([-(-n // k) for k in sizes], np.int64)
        P = blocks << K
        tsize = blocks * ((np.int64(2) << K) - 1)
        words = -(-n // 64)
        poff = np.concatenate([[0], np.cumsum(P)]).astype(np.int64)
        toff = np.concatenate([[0], np.cumsum(tsize)]).astype(np.int64)
        perm = np.empty(int(poff[-1]), np.int32)
        inv = np.empty(self.passes * n, np.int32)
        tmpl = np.empty(int(toff[-1]), np.uint8)
        mask = np.empty(self.passes * words, np.uint64)
        for p, k in enumerate(sizes):
            sh = kern.shuffle(n, np.uint64((plan.seed * 0x9E3779B1 + p * 0x85EBCA77) % (1 << 64)))
            kern.fill_pass(n, int(k), int(K[p]), sh, perm[poff[p]:poff[p + 1]],
                           inv[p * n:(p + 1) * n], tmpl[toff[p]:toff[p + 1]],
                           mask[p * words:(p + 1) * words])
        self.K, self.blocks = K, blocks
        self.max_levels = int(K.max()) + 1
        self.offset = np.zeros((self.passes, self.max_levels + 1), np.int64)
        starts, st_p, st_lv = [], [], []
        total = 0
        for p in range(self.passes):
            for lv in range(int(K[p]) + 1):
                self.offset[p, lv] = total
                starts.append(total)
                st_p.append(p)
                st_lv.append(lv)
                total += int(frames * blocks[p]) << lv
        self.total_nodes = total
        per_pass = frames * tsize
        self.k = kern.Lay(
            n, frames, self.passes, words, K, blocks, (blocks <= 2).astype(np.uint8), perm,
            poff, inv, mask, self.offset, np.array(starts, np.int64),
            np.array(st_p, np.int64), np.array(st_lv, np.int64), tsize, toff, tmpl,
            np.concatenate([[0], np.cumsum(per_pass)]).astype(np.int64),
            np.concatenate([[0], np.cumsum(frames * (P + 1))]).astype(np.int64),
            np.concatenate([[0], np.cumsum(frames * blocks)]).astype(np.int64))

    def top_queries(self) -> np.ndarray:
        """Round 1: every top-level parity, except the last block of each frame in passes
        >= 1 (it follows from the frame's total parity)."""
        out = []
        for p in range(self.passes):
            top = self.offset[p, 0] + np.arange(self.frames * self.blocks[p], dtype=np.int64)
            top = top.reshape(self.frames, -1)
            out.append((top[:, :-1] if p and top.shape[1] > 1 else top).ravel())
        return np.concatenate(out)

    def frame_of(self, nodes: np.ndarray) -> np.ndarray:
        """Frame of each node id."""
        r = np.searchsorted(self.k.starts, nodes, side="right") - 1
        p, lv = self.k.st_p[r], self.k.st_lv[r]
        return (nodes - self.k.starts[r]) // (self.blocks[p] << lv)

    def check_nodes(self, nodes: np.ndarray) -> np.ndarray:
        nodes = np.asarray(nodes, np.int64)
        if len(nodes) and (nodes.min() < 0 or nodes.max() >= self.total_nodes):
            raise ValueError("parity query for a node outside the layout")
        return nodes


def _bits(key: np.ndarray, lay: CascadeLayout) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(key, np.uint8).ravel())
    if len(x) != lay.n_total:
        raise ValueError(f"key has {len(x)} bits, plan expects {lay.n_total}")
    if len(x) and x.max() > 1:
        raise ValueError("key bits must be 0 or 1")
    return x.copy()


class ParityOracle:
    """Alice's side: answers batches of node-parity queries."""

    def __init__(self, plan: CascadePlan, key: np.ndarray, layout: CascadeLayout | None = None):
        self.layout = layout or CascadeLayout(plan)
        lay = self.layout
        x = _bits(key, lay)
        k = lay.k
        self._state = kern.Alice(x, kern.pack(x, lay.frames, lay.n, k.words),
                                 np.empty(int(k.abase[-1]), np.uint8),
                                 np.zeros((lay.passes, lay.frames), np.uint8))
        self.disclosed = 0
        self.disclosed_per_frame = np.zeros(lay.frames, np.int64)
        self.batches = 0

    def answer(self, nodes: np.ndarray) -> np.ndarray:
        """Parities (uint8 0/1) of Alice's bits in each queried node."""
        nodes = self.layout.check_nodes(nodes)
        out = np.empty(len(nodes), np.uint8)
        kern.alice_answer(self.layout.k, self._state, nodes, out, self.disclosed_per_frame)
        self.disclosed += len(nodes)
        self.batches += 1
        return out


@dataclass
class CascadeResult:
    key: np.ndarray          # Bob's corrected bits, shape (frames, n)
    leaked_bits: int         # parities disclosed by Alice
    leaked_per_frame: np.ndarray
    round_trips: int
    flips: int               # bits Bob changed


class CascadeBob:
    """Bob's side: drives the protocol, one `ask` per round trip."""

    def __init__(self, plan: CascadePlan, key: np.ndarray,
                 ask: Callable[[np.ndarray], np.ndarray], layout: CascadeLayout | None = None):
        self.plan = plan
        self.layout = layout or CascadeLayout(plan)
        lay = self.layout
        y = _bits(key, lay)
        k = lay.k
        self._state = kern.Bob(y, kern.pack(y, lay.frames, lay.n, k.words),
                               np.empty(int(k.bbase[-1]), np.uint8),
                               np.zeros((lay.passes, lay.frames), np.uint8),
                               np.zeros(int(k.topoff[-1]), np.uint8),
                               np.full(lay.frames, -1, np.int64),
                               np.zeros(lay.frames, np.int64))
        self._ask = ask
        self.leaked = 0
        self.leaked_per_frame = np.zeros(lay.frames, np.int64)
        self.round_trips = 0

    def _ask_batch(self, nodes: np.ndarray, frames: np.ndarray) -> np.ndarray:
        ans = np.asarray(self._ask(nodes), np.uint8)
        if ans.shape != nodes.shape:
            raise ValueError("parity oracle returned a wrong number of answers")
        if len(ans) and ans.max() > 1:
            raise ValueError("parity oracle returned a value other than 0 or 1")
        self.leaked += len(nodes)
        self.leaked_per_frame += np.bincount(frames, minlength=self.layout.frames)
        self.round_trips += 1
        return ans

    def run(self) -> CascadeResult:
        lay, st = self.layout, self._state
        tops = lay.top_queries()
        ans = self._ask_batch(tops, lay.frame_of(tops))
        codes, frames, queries = kern.bob_start(lay.k, st, tops, ans)
        while len(queries):
            ans = self._ask_batch(queries, frames)
            codes, frames, queries = kern.bob_round(lay.k, st, codes, frames, ans)
        key = st.y.reshape(self.plan.frames, self.plan.n).copy()
        return CascadeResult(key, self.leaked, self.leaked_per_frame.copy(), self.round_trips,
                             int(st.flips.sum()))


def reconcile_local(alice: np.ndarray, bob: np.ndarray, qber: float, seed: int = 0,
                    **plan_kw) -> tuple[CascadeResult, ParityOracle]:
    """Both sides in one process (tests, benchmarks). alice, bob: (frames, n) bit arrays."""
    alice = np.atleast_2d(alice)
    plan = CascadePlan.for_qber(alice.shape[1], alice.shape[0], qber, seed, **plan_kw)
    layout = CascadeLayout(plan)
    oracle = ParityOracle(plan, alice, layout)
    bob_side = CascadeBob(plan, np.atleast_2d(bob), oracle.answer, layout)
    return bob_side.run(), oracle
