"""Post-processing of one block as a two-party exchange over an abstract transport.

Bob drives (`BobPostProcessor.run`), Alice only answers (`AlicePostProcessor.handle`): every
step is one request/reply, so a networked module can run each side in its own process and
carry the messages with `qkdtwin.quantum.wire`. Exchanges per block:

1. `sift`: Bob announces detected slots and his bases; Alice answers her bases, the
   intensity class of each slot and the pulses sent per class. (Not on a `statistical`
   link: its blocks are drawn sifted, `qkdtwin.quantum.statistical`.)
2. `estimate`: Bob discloses a random sample of signal bits and all decoy/vacuum sifted bits;
   Alice answers her bits for them. Both compute the same `Estimate` (abort above threshold).
3. `parity` (repeated): Cascade parity queries; the first one carries the `CascadePlan`.
   Or, on a link with `reconciliation: ldpc`, one `syndrome` exchange: Bob sends the
   `LdpcPlan`, Alice answers every frame's syndrome.
4. `confirm`: Bob sends per-frame verification tags (polynomial hash, fresh hash key) and the
   privacy-amplification seed; Alice answers which frames match and the secret length. Both
   then compress the matching frames with the same Toeplitz matrix: identical keys or none.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from qkdtwin.quantum import finitekey, wire
from qkdtwin.quantum.cascade import (
    CascadeBob,
    CascadeLayout,
    CascadePlan,
    CascadeResult,
    ParityOracle,
)
from qkdtwin.quantum.channel import AliceRecords, Detections
from qkdtwin.quantum.estimation import Estimate, estimate
from qkdtwin.quantum.ldpc_reconcile import LdpcAlice, LdpcBob, LdpcPlan, LdpcResult, planning_qber
from qkdtwin.quantum.params import LinkParams
from qkdtwin.quantum.privacy import poly_hash, toeplitz_hash, toeplitz_seed
from qkdtwin.quantum.statistical import SiftedHalf

FRAME_BITS = 10_000   # Cascade frame length (f and FER are quoted for this size)
TAG_BITS = 64         # verification tag disclosed per frame


class Transport(Protocol):
    """One request/reply round trip to the peer (Alice)."""

    def request(self, msg: dict[str, Any]) -> dict[str, Any]: ...


class LocalTransport:
    """In-process transport; with serialize=True every message goes through the wire format."""

    def __init__(self, handler: Callable[[dict[str, Any]], dict[str, Any]], *,
                 serialize: bool = False):
        self.handler = handler
        self.serialize = serialize
        self.round_trips = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.round_trips += 1
        if not self.serialize:
            return self.handler(msg)
        data = wire.encode(msg)
        self.bytes_sent += len(data)
        reply = wire.encode(self.handler(wire.decode(data)))
        self.bytes_received += len(reply)
        return wire.decode(reply)


@dataclass
class PartyResult:
    """What one end holds after a block."""

    key: np.ndarray | None           # secret bits (uint8 0/1), None when no key
    estimate: Estimate | None
    sifted_signal: int = 0           # sifted signal bits before sampling
    reconciled_bits: int = 0         # bits that went through reconciliation
    kept_bits: int = 0               # bits in frames that passed verification
    leaked_bits: int = 0             # reconciliation leak of kept frames
    frames: int = 0
    frames_failed: int = 0
    corrected: int = 0               # bits Bob flipped (Bob only)
    secret_bits: int = 0
    reason: str = ""
    extra: dict = field(default_factory=dict)


def _tag_key(seed: int, frame: int) -> int:
    return int(np.random.default_rng([seed, frame]).integers(1, 2**62)) << 64 | frame


def frame_layout(n_key: int) -> tuple[int, int]:
    """(frames, bits per frame) used for n_key reconcilable bits (remainder dropped)."""
    if n_key < 64:
        return 0, 0
    frames = max(1, math.ceil(n_key / FRAME_BITS))
    return frames, n_key // frames


def secret_length(params: LinkParams, est: Estimate, kept_bits: int, leaked: int,
                  kept_frames: int) -> int:
    """Bits left after privacy amplification (0 when nothing is secret).

    `gaussian` (the default) takes the estimate's stat_sigmas bounds and `security_margin`;
    `lim2014` takes Lim et al.'s finite-key bound (`qkdtwin.quantum.finitekey`)."""
    if est.aborted or kept_bits == 0:
        return 0
    if params.finite_key == "lim2014":
        fk = finitekey.bound(params, est.sifted, est.disclosed, est.errors, kept_bits)
        return fk.secret_bits(leaked + TAG_BITS * kept_frames)
    raw = kept_bits * est.secret_fraction()
    length = math.floor(raw - leaked - TAG_BITS * kept_frames - params.security_margin)
    return max(length, 0)


