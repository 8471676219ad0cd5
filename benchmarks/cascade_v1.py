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
    """Permutations and the flat numbering of the dyadic node trees of every pass.

    Pass p permutes each frame's n bits (the same public permutation for every frame) and cuts
    them into blocks of k_p bits, each padded to 2^K_p with a dummy zero bit (identical on both
    sides). A frame then spans P_p = blocks_p * 2^K_p permuted positions, and level l of pass p
    has nodes of 2^(K_p - l) positions, numbered `offset[p, l] + index` over all frames.
    """

    def __init__(self, plan: CascadePlan):
        self.plan = plan
        n, frames = plan.n, plan.frames
        self.n = n
        self.frames = frames
        self.n_total = n * frames
        rng = np.random.default_rng(plan.seed)
        self.passes = len(plan.block_sizes)
        self.K = np.array([max(1, math.ceil(math.log2(k))) for k in plan.block_sizes])
        self.max_levels = int(self.K.max()) + 1
        self.offset = np.zeros((self.passes, self.max_levels), np.int64)
        self.perm1: list[np.ndarray] = []  # per-frame padded order -> bit in frame (n = dummy)
        self.inv1: list[np.ndarray] = []   # bit in frame -> padded position
        self.P = np.zeros(self.passes, np.int64)
        self.n_top = np.zeros(self.passes, np.int64)
        total_nodes = 0
        for p, k in enumerate(plan.block_sizes):
            K = int(self.K[p])
            width = 1 << K
            blocks = -(-n // k)
            perm = np.full((blocks, width), n, np.int64)
            body = np.concatenate([rng.permutation(n), np.full(blocks * k - n, n)])
            perm[:, :k] = body.reshape(blocks, k)
            perm = perm.ravel()
            inv = np.empty(n, np.int64)
            real = perm < n
            inv[perm[real]] = np.flatnonzero(real)
            self.perm1.append(perm)
            self.inv1.append(inv)
            self.P[p] = len(perm)
            self.n_top[p] = frames * blocks
            for lv in range(K + 1):
                self.offset[p, lv] = total_nodes
                total_nodes += int(self.n_top[p]) << lv
        self.total_nodes = total_nodes
        starts, owners = [], []
        for p in range(self.passes):
            for lv in range(int(self.K[p]) + 1):
                starts.append(self.offset[p, lv])
                owners.append((p, lv))
        self._starts = np.array(starts, np.int64)
        self._owner_pass = np.array([o[0] for o in owners], np.int64)
        self._owner_level = np.array([o[1] for o in owners], np.int64)

    def decode(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """node ids -> (pass, level, index within level)."""
        j = np.searchsorted(self._starts, nodes, side="right") - 1
        return self._owner_pass[j], self._owner_level[j], nodes - self._starts[j]

    def top_nodes(self, p: int) -> np.ndarray:
        return np.arange(self.offset[p, 0], self.offset[p, 0] + self.n_top[p], dtype=np.int64)

    def permuted(self, p: int, bits: np.ndarray) -> np.ndarray:
        """A (frames, n) bit array in pass p's padded order, flattened over frames."""
        padded = np.concatenate([bits.reshape(self.frames, self.n),
                                 np.zeros((self.frames, 1), bits.dtype)], axis=1)
        return padded[:, self.perm1[p]].ravel()

    def position(self, p: int, flat_bits: np.ndarray) -> np.ndarray:
        """Flat bit index -> global padded position in pass p."""
        f, i = np.divmod(flat_bits, self.n)
        return f * self.P[p] + self.inv1[p][i]

    def bit_at(self, p: int, gpos: np.ndarray) -> np.ndarray:
        """Global padded position in pass p -> flat bit index (n_total for padding)."""
        f, s = np.divmod(gpos, self.P[p])
        v = self.perm1[p][s]
        return np.where(v == self.n, self.n_total, f * self.n + v)


def frame_counts(lay: CascadeLayout, nodes: np.ndarray) -> np.ndarray:
    """How many of the nodes lie in each frame."""
    p, lv, idx = lay.decode(np.asarray(nodes, np.int64))
    frame = (idx >> lv) // (lay.n_top[p] // lay.frames)
    return np.bincount(frame, minlength=lay.frames)


class ParityOracle:
    """Alice's side: answers batches of node-parity queries from prefix parities."""

    def __init__(self, plan: CascadePlan, key: np.ndarray, layout: CascadeLayout | None = None):
        self.layout = layout or CascadeLayout(plan)
        lay = self.layout
        x = np.asarray(key, np.uint8).ravel()
        if len(x) != lay.n_total:
            raise ValueError(f"key has {len(x)} bits, plan expects {lay.n_total}")
        self._pstart = np.zeros(lay.passes + 1, np.int64)
        prefix = []
        for p in range(lay.passes):
            pre = np.zeros(lay.frames * lay.P[p] + 1, np.uint8)
            np.cumsum(lay.permuted(p, x), dtype=np.uint8, out=pre[1:])  # wraps: fine for &1
            prefix.append(pre)
            self._pstart[p + 1] = self._pstart[p] + len(pre)
        self._prefix = np.concatenate(prefix)
        self.disclosed = 0
        self.disclosed_per_frame = np.zeros(lay.frames, np.int64)
        self.batches = 0

    def answer(self, nodes: np.ndarray) -> np.ndarray:
        """Parities (uint8 0/1) of Alice's bits in each queried node."""
        lay = self.layout
        nodes = np.asarray(nodes, np.int64)
        if len(nodes) and (nodes.min() < 0 or nodes.max() >= lay.total_nodes):
            raise ValueError("parity query for a node outside the layout")
        p, lv, idx = lay.decode(nodes)
        shift = lay.K[p] - lv
        start = (idx << shift) + self._pstart[p]
        end = start + (np.int64(1) << shift)
        self.disclosed += len(nodes)
        self.disclosed_per_frame += frame_counts(lay, nodes)
        self.batches += 1
        return (self._prefix[end] ^ self._prefix[start]) & 1


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
        y = np.asarray(key, np.uint8).ravel()
        if len(y) != lay.n_total:
            raise ValueError(f"key has {len(y)} bits, plan expects {lay.n_total}")
        self.y = np.concatenate([y, np.zeros(1, np.uint8)])
        self._ask = ask
        self.leaked = 0
        self.leaked_per_frame = np.zeros(lay.frames, np.int64)
        self.round_trips = 0
        self.flips = 0
        # Bob's current parities (B) and Alice's known parities (A, -1 unknown) of every node
        self.B = np.zeros(lay.total_nodes, np.uint8)
        self.A = np.full(lay.total_nodes, -1, np.int8)
        self._started = 0  # passes whose parity trees exist (B is built when a pass starts)
        for p in range(lay.passes):
            K = int(lay.K[p])
            o = lay.offset[p]
            # pure padding leaves are known zeros for both; padding propagates up
            pad = np.tile(lay.perm1[p] == lay.n, lay.frames)
            self.A[o[K]:o[K] + len(pad)][pad] = 0
            for lv in range(K - 1, -1, -1):
                ca = self.A[o[lv + 1]:o[lv + 1] + (lay.n_top[p] << (lv + 1))]
                both = (ca[0::2] == 0) & (ca[1::2] == 0)
                self.A[o[lv]:o[lv] + (lay.n_top[p] << lv)][both] = 0

    def _build(self, p: int) -> None:
        """Bob's parity tree of pass p from his current bits."""
        lay = self.layout
        K = int(lay.K[p])
        leaf = lay.permuted(p, self.y[:-1])
        o = lay.offset[p]
        self.B[o[K]:o[K] + len(leaf)] = leaf
        for lv in range(K - 1, -1, -1):
            child = self.B[o[lv + 1]:o[lv + 1] + (lay.n_top[p] << (lv + 1))]
            self.B[o[lv]:o[lv] + (lay.n_top[p] << lv)] = child[0::2] ^ child[1::2]
        self._started = p + 1

    # ------------------------------------------------------------------ helpers
    def _ask_batch(self, nodes: np.ndarray) -> np.ndarray:
        ans = np.asarray(self._ask(nodes), np.uint8)
        if ans.shape != nodes.shape:
            raise ValueError("parity oracle returned a wrong number of answers")
        self.leaked += len(nodes)
        self.leaked_per_frame += frame_counts(self.layout, nodes)
        self.round_trips += 1
        self.A[nodes] = ans.astype(np.int8)
        return ans

    def _path_nodes(self, bits: np.ndarray, upto_pass: int) -> np.ndarray:
        """Node ids on the root-to-leaf path of every bit in passes 0..upto_pass.

        Shape (passes*levels, len(bits)); unused levels are -1.
        """
        lay = self.layout
        rows = []
        for p in range(upto_pass + 1):
            K = int(lay.K[p])
            pos = lay.position(p, bits)
            shifts = (K - np.arange(K + 1))[:, None]
            rows.append(lay.offset[p, :K + 1, None] + (pos[None, :] >> shifts))
        return np.concatenate(rows, axis=0)

    def _flip(self, bits: np.ndarray, upto_pass: int) -> np.ndarray:
        """Flip Bob's bits; update his parity trees; return the touched path nodes."""
        self.y[bits] ^= 1
        self.flips += len(bits)
        lay = self.layout
        paths = self._path_nodes(bits, self._started - 1)
        flat = np.sort(paths.ravel())
        # toggle every node an odd number of times (several flipped bits can share a node)
        if len(flat):
            starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
            runs = np.diff(np.concatenate([starts, [len(flat)]]))
            self.B[flat[starts[(runs & 1) == 1]]] ^= 1
        # the flipped bits now equal Alice's: their leaves are known in every pass
        for p in range(lay.passes):
            leaf = lay.offset[p, int(lay.K[p])] + lay.position(p, bits)
            self.A[leaf] = self.y[bits].astype(np.int8)
        rows = int(sum(int(lay.K[p]) + 1 for p in range(upto_pass + 1)))
        return paths[:rows]

    def _odd(self, nodes: np.ndarray) -> np.ndarray:
        a = self.A[nodes]
        return (a >= 0) & (a.astype(np.uint8) != self.B[nodes])

    # ------------------------------------------------------------------ protocol
    def run(self) -> CascadeResult:
        lay = self.layout
        cur = np.zeros(0, np.int64)  # node ids of active searches (each known odd)
        # Every top-level parity of every pass is always disclosed (none can be known
        # earlier), so all are fetched in the first round trip; the last block of each frame
        # in passes >= 1 is not asked but inferred from the frame's total parity.
        tops = [lay.top_nodes(p).reshape(lay.frames, -1) for p in range(lay.passes)]
        ask = [tops[0].ravel()]
        for p in range(1, lay.passes):
            ask.append((tops[p][:, :-1] if tops[p].shape[1] > 1 else tops[p]).ravel())
        need = np.concatenate(ask)
        need = need[self.A[need] < 0]
        if len(need):
            self._ask_batch(need)
        total = np.bitwise_xor.reduce(self.A[tops[0]], axis=1)
        for p in range(1, lay.passes):
            if tops[p].shape[1] > 1:
                rest = np.bitwise_xor.reduce(self.A[tops[p][:, :-1]], axis=1)
                self.A[tops[p][:, -1]] = total ^ rest
        for p in range(lay.passes):
            self._build(p)
            top = tops[p].ravel()
            cur = np.unique(np.concatenate([cur, top[self._odd(top)]]))
            cur = self._search(cur, p)
        key = self.y[:-1].reshape(self.plan.frames, self.plan.n).copy()
        return CascadeResult(key, self.leaked, self.leaked_per_frame.copy(), self.round_trips,
                             self.flips)

    def _children(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lay = self.layout
        p, lv, idx = lay.decode(nodes)
        leaf = lv >= lay.K[p]
        lvc = np.minimum(lv + 1, lay.K[p])
        left = lay.offset[p, lvc] + 2 * idx
        return left, left + 1, leaf

    def _search(self, cur: np.ndarray, upto_pass: int) -> np.ndarray:
        """Run all searches (and the ones they trigger) to completion."""
        while len(cur):
            # free descent: follow known child parities without asking
            while True:
                left, right, leaf = self._children(cur)
                m = ~leaf
                m[m] = self.A[left[m]] >= 0
                if not m.any():
                    break
                par, lft, rgt = cur[m], left[m], right[m]
                # the right child's parity follows from parent and left child
                self.A[rgt] = self.A[par] ^ self.A[lft]
                cur = cur.copy()
                cur[m] = np.where(self._odd(lft), lft, rgt)
                cur = np.unique(cur)
            if leaf.any():
                # leaves are errors: flip each once, then revalidate and cascade
                found = np.unique(self.y_index(cur[leaf]))
                cur = cur[~leaf]
                touched = self._flip(found, upto_pass)
                cur = cur[self._odd(cur)] if len(cur) else cur
                cur = np.unique(np.concatenate([cur, self._deepest_odd(touched)]))
                continue
            # every remaining search needs its left child's parity: one round trip
            self._ask_batch(np.unique(left))
            self.A[right] = self.A[cur] ^ self.A[left]
            cur = np.unique(np.where(self._odd(left), left, right))
        return cur

    def y_index(self, leaves: np.ndarray) -> np.ndarray:
        """Flat bit index of leaf nodes."""
        lay = self.layout
        p, _lv, idx = lay.decode(leaves)
        out = np.empty(len(leaves), np.int64)
        for q in np.unique(p):
            m = p == q
            out[m] = lay.bit_at(int(q), idx[m])
        return out

    def _deepest_odd(self, paths: np.ndarray) -> np.ndarray:
        """Per (pass, bit) path, the deepest node that is known and odd."""
        if paths.size == 0:
            return np.zeros(0, np.int64)
        lay = self.layout
        out = []
        r0 = 0
        for p in range(lay.passes):
            K = int(lay.K[p])
            if r0 >= paths.shape[0]:
                break
            block = paths[r0:r0 + K + 1]
            r0 += K + 1
            odd = self._odd(block.ravel()).reshape(block.shape)
            has = odd.any(axis=0)
            if not has.any():
                continue
            deepest = K - np.argmax(odd[::-1], axis=0)
            cols = np.flatnonzero(has)
            out.append(block[deepest[cols], cols])
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def reconcile_local(alice: np.ndarray, bob: np.ndarray, qber: float, seed: int = 0,
                    **plan_kw) -> tuple[CascadeResult, ParityOracle]:
    """Both sides in one process (tests, benchmarks). alice, bob: (frames, n) bit arrays."""
    alice = np.atleast_2d(alice)
    plan = CascadePlan.for_qber(alice.shape[1], alice.shape[0], qber, seed, **plan_kw)
    layout = CascadeLayout(plan)
    oracle = ParityOracle(plan, alice, layout)
    bob_side = CascadeBob(plan, np.atleast_2d(bob), oracle.answer, layout)
    return bob_side.run(), oracle
