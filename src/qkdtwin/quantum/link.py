"""Both ends of a link in one process: emulate a block of pulses and post-process it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from qkdtwin.quantum import keyrate
from qkdtwin.quantum.channel import AliceSource, BobDetector
from qkdtwin.quantum.estimation import Estimate, estimate
from qkdtwin.quantum.ldpc_reconcile import LdpcPlan, planning_qber
from qkdtwin.quantum.params import FINITE_KEY, LinkParams
from qkdtwin.quantum.postprocess import (
    AlicePostProcessor,
    BobPostProcessor,
    LocalTransport,
    PartyResult,
    frame_layout,
    secret_length,
)
from qkdtwin.quantum.statistical import class_rates, draw_sifted_block

FRAME_PULSES = 10_000_000  # pulses per emitted channel frame


@dataclass
class BlockOutcome:
    alice_key: np.ndarray | None
    bob_key: np.ndarray | None
    estimate: Estimate | None
    n_pulses: int
    detections: int
    alice: PartyResult
    bob: PartyResult
    round_trips: int
    bytes_exchanged: int
    cpu_emulation_s: float
    cpu_postprocess_s: float
    true_qber: float          # error rate of the reconciled bits (what Cascade corrected)
    extra: dict = field(default_factory=dict)

    @property
    def secret_bits(self) -> int:
        return 0 if self.alice_key is None else len(self.alice_key)

    @property
    def ec_efficiency(self) -> float:
        """f = leaked / (n H2(true QBER)) over the kept frames."""
        from qkdtwin.quantum.keyrate import h2
        n, e = self.bob.kept_bits, self.true_qber
        return self.bob.leaked_bits / (n * h2(e)) if n and 0 < e < 0.5 else float("nan")


def emulate(params: LinkParams, n_pulses: int, alice: AliceSource, bob: BobDetector) -> int:
    """Send n_pulses in frames from Alice to Bob; return Bob's detection count."""
    left, dets = int(n_pulses), 0
    while left > 0:
        k = min(left, FRAME_PULSES)
        dets += bob.detect(alice.emit(k))
        left -= k
    return dets


def run_link_block(params: LinkParams, n_pulses: int,
                   rng: np.random.Generator | None = None, *,
                   serialize: bool = False) -> BlockOutcome:
    """Emulate n_pulses on one link and post-process them as one block (both ends)."""
    rng = rng or np.random.default_rng()
    seeds = rng.integers(0, 2**62, 4)
    alice = AliceSource(params, np.random.default_rng(seeds[0]))
    bob = BobDetector(params, np.random.default_rng(seeds[1]))
    t0 = time.process_time()
    dets = emulate(params, n_pulses, alice, bob)
    t1 = time.process_time()
    return _post_process(params, n_pulses, alice.take(), bob.take(), seeds[2:], dets, t1 - t0,
                         serialize)


def run_statistical_block(params: LinkParams, n_pulses: int,
                          rng: np.random.Generator | None = None, *,
                          serialize: bool = False) -> BlockOutcome:
    """One block of the `statistical` model: sifted strings drawn from the decoy model's
    gains and QBERs (`statistical.draw_sifted_block`), then the same post-processing."""
    rng = rng or np.random.default_rng()
    seeds = rng.integers(0, 2**62, 3)
    t0 = time.process_time()
    block = draw_sifted_block(params, n_pulses, np.random.default_rng(seeds[0]))
    t1 = time.process_time()
    return _post_process(params, n_pulses, block.alice, block.bob, seeds[1:],
                         sum(block.bob.det), t1 - t0, serialize)


def _post_process(params: LinkParams, n_pulses: int, alice_side, bob_side, seeds,
                  dets: int, quantum_cpu_s: float, serialize: bool) -> BlockOutcome:
    t1 = time.process_time()
    a_pp = AlicePostProcessor(params, alice_side, np.random.default_rng(seeds[0]))
    transport = LocalTransport(a_pp.handle, serialize=serialize)
    b_pp = BobPostProcessor(params, bob_side, transport, np.random.default_rng(seeds[1]))
    b_res = b_pp.run()
    t2 = time.process_time()
    a_res = a_pp.result or PartyResult(None, b_res.estimate, reason=b_res.reason)
    true_qber = b_res.corrected / b_res.reconciled_bits if b_res.reconciled_bits else float("nan")
    return BlockOutcome(a_res.key, b_res.key, b_res.estimate, int(n_pulses), dets, a_res, b_res,
                        transport.round_trips, transport.bytes_sent + transport.bytes_received,
                        quantum_cpu_s, t2 - t1, true_qber)


def sifted_signal_per_pulse(p: LinkParams) -> float:
    """Expected basis-matched signal detections per pulse (from the analytic gain)."""
    if p.protocol == "ideal":
        return keyrate.Q_SIFT * keyrate.single_photon_yield(p)
    share = p.intensity_classes[0][0]
    return keyrate.Q_SIFT * share * keyrate.gain(p)


def block_pulses(p: LinkParams, block_size: int | None = None) -> int:
    """Pulses per block: enough for `block_size` (default: the link's) sifted signal bits."""
    per = sifted_signal_per_pulse(p)
    if per <= 0.0:
        raise ValueError("the link's expected detection rate is zero")
    return int(math.ceil((block_size or p.block_size) / per))