def _split_sifted(params: LinkParams, cls: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into the sifted list) disclosed for estimation, and kept for the key."""
    rng = np.random.default_rng(seed)
    sig = np.flatnonzero(cls == 0)
    other = np.flatnonzero(cls != 0)
    n_sample = max(1, int(round(len(sig) * params.sample_fraction))) if len(sig) else 0
    pick = np.zeros(len(sig), bool)
    pick[rng.choice(len(sig), n_sample, replace=False)] = True
    disclosed = np.sort(np.concatenate([sig[pick], other]))
    return disclosed, sig[~pick]


def _counts(det: list[int], sifted_cls: np.ndarray, disc_cls: np.ndarray,
            disc_err: np.ndarray) -> tuple[list, list, list, list]:
    """Detections, sifted, disclosed and erroneous disclosed bits per intensity class."""
    sif = np.bincount(sifted_cls, minlength=3)[:3].tolist()
    dis = np.bincount(disc_cls, minlength=3)[:3].tolist()
    err = np.bincount(disc_cls, weights=disc_err, minlength=3)[:3].astype(int).tolist()
    return list(det), sif, dis, err


def _detections(det_cls: np.ndarray) -> list[int]:
    return np.bincount(det_cls, minlength=3)[:3].tolist()


class AlicePostProcessor:
    """Alice's side: a message handler. `result` is set when the block is finished."""

    def __init__(self, params: LinkParams, records: AliceRecords | SiftedHalf,
                 rng: np.random.Generator | None = None):
        self.params = params
        self.records = records
        self.rng = rng or np.random.default_rng()
        self.result: PartyResult | None = None
        self._oracle: ParityOracle | None = None
        self._recon: tuple[np.ndarray, np.ndarray] | None = None  # key frames, leak per frame
        if isinstance(records, SiftedHalf):  # a statistical block: sifted already
            self._sifted(records.det, records.cls, records.bits, records.sent)

    def _sifted(self, det: list[int], cls: np.ndarray, bits: np.ndarray, sent: list) -> None:
        self._det = det
        self._cls = cls
        self._bits = bits
        self._sent = [int(x) for x in sent]

    @property
    def done(self) -> bool:
        return self.result is not None

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        kind = msg.get("type")
        method = getattr(self, f"_on_{kind}", None)
        if method is None:
            raise ValueError(f"unexpected post-processing message {kind!r}")
        return method(msg)

    def _on_sift(self, msg: dict) -> dict:
        rec = self.records
        if isinstance(rec, SiftedHalf):
            raise ValueError("this block was drawn sifted (statistical link): nothing to sift")
        if int(msg["first_slot"]) != rec.first_slot or int(msg["end_slot"]) != rec.end_slot:
            raise ValueError(f"block slots [{msg['first_slot']}, {msg['end_slot']}) do not match "
                             f"Alice's records [{rec.first_slot}, {rec.end_slot})")
        slots = np.asarray(msg["positions"], np.int64)
        bob_basis = np.unpackbits(np.asarray(msg["basis"], np.uint8), count=len(slots))
        cls, bit, basis = rec.lookup(slots, self.rng)
        match = basis == bob_basis
        self._sifted(_detections(cls), cls[match], bit[match], rec.sent.tolist())
        return {"type": "sift_reply", "basis": np.packbits(basis), "cls": cls,
                "sent": self._sent}

    def _on_estimate(self, msg: dict) -> dict:
        disclosed, keep = _split_sifted(self.params, self._cls, int(msg["sample_seed"]))
        bob_bits = np.unpackbits(np.asarray(msg["bits"], np.uint8), count=len(disclosed))
        mine = self._bits[disclosed]
        err = (mine != bob_bits).astype(np.int64)
        det, sif, dis, errs = _counts(self._det, self._cls, self._cls[disclosed], err)
        self._est = estimate(self.params, self._sent, det, sif, dis, errs)
        self._key_bits = self._bits[keep]
        if self._est.aborted:
            self.result = PartyResult(None, self._est, sif[0], reason=self._est.reason)
        return {"type": "estimate_reply", "bits": np.packbits(mine)}

    def _on_abort(self, msg: dict) -> dict:
        self.result = PartyResult(None, getattr(self, "_est", None), reason=str(msg["reason"]))
        return {"type": "abort_reply"}

    def _on_parity(self, msg: dict) -> dict:
        _expect(self.params, "cascade")
        if "plan" in msg:
            plan = CascadePlan.from_dict(msg["plan"])
            bits = self._key_bits[: plan.n * plan.frames].reshape(plan.frames, plan.n)
            self._oracle = ParityOracle(plan, bits)
            self._recon = (bits, self._oracle.disclosed_per_frame)
        if self._oracle is None:
            raise ValueError("parity query before the Cascade plan")
        par = self._oracle.answer(np.asarray(msg["nodes"], np.int64))
        return {"type": "parity_reply", "parities": np.packbits(par)}

    def _on_syndrome(self, msg: dict) -> dict:
        _expect(self.params, "ldpc")
        alice = LdpcAlice(LdpcPlan.from_dict(msg["plan"]), self._key_bits, self.rng)
        self._recon = (alice.key, alice.disclosed_per_frame)
        return {"type": "syndrome_reply", "syndromes": alice.packed_syndromes()}

    def _on_confirm(self, msg: dict) -> dict:
        if self._recon is None:
            raise ValueError("confirm before reconciliation")
        key, disclosed = self._recon
        frames = len(key)
        seed = int(msg["tag_seed"])
        tags = np.array([poly_hash(key[f], _tag_key(seed, f)) % (1 << TAG_BITS)
                         for f in range(frames)], np.uint64)
        match = tags == np.asarray(msg["tags"], np.uint64)
        kept = key[match].ravel()
        leaked = int(disclosed[match].sum())
        length = secret_length(self.params, self._est, len(kept), leaked, int(match.sum()))
        final = None
        if length > 0:
            final = toeplitz_hash(kept, length, toeplitz_seed(int(msg["pa_seed"]), len(kept),
                                                              length))
        self.result = PartyResult(final, self._est, self._est.sifted[0], key.size,
                                  len(kept), leaked, frames, int((~match).sum()),
                                  secret_bits=length,
                                  reason="" if length > 0 else "no secret bits left")
        return {"type": "confirm_reply", "match": match, "length": length}


