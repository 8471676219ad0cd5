"""The `analytic` link model: each block yields the key the model predicts, and nothing runs.

No pulses, no sifting, no reconciliation: for a block of `block_pulses` pulses the counts
the post-processing would announce are drawn from the model's gains and QBERs (for the
current eavesdropper: Eve still raises the QBER, and above `qber_abort` the block gives no
key), and the block yields the secret length the post-processing would decide on them.
The key bits come from a seed both ends share: SHAKE-256 over the seed and the block id,
cut to the block's secret length. The QKD module sends the seed inside the mutual TLS of
its quantum connection at the start of each session (docs/quantum.md, "Link models").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from qkdtwin.quantum.link import sample_block
from qkdtwin.quantum.params import LinkParams

SEED_BYTES = 32
_DOMAIN = b"qkdtwin analytic link v1"


@dataclass(frozen=True)
class AnalyticBlock:
    """What one block of the analytic model yields (the same at both ends)."""

    secret_bits: int
    sifted_bits: int
    qber: float
    aborted: bool
    reason: str


class AnalyticBlocks:
    """The model's outcome of one block: its counts drawn from their binomial laws
    (`link.sample_block`) with a generator both ends seed alike (`block_rng`)."""

    def __init__(self, params: LinkParams, block_pulses: int) -> None:
        self.params = params
        self.block_pulses = block_pulses

    def outcome(self, eve_fraction: float, rng: np.random.Generator) -> AnalyticBlock:
        got = sample_block(self.params.replace(eve_fraction=eve_fraction), self.block_pulses,
                           rng)
        est = got["estimate"]
        secret = 0 if est.aborted else int(got["secret_bits"])
        reason = est.reason if est.aborted else ("" if secret else "no secret bits left")
        return AnalyticBlock(secret, int(got["sifted_signal"]), float(est.qber),
                             bool(est.aborted), reason)


def block_rng(seed: bytes, block: int) -> np.random.Generator:
    """The generator of a block's counts: the same at both ends, different per block."""
    return np.random.default_rng([int.from_bytes(seed, "big"), int(block) & (2**63 - 1)])


def block_key(seed: bytes, block: int, secret_bits: int) -> bytes:
    """The block's key: whole bytes of SHAKE-256(domain, seed, block id)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"the analytic seed must be {SEED_BYTES} bytes, got {len(seed)}")
    h = hashlib.shake_256(_DOMAIN + seed + int(block).to_bytes(8, "big", signed=True))
    return h.digest(secret_bits // 8) if secret_bits >= 8 else b""