def _block_from_counts(params: LinkParams, n_pulses: int, counts: tuple[list, ...],
                       kept_qber: float, cascade_f: float) -> dict:
    """The post-processing's decisions on one block's counts, Cascade leaking
    cascade_f * n * H2(kept_qber); LDPC leaks what its plan for the block discloses."""
    sent, det, sif, dis, err = counts
    est = estimate(params, sent, det, sif, dis, err)
    kept = sif[0] - dis[0]
    if params.reconciliation == "ldpc":
        frames, kept, leak = _ldpc_layout(kept, planning_qber(est.qber, dis[0]))
    else:
        frames, n = frame_layout(kept)
        kept = frames * n
        leak = math.ceil(cascade_f * kept * keyrate.h2(kept_qber))
    secret = secret_length(params, est, kept, leak, frames)
    seconds = n_pulses / params.source_rate_hz
    return {"estimate": est, "sifted_signal": sif[0], "reconciled_bits": kept,
            "leaked_bits": leak, "secret_bits": secret,
            "secret_bps": secret / seconds if seconds else 0.0,
            "sifted_bps": sif[0] / seconds if seconds else 0.0}


def _ldpc_layout(n_key: int, qber: float) -> tuple[int, int, int]:
    """(frames, key bits, leaked bits) of the LDPC plan Bob would choose."""
    try:
        plan = LdpcPlan.for_block(n_key, qber, 0)
    except ValueError:
        return 0, 0, 0
    return plan.frames, plan.frames * plan.k, plan.frames * plan.leak_per_frame


def predict_block(params: LinkParams, n_pulses: int, *, cascade_f: float = 1.07) -> dict:
    """Expected outcome of `run_link_block` from the analytic gains and QBERs.

    Feeds the expected counts through the same finite-size estimation and secret-length
    formula the post-processing uses, with Cascade leaking cascade_f * n * H2(QBER). This is
    the prediction a deployed link's measured key rate should be compared with.
    """
    counts: tuple[list, ...] = ([], [], [], [], [])
    for c, (prob, q, e) in enumerate(class_rates(params)):
        s = n_pulses * prob
        d = s * q
        sift = d / 2.0
        disc = sift * params.sample_fraction if c == 0 else sift
        for acc, v in zip(counts, (s, d, sift, disc, disc * e), strict=True):
            acc.append(round(v))
    dis, err = counts[3], counts[4]
    e_mu = err[0] / dis[0] if dis[0] else 0.5
    return _block_from_counts(params, n_pulses, counts, e_mu, cascade_f)


def sample_block(params: LinkParams, n_pulses: int, rng: np.random.Generator, *,
                 cascade_f: float = 1.07) -> dict:
    """One random block's outcome without emulating it: the counts `run_link_block` would
    announce (pulses per class, detections, sifted bits, the disclosed sample and its
    errors) drawn from their binomial laws, then the same decisions as `predict_block`.

    Its mean is the emulator's mean: the finite-size bounds are not linear in the counts,
    so the outcome at the expected counts (`predict_block`) is a few per cent above it."""
    rates = class_rates(params)
    sent = rng.multinomial(n_pulses, [r[0] for r in rates])
    counts: tuple[list, ...] = ([], [], [], [], [])
    for c, ((_, q, e), s) in enumerate(zip(rates, sent, strict=True)):
        d = int(rng.binomial(s, min(q, 1.0)))
        sift = int(rng.binomial(d, 0.5))
        disc = (max(1, round(sift * params.sample_fraction)) if sift else 0) if c == 0 else sift
        for acc, v in zip(counts, (int(s), d, sift, disc, int(rng.binomial(disc, e))),
                          strict=True):
            acc.append(v)
    kept = counts[2][0] - counts[3][0]
    kept_qber = rng.binomial(kept, rates[0][2]) / kept if kept > 0 else 0.5
    return _block_from_counts(params, n_pulses, counts, kept_qber, cascade_f)


def finite_key_rates(params: LinkParams, block_size: int | None = None) -> dict:
    """Predicted key per pulse of blocks of `block_size` sifted signal bits, per finite-key bound.

    Next to it, the asymptotic rate of the link's protocol at the link's own mu (the finite
    rates are for that mu too; `qkdtwin keyrate` prints both). A bound the link's settings do
    not allow (lim2014 without decoy and vacuum pulses) has its reason instead of figures."""
    size = int(block_size or params.block_size)
    n = block_pulses(params, size)
    methods: dict[str, dict] = {}
    for method in FINITE_KEY:
        try:
            p = LinkParams.from_vars({"finite_key": method}, base=params)
        except ValueError as exc:
            methods[method] = {"error": str(exc)}
            continue
        secret = predict_block(p, n)["secret_bits"]
        methods[method] = {"secret_bits": secret, "rate_per_pulse": secret / n,
                           "rate_bps": secret / n * params.source_rate_hz}
    asym = keyrate.rate_per_pulse(params, keyrate.protocol_model(params))
    return {"block_size": size, "block_pulses": n, "asymptotic_rate_per_pulse": asym,
            "asymptotic_rate_bps": asym * params.source_rate_hz, "methods": methods}