def _expect(params: LinkParams, method: str) -> None:
    """Alice reconciles only the way her own lab file says (the peer cannot choose)."""
    if params.reconciliation != method:
        raise ValueError(f"this link reconciles with {params.reconciliation}, "
                         f"not {method}")


class BobPostProcessor:
    """Bob's side: drives the block's post-processing over a transport."""

    def __init__(self, params: LinkParams, detections: Detections | SiftedHalf,
                 transport: Transport, rng: np.random.Generator | None = None):
        self.params = params
        self.det = detections
        self.transport = transport
        self.rng = rng or np.random.default_rng()
        self.reconciliation_round_trips = 0

    def _seed(self) -> int:
        return int(self.rng.integers(0, 2**62))

    def _sift(self) -> tuple[list[int], np.ndarray, np.ndarray, list[int]]:
        """Detections per class, the sifted bits' classes, Bob's sifted bits, pulses sent."""
        d = self.det
        if isinstance(d, SiftedHalf):  # a statistical block: sifted already
            return d.det, d.cls, d.bits, d.sent
        rep = self.transport.request({"type": "sift", "first_slot": d.first_slot,
                                      "end_slot": d.end_slot, "positions": d.positions,
                                      "basis": np.packbits(d.basis)})
        alice_basis = np.unpackbits(np.asarray(rep["basis"], np.uint8), count=len(d.positions))
        det_cls = np.asarray(rep["cls"], np.uint8)
        match = alice_basis == d.basis
        return (_detections(det_cls), det_cls[match], d.bit[match],
                [int(x) for x in rep["sent"]])

    def run(self) -> PartyResult:
        t = self.transport
        det_counts, cls, bits, sent = self._sift()
        # estimation on a disclosed sample
        sample_seed = self._seed()
        disclosed, keep = _split_sifted(self.params, cls, sample_seed)
        rep = t.request({"type": "estimate", "sample_seed": sample_seed,
                         "bits": np.packbits(bits[disclosed])})
        alice_bits = np.unpackbits(np.asarray(rep["bits"], np.uint8), count=len(disclosed))
        err = (alice_bits != bits[disclosed]).astype(np.int64)
        det, sif, dis, errs = _counts(det_counts, cls, cls[disclosed], err)
        est = estimate(self.params, sent, det, sif, dis, errs)
        if est.aborted:
            return PartyResult(None, est, sif[0], reason=est.reason)
        res = self._reconcile(bits[keep], est)
        if isinstance(res, str):
            t.request({"type": "abort", "reason": res})
            return PartyResult(None, est, sif[0], reason=res)
        self.reconciliation_round_trips = res.round_trips
        frames = len(res.key)
        tag_seed = self._seed()
        tags = np.array([poly_hash(res.key[f], _tag_key(tag_seed, f)) % (1 << TAG_BITS)
                         for f in range(frames)], np.uint64)
        pa_seed = self._seed()
        rep = t.request({"type": "confirm", "tag_seed": tag_seed, "tags": tags,
                         "pa_seed": pa_seed})
        match = np.asarray(rep["match"], bool)
        kept = res.key[match].ravel()
        leaked = int(res.leaked_per_frame[match].sum())
        length = secret_length(self.params, est, len(kept), leaked, int(match.sum()))
        if length != int(rep["length"]):
            raise ValueError(f"secret length disagrees: Bob {length}, Alice {rep['length']}")
        final = None
        if length > 0:
            final = toeplitz_hash(kept, length, toeplitz_seed(pa_seed, len(kept), length))
        return PartyResult(final, est, sif[0], res.key.size, len(kept), leaked, frames,
                           int((~match).sum()), res.flips, length,
                           "" if length > 0 else "no secret bits left",
                           {"leaked_all_frames": res.leaked_bits,
                            "reconciliation_round_trips": res.round_trips})

    def _reconcile(self, key_bits: np.ndarray, est: Estimate) -> CascadeResult | LdpcResult | str:
        """Bob's corrected frames, or the reason there are none."""
        qber = max(est.qber, 1e-3)
        if self.params.reconciliation == "ldpc":
            qber = planning_qber(est.qber, est.disclosed[0])
            try:
                plan = LdpcPlan.for_block(len(key_bits), qber, self._seed())
            except ValueError as exc:
                return str(exc)
            rep = self.transport.request({"type": "syndrome", "plan": plan.to_dict()})
            return LdpcBob(plan, key_bits, qber).decode(np.asarray(rep["syndromes"], np.uint8))
        frames, n = frame_layout(len(key_bits))
        if frames == 0:
            return "too few sifted bits"
        plan = CascadePlan.for_qber(n, frames, qber, self._seed())
        first = [True]

        def ask(nodes: np.ndarray) -> np.ndarray:
            msg = {"type": "parity", "nodes": nodes}
            if first[0]:
                msg["plan"] = plan.to_dict()
                first[0] = False
            r = self.transport.request(msg)
            return np.unpackbits(np.asarray(r["parities"], np.uint8), count=len(nodes))

        y = key_bits[: n * frames].reshape(frames, n)
        return CascadeBob(plan, y, ask, CascadeLayout(plan)).run()


def new_seed() -> int:
    """A seed for tag keys / PA from the OS (for callers that want one)."""
    return secrets.randbits(62)
