"""The quantum layer of the emulator, split between the two ends of a link.

Speed is the point: at 10^8 pulses/s nothing is drawn per pulse. Alice's source draws the
positions of the pulses that will produce a photon click at Bob as a Bernoulli process
(geometric gaps, so they come out sorted), and only those are materialised with their
intensity class, bit, basis and, on attacked pulses, Eve's re-prepared state. That sparse
list (`ChannelFrame`) is what a network stream carries from Alice's module to Bob's.
Bob's detector draws his basis and the measurement outcome per arriving event, adds dark
counts (again as a sparse Bernoulli process over all slots), handles double clicks, and keeps
`Detections`. Detector efficiency is folded into the thinning on Alice's side (Poisson
thinning commutes), so Bob's parameters are needed there: they come from the shared link config.

For slots where Bob has only a dark count, Alice's class, bit and basis are drawn only when Bob
announces the slot (`AliceRecords.fill_dark`): given that no photon was detected they are
independent of the dark count, so drawing them late is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qkdtwin.quantum.params import LinkParams

N_CLASSES = 3  # signal, decoy, vacuum


def _bernoulli_positions(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Sorted slot indices in [0, n) that succeed in n independent trials of probability p."""
    if p <= 0.0 or n <= 0:
        return np.zeros(0, np.int64)
    if p >= 1.0:
        return np.arange(n, dtype=np.int64)
    expected = n * p
    chunk = int(expected + 6.0 * math.sqrt(expected) + 16)
    parts = []
    last = -1
    while True:
        gaps = rng.geometric(p, size=chunk)
        pos = np.cumsum(gaps, dtype=np.int64) + last
        if pos[-1] >= n:
            parts.append(pos[: np.searchsorted(pos, n)])
            break
        parts.append(pos)
        last = int(pos[-1])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class ChannelFrame:
    """What reaches Bob's detectors for `n_pulses` slots starting at global slot `offset`.

    Only slots whose light produces a click are listed (detector efficiency already applied).
    `basis`/`value` are the polarisation state arriving (Alice's or Eve's re-prepared one);
    `multi` marks events with two or more detected photons.
    """

    index: int
    offset: int
    n_pulses: int
    positions: np.ndarray  # int64, global slot numbers, sorted
    basis: np.ndarray      # uint8
    value: np.ndarray      # uint8
    multi: np.ndarray      # bool

    def to_message(self) -> dict:
        """Compact form for the network: slots relative to the frame (uint32), and one byte
        per event holding basis, value and the multi-photon flag."""
        if self.n_pulses > 2**32:
            raise ValueError("a channel frame may hold at most 2^32 pulses")
        state = (self.multi.astype(np.uint8) << 2) | (self.basis << 1) | self.value
        return {"type": "frame", "index": self.index, "offset": self.offset,
                "n_pulses": self.n_pulses,
                "slots": (self.positions - self.offset).astype(np.uint32),
                "state": state.astype(np.uint8)}

    @classmethod
    def from_message(cls, m: dict) -> ChannelFrame:
        state = np.asarray(m["state"], np.uint8)
        slots = np.asarray(m["slots"], np.uint32)
        n = int(m["n_pulses"])
        if len(slots) != len(state) or (len(slots) and int(slots.max()) >= n):
            raise ValueError("malformed channel frame")
        offset = int(m["offset"])
        return cls(int(m["index"]), offset, n, slots.astype(np.int64) + offset,
                   (state >> 1) & 1, state & 1, (state >> 2).astype(bool))


