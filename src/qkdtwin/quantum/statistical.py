"""The `statistical` link model: sifted strings drawn from the decoy model, then the real
post-processing.

No pulses and no detector: per block, the pulses of each intensity class, their detections
and the basis-matched (sifted) ones are drawn from their binomial laws with the analytic
gains (`class_rates`, the current eavesdropper included), Alice's sifted bits are
random and Bob's differ from them at the class's QBER, each bit independently. From there
the block goes through the same estimation, reconciliation (Cascade or LDPC), verification
and privacy amplification as a `bb84` block, over the same messages; only the `sift`
exchange is gone, because there are no slots to announce.

Alice's module draws the block and sends Bob his half (class labels, his bits, the counts)
on the quantum connection, the emulated quantum channel; Alice's bits never leave her.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qkdtwin.quantum import keyrate
from qkdtwin.quantum.params import LinkParams

N_CLASSES = 3


@dataclass
class SiftedHalf:
    """One end's view of a drawn block: what a `bb84` block has after sifting."""

    sent: list[int]      # pulses per intensity class
    det: list[int]       # detections per class (either basis)
    cls: np.ndarray      # uint8, the class of each sifted bit
    bits: np.ndarray     # uint8, this end's sifted bits

    def to_message(self, block: int, eve_fraction: float) -> dict[str, Any]:
        return {"type": "sifted", "block": int(block), "eve": float(eve_fraction),
                "sent": [int(x) for x in self.sent], "det": [int(x) for x in self.det],
                "cls": self.cls.astype(np.uint8), "bits": np.packbits(self.bits),
                "n": int(len(self.bits))}

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> SiftedHalf:
        """The inverse of `to_message`; ValueError on inconsistent content."""
        sent = [int(x) for x in m["sent"]]
        det = [int(x) for x in m["det"]]
        n = int(m["n"])
        labels = np.asarray(m["cls"], np.uint8)
        if len(sent) != N_CLASSES or len(det) != N_CLASSES or min(sent + det) < 0:
            raise ValueError("a sifted block needs non-negative counts for 3 classes")
        if len(labels) != n or (n and int(labels.max()) >= N_CLASSES):
            raise ValueError(f"a sifted block of {n} bits has {len(labels)} class labels")
        counts = np.bincount(labels, minlength=N_CLASSES)
        if any(c > d for c, d in zip(counts.tolist(), det, strict=True)) or \
                any(d > s for d, s in zip(det, sent, strict=True)):
            raise ValueError("a sifted block's counts do not nest (sifted <= detected <= sent)")
        bits = np.unpackbits(np.asarray(m["bits"], np.uint8), count=n)
        return cls(sent, det, labels, bits)


@dataclass
class SiftedBlock:
    alice: SiftedHalf
    bob: SiftedHalf


def class_rates(params: LinkParams) -> list[tuple[float, float, float]]:
    """(probability, gain, QBER) per intensity class from the analytic model."""
    out = []
    for prob, mean in params.intensity_classes:
        if params.protocol == "ideal":
            q, e = keyrate.single_photon_yield(params), keyrate.single_photon_error(params)
        elif mean > 0:
            q, e = keyrate.gain(params, mean), keyrate.qber(params, mean)
        else:
            q, e = params.dark_count_prob, 0.5
        out.append((prob, q, e))
    return out


def draw_sifted_block(params: LinkParams, n_pulses: int,
                      rng: np.random.Generator) -> SiftedBlock:
    """One block of `n_pulses` at the link's parameters (eve_fraction included)."""
    rates = class_rates(params)
    sent = rng.multinomial(int(n_pulses), [r[0] for r in rates]).tolist()
    det, labels, flips = [], [], []
    for c, ((_, q, e), s) in enumerate(zip(rates, sent, strict=True)):
        d = int(rng.binomial(s, min(q, 1.0)))
        sifted = int(rng.binomial(d, 0.5))
        det.append(d)
        labels.append(np.full(sifted, c, np.uint8))
        flips.append(rng.random(sifted) < e)
    order = rng.permutation(sum(len(x) for x in labels))  # classes interleaved, as in time
    cls = np.concatenate(labels)[order]
    error = np.concatenate(flips)[order]
    alice_bits = rng.integers(0, 2, len(cls), dtype=np.uint8)
    bob_bits = alice_bits ^ error.astype(np.uint8)
    return SiftedBlock(SiftedHalf(sent, det, cls, alice_bits),
                       SiftedHalf(list(sent), list(det), cls.copy(), bob_bits))
