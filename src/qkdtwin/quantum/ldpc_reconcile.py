"""One-way LDPC reconciliation: Alice sends one syndrome per frame, Bob decodes.

Bob picks the plan from his QBER estimate (`LdpcPlan.for_block`) and sends it; Alice answers
the syndromes of her frames (`LdpcAlice`), one message for the whole block. Bob decodes each
frame with belief propagation on the syndrome of the difference (`LdpcBob`): the error
pattern e = x xor y has syndrome H x xor H y, with probability QBER at key positions, 1/2 at
punctured ones and ~0 at shortened ones. A frame whose decoder does not converge is known
failed at once; any other wrong frame is caught by the verification tag. Leakage per frame
is the syndrome length minus the punctured bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qkdtwin.quantum import ldpc_codes as codes

# Efficiency f = leak / (k H2(QBER)) aimed at, by estimated QBER: where the family's frame
# error rate is low (benchmarks/bench_reconcile.py measures f and FER). The high-rate codes
# that low QBERs need are the family's weakest, hence the larger f there.
TARGET_F = ((0.015, 1.45), (0.03, 1.38), (1.0, 1.32))
MIN_KEY_BITS = 256
KNOWN = 1e-9  # error probability the decoder assumes at shortened positions


PLAN_SIGMAS = 2.0  # the QBER a plan is made for: the sample's estimate plus two sigmas


def _clamp(qber: float) -> float:
    """QBERs the plans and the decoder work with: at least 1e-3, at most 1/2."""
    return min(max(float(qber), 1e-3), 0.5)


def planning_qber(qber: float, disclosed: int) -> float:
    """The QBER Bob plans a block for. One-way codes cannot ask again, and the sampled
    estimate of a small block is often low (1.4 % on 1,100 bits of a link whose misalignment
    alone is 1.75 %, which failed both frames of the block): plan for the estimate plus
    PLAN_SIGMAS deviations."""
    q = _clamp(qber)
    return min(q + PLAN_SIGMAS * math.sqrt(q * (1 - q) / max(int(disclosed), 1)), 0.5)


def target_efficiency(qber: float) -> float:
    for upto, f in TARGET_F:
        if qber <= upto:
            return f
    return TARGET_F[-1][1]


@dataclass(frozen=True)
class LdpcPlan:
    """What both ends need: the mother code, the frame layout and the positions' seed."""

    n: int            # code length
    rate: float       # mother code rate
    frames: int
    k: int            # key bits per frame
    punctured: int
    shortened: int
    seed: int

    @classmethod
    def for_block(cls, n_key: int, qber: float, seed: int) -> LdpcPlan:
        """Frames for n_key key bits at an estimated QBER (ValueError when no code fits)."""
        if n_key < MIN_KEY_BITS:
            raise ValueError(f"{n_key} bits are too few for LDPC reconciliation")
        q = _clamp(qber)
        f = target_efficiency(q)
        big, small = codes.LENGTHS[-1], codes.LENGTHS[0]
        n = big if n_key >= codes.max_key_bits(big, f, q) else small
        k_max = codes.max_key_bits(n, f, q)
        if k_max < MIN_KEY_BITS:
            raise ValueError(f"QBER {q:.3f} is beyond the LDPC codes' range")
        frames = math.ceil(n_key / k_max)
        return cls.for_frames(min(n_key // frames, k_max), frames, q, seed)

    @classmethod
    def for_frames(cls, k: int, frames: int, qber: float, seed: int) -> LdpcPlan:
        """`frames` frames of k key bits each, in the shortest mother code that carries k."""
        q = _clamp(qber)
        f = target_efficiency(q)
        for n in codes.LENGTHS:
            chosen = codes.adapt(n, k, math.ceil(f * k * codes.h2(q)))
            if chosen is not None:
                rate, punctured, shortened = chosen
                return cls(n, rate, frames, k, punctured, shortened, int(seed))
        raise ValueError(f"no LDPC code carries {k} bits at QBER {q:.3f}")

    def to_dict(self) -> dict:
        return {"n": self.n, "rate": self.rate, "frames": self.frames, "k": self.k,
                "punctured": self.punctured, "shortened": self.shortened, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> LdpcPlan:
        plan = cls(int(d["n"]), float(d["rate"]), int(d["frames"]), int(d["k"]),
                   int(d["punctured"]), int(d["shortened"]), int(d["seed"]))
        plan.check()
        return plan

    def check(self) -> None:
        """Refuse a plan from the peer that does not describe a frame of a known code."""
        m = codes.checks(self.n, self.rate) if self.rate in codes.RATES else -1
        if self.n not in codes.LENGTHS or m < 0:
            raise ValueError(f"no LDPC mother code of length {self.n} and rate {self.rate}")
        if (self.frames < 1 or self.k < 1 or not 0 <= self.punctured <= m
                or self.shortened < 0 or self.k + self.punctured + self.shortened != self.n):
            raise ValueError(f"inconsistent LDPC plan {self.to_dict()}")

    @property
    def leak_per_frame(self) -> int:
        return codes.checks(self.n, self.rate) - self.punctured

    def positions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(key, punctured, shortened) positions in a frame, from the plan's seed."""
        perm = np.random.default_rng([self.seed, self.n]).permutation(self.n)
        p, s = self.punctured, self.shortened
        return np.sort(perm[p + s:]), perm[:p], perm[p:p + s]


def _frames(plan: LdpcPlan, key: np.ndarray) -> np.ndarray:
    bits = np.asarray(key, np.uint8).ravel()
    if len(bits) < plan.frames * plan.k:
        raise ValueError(f"plan needs {plan.frames * plan.k} key bits, have {len(bits)}")
    return bits[: plan.frames * plan.k].reshape(plan.frames, plan.k)


class LdpcAlice:
    """Alice's side: her frames and their syndromes."""

    def __init__(self, plan: LdpcPlan, key: np.ndarray, rng: np.random.Generator):
        self.plan = plan
        self.key = _frames(plan, key)
        keypos, punct, _ = plan.positions()
        words = np.zeros((plan.frames, plan.n), np.uint8)
        words[:, keypos] = self.key
        words[:, punct] = rng.integers(0, 2, (plan.frames, len(punct)), dtype=np.uint8)
        self.syndromes = codes.syndromes(plan.n, plan.rate, words)
        self.disclosed_per_frame = np.full(plan.frames, plan.leak_per_frame, np.int64)

    def packed_syndromes(self) -> np.ndarray:
        return np.packbits(self.syndromes, axis=1).ravel()


@dataclass
class LdpcResult:
    key: np.ndarray              # Bob's corrected key bits, shape (frames, k)
    leaked_bits: int
    leaked_per_frame: np.ndarray
    round_trips: int
    flips: int
    converged: np.ndarray        # per frame: the decoder found a word with Alice's syndrome


class LdpcBob:
    """Bob's side: decodes every frame against Alice's syndromes."""

    def __init__(self, plan: LdpcPlan, key: np.ndarray, qber: float):
        self.plan = plan
        self.key = _frames(plan, key)
        self.qber = _clamp(qber)

    def decode(self, packed: np.ndarray) -> LdpcResult:
        plan = self.plan
        m = codes.checks(plan.n, plan.rate)
        packed = np.asarray(packed, np.uint8).ravel()
        if len(packed) != plan.frames * ((m + 7) // 8):
            raise ValueError(f"expected {plan.frames} syndromes of {m} bits")
        rows = packed.reshape(plan.frames, -1)
        alice = np.unpackbits(rows, axis=1, count=m)
        keypos, punct, short = plan.positions()
        words = np.zeros((plan.frames, plan.n), np.uint8)
        words[:, keypos] = self.key
        target = alice ^ codes.syndromes(plan.n, plan.rate, words)
        probs = np.full(plan.n, self.qber)
        probs[punct] = 0.5
        probs[short] = KNOWN
        dec = codes.decoder(plan.n, plan.rate)
        dec.update_channel_probs(probs)
        out = self.key.copy()
        converged = np.zeros(plan.frames, bool)
        for f in range(plan.frames):
            err = np.asarray(dec.decode(target[f]), np.uint8)
            converged[f] = bool(dec.converge)
            out[f] ^= err[keypos]
        leak = np.full(plan.frames, plan.leak_per_frame, np.int64)
        return LdpcResult(out, int(leak.sum()), leak, 1, int((out != self.key).sum()),
                          converged)


def reconcile_local(alice: np.ndarray, bob: np.ndarray, qber: float, seed: int = 0,
                    rng: np.random.Generator | None = None) -> tuple[LdpcResult, LdpcAlice]:
    """Both sides in one process (tests, benchmarks): 1-D key strings of equal length."""
    plan = LdpcPlan.for_block(len(np.ravel(alice)), qber, seed)
    a = LdpcAlice(plan, alice, rng or np.random.default_rng(seed + 1))
    return LdpcBob(plan, bob, qber).decode(a.packed_syndromes()), a