@dataclass
class AliceRecords:
    """Alice's private record of the pulses that matter, per frame, for one block."""

    first_slot: int = 0
    end_slot: int = 0
    positions: list = field(default_factory=list)
    cls: list = field(default_factory=list)
    bit: list = field(default_factory=list)
    basis: list = field(default_factory=list)
    ends: list = field(default_factory=list)     # end slot of each frame
    sent_parts: list = field(default_factory=list)
    silent_parts: list = field(default_factory=list)

    @property
    def sent(self) -> np.ndarray:
        """Pulses sent per class."""
        return np.sum(self.sent_parts, axis=0) if self.sent_parts else np.zeros(N_CLASSES, np.int64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        def cat(xs: list, dt: type) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros(0, dt)
        return (cat(self.positions, np.int64), cat(self.cls, np.uint8),
                cat(self.bit, np.uint8), cat(self.basis, np.uint8))

    def split(self, end_slot: int) -> tuple[AliceRecords, AliceRecords]:
        """(frames ending at or before end_slot, the rest)."""
        k = 0
        while k < len(self.ends) and self.ends[k] <= end_slot:
            k += 1
        head_end = self.ends[k - 1] if k else self.first_slot
        if head_end != end_slot:
            raise ValueError(f"slot {end_slot} is not a frame boundary of Alice's records")
        def part(a: int, b: int | None, first: int, end: int) -> AliceRecords:
            return AliceRecords(first, end, self.positions[a:b], self.cls[a:b], self.bit[a:b],
                                self.basis[a:b], self.ends[a:b], self.sent_parts[a:b],
                                self.silent_parts[a:b])
        return part(0, k, self.first_slot, head_end), part(k, None, head_end, self.end_slot)

    def lookup(self, slots: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class, bit, basis) of the announced slots; dark-count-only slots drawn now."""
        pos, cls, bit, basis = self.arrays()
        idx = np.searchsorted(pos, slots)
        idx_c = np.minimum(idx, max(len(pos) - 1, 0))
        have = (idx < len(pos)) & (pos[idx_c] == slots) if len(pos) else np.zeros(len(slots), bool)
        out_cls = np.empty(len(slots), np.uint8)
        out_bit = np.empty(len(slots), np.uint8)
        out_basis = np.empty(len(slots), np.uint8)
        out_cls[have] = cls[idx_c[have]]
        out_bit[have] = bit[idx_c[have]]
        out_basis[have] = basis[idx_c[have]]
        m = int((~have).sum())
        if m:
            pool = np.sum(self.silent_parts, axis=0) if self.silent_parts else np.zeros(3)
            pool = np.maximum(pool, 0).astype(np.int64)
            if pool.sum() >= m:
                counts = rng.multivariate_hypergeometric(pool, m)
            else:
                counts = np.bincount(rng.integers(0, N_CLASSES, m), minlength=N_CLASSES)
            late = np.repeat(np.arange(N_CLASSES, dtype=np.uint8), counts)
            rng.shuffle(late)
            out_cls[~have] = late
            out_bit[~have] = rng.integers(0, 2, m, dtype=np.uint8)
            out_basis[~have] = rng.integers(0, 2, m, dtype=np.uint8)
        return out_cls, out_bit, out_basis


class AliceSource:
    """Alice's module: weak coherent source with decoy classes, fibre, optional Eve."""

    def __init__(self, params: LinkParams, rng: np.random.Generator | None = None):
        self.params = params
        self.rng = rng or np.random.default_rng()
        self.next_slot = 0
        self.frame_index = 0
        self.records = AliceRecords()
        self._setup()

    def _setup(self) -> None:
        p = self.params
        eta = p.eta
        probs, click, multi = [], [], []
        for prob, mean in p.intensity_classes:
            if p.protocol == "ideal":  # one photon per pulse
                c, m2 = eta, 0.0
            else:
                lam = mean * eta
                c = -math.expm1(-lam)
                m2 = (c - lam * math.exp(-lam)) / c if c > 0 else 0.0
            probs.append(prob)
            click.append(c)
            multi.append(m2)
        self._probs = np.array(probs)
        self._click = np.array(click)          # P(photon click | class)
        self._multi = np.array(multi)          # P(>=2 detected photons | click, class)
        joint = self._probs * self._click
        self._p_event = float(joint.sum())
        self._cls_given_event = joint / self._p_event if self._p_event > 0 else self._probs
        silent = self._probs * (1.0 - self._click)
        self._cls_given_silent = silent / silent.sum()

    def set_eve_fraction(self, fraction: float) -> None:
        """Switch the intercept-resend attack at run time (affects later frames)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"eve_fraction: {fraction!r} out of range [0, 1]")
        self.params = self.params.replace(eve_fraction=float(fraction))

    def emit(self, n_pulses: int) -> ChannelFrame:
        """Send `n_pulses` pulses; return the sparse channel output for Bob."""
        rng = self.rng
        n_pulses = int(n_pulses)
        rel = _bernoulli_positions(rng, n_pulses, self._p_event)
        k = len(rel)
        positions = rel + self.next_slot
        u = rng.random(k)
        if self.params.protocol == "bb84-decoy":
            cls = np.searchsorted(np.cumsum(self._cls_given_event)[:-1], u, side="right")
            cls = cls.astype(np.uint8)
        else:
            cls = np.zeros(k, np.uint8)
        # one random byte gives Alice's bit and basis and Eve's basis and bit
        r = rng.integers(0, 256, k, dtype=np.uint8)
        bit, basis = r & 1, (r >> 1) & 1
        state_basis, state_value = basis.copy(), bit.copy()
        eve = self.params.eve_fraction
        if eve > 0.0:
            attacked = rng.random(k) < eve
            eb, ev = (r >> 2) & 1, (r >> 3) & 1
            # Eve measures in her basis; a wrong basis gives her a random bit to resend
            wrong = attacked & (eb != basis)
            state_basis[attacked] = eb[attacked]
            state_value[wrong] = ev[wrong]
        if self._multi.max() > 0.0:
            multi = rng.random(k) < self._multi[cls]
        else:
            multi = np.zeros(k, bool)
        # class counts of all pulses sent, and of the silent ones (pool for late draws)
        silent = rng.multinomial(n_pulses - k, self._cls_given_silent)
        events = np.bincount(cls, minlength=N_CLASSES)
        rec = self.records
        rec.positions.append(positions)
        rec.cls.append(cls)
        rec.bit.append(bit)
        rec.basis.append(basis)
        rec.sent_parts.append(silent + events)
        rec.silent_parts.append(silent)
        rec.ends.append(self.next_slot + n_pulses)
        frame = ChannelFrame(self.frame_index, self.next_slot, n_pulses, positions,
                             state_basis, state_value, multi)
        self.next_slot += n_pulses
        rec.end_slot = self.next_slot
        self.frame_index += 1
        return frame

    def take(self, end_slot: int | None = None) -> AliceRecords:
        """Hand over the records of the frames up to end_slot (default: all) as one block."""
        end = self.next_slot if end_slot is None else int(end_slot)
        head, self.records = self.records.split(end)
        return head


@dataclass
class Detections:
    """Bob's private record: slot, his basis and the bit he registered."""

    first_slot: int
    end_slot: int
    positions: np.ndarray
    basis: np.ndarray
    bit: np.ndarray
    double: np.ndarray  # both detectors clicked (bit assigned at random)


class BobDetector:
    """Bob's module: passive basis choice, two threshold detectors with dark counts."""

    def __init__(self, params: LinkParams, rng: np.random.Generator | None = None):
        self.params = params
        self.rng = rng or np.random.default_rng()
        # each of the two detectors fires in the dark with d, so Y0 = 1 - (1-d)^2
        self._dark = 1.0 - math.sqrt(1.0 - params.dark_count_prob)
        self._reset(0)

    def _reset(self, slot: int) -> None:
        self._first = slot
        self._end = slot
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._ends: list[int] = []

    def detect(self, frame: ChannelFrame) -> int:
        """Measure one frame; return the number of detection events kept."""
        rng = self.rng
        p = self.params
        k = len(frame.positions)
        if not self._parts and self._end == self._first:
            self._first = frame.offset
        elif frame.offset != self._end:
            raise ValueError(f"frame {frame.index} starts at slot {frame.offset}, "
                             f"expected {self._end} (lost or reordered frame)")
        self._end = frame.offset + frame.n_pulses
        r = rng.integers(0, 256, k, dtype=np.uint8)
        bb = r & 1
        u = rng.random(k)
        same = bb == frame.basis
        err = u < p.misalignment
        # first photon: right basis -> state value (flipped by misalignment); else random
        hit = np.where(same, frame.value ^ err, (r >> 1) & 1).astype(np.uint8)
        c0 = hit == 0
        c1 = ~c0
        if frame.multi.any():
            m = np.flatnonzero(frame.multi)
            err2 = rng.random(len(m)) < p.misalignment
            hit2 = np.where(same[m], frame.value[m] ^ err2, (r[m] >> 2) & 1)
            c0[m] |= hit2 == 0
            c1[m] |= hit2 == 1
        pos = frame.positions
        # dark counts anywhere in the frame, per detector
        d0 = _bernoulli_positions(rng, frame.n_pulses, self._dark) + frame.offset
        d1 = _bernoulli_positions(rng, frame.n_pulses, self._dark) + frame.offset
        dark = np.concatenate([d0, d1])
        if len(dark):
            det = np.concatenate([np.zeros(len(d0), np.uint8), np.ones(len(d1), np.uint8)])
            i = np.searchsorted(pos, dark)
            ic = np.minimum(i, max(k - 1, 0))
            on_event = (i < k) & (pos[ic] == dark) if k else np.zeros(len(dark), bool)
            c0[ic[on_event & (det == 0)]] = True
            c1[ic[on_event & (det == 1)]] = True
            # dark-only slots become new events (both detectors may fire in the same slot)
            lone_pos = dark[~on_event]
            lone_det = det[~on_event]
            lp, inv = np.unique(lone_pos, return_inverse=True)
            l0 = np.zeros(len(lp), bool)
            l1 = np.zeros(len(lp), bool)
            l0[inv[lone_det == 0]] = True
            l1[inv[lone_det == 1]] = True
            if len(lp):
                at = np.searchsorted(pos, lp)  # merge, keeping slots sorted
                pos = np.insert(pos, at, lp)
                bb = np.insert(bb, at, rng.integers(0, 2, len(lp), dtype=np.uint8))
                c0 = np.insert(c0, at, l0)
                c1 = np.insert(c1, at, l1)
        double = c0 & c1
        bit = c1.astype(np.uint8)
        nd = int(double.sum())
        if nd:  # squashing: a double click is given a random bit
            bit[double] = rng.integers(0, 2, nd, dtype=np.uint8)
        self._parts.append((pos, bb, bit, double))
        self._ends.append(self._end)
        return len(pos)

    @property
    def end_slot(self) -> int:
        """Slot after the last frame measured."""
        return self._end

    def take(self, end_slot: int | None = None) -> Detections:
        """Hand over the detections of the frames up to end_slot (default: all) as one block."""
        end = self._end if end_slot is None else int(end_slot)
        k = 0
        while k < len(self._ends) and self._ends[k] <= end:
            k += 1
        head_end = self._ends[k - 1] if k else self._first
        if head_end != end:
            raise ValueError(f"slot {end} is not a frame boundary of Bob's detections")
        parts, rest = self._parts[:k], self._parts[k:]
        ends_rest = self._ends[k:]
        if parts:
            pos, bb, bit, dbl = (np.concatenate(x) for x in zip(*parts, strict=True))
        else:
            pos = np.zeros(0, np.int64)
            bb = bit = np.zeros(0, np.uint8)
            dbl = np.zeros(0, bool)
        det = Detections(self._first, head_end, pos, bb, bit, dbl)
        last_end = self._end
        self._reset(head_end)
        self._parts, self._ends, self._end = rest, ends_rest, last_end
        return det
