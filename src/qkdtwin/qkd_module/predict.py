"""The model's prediction of a module's key rate: the analytic gains and QBERs of
`qkdtwin.quantum.keyrate` fed through the emulator's own finite-size choices.

A module post-processes blocks of exactly `block_pulses(params)` pulses. For one such block
the expected counts per intensity class (pulses sent, detections = sent x gain, sifted = half,
disclosed = all decoy/vacuum bits and `sample_fraction` of the signal bits, errors =
disclosed x QBER) go through the same `estimate` (decoy bounds with `stat_sigmas` Poisson
deviations) and the same `secret_length` (Cascade leak f n H2(QBER) with f = CASCADE_F,
64 verification bits per frame, `security_margin`) as the post-processing itself. Key bits
per block over the block's link time is the predicted secret key rate of the link; a
module delivers `time_scale` times that per wall second when its real-time factor is 1.

(`qkdtwin.quantum.link.predict_block`, in progress by the quantum package's author, computes
the same; this one is kept here so the service does not depend on unfinished code.)
"""

from __future__ import annotations

import math
from typing import Any

from qkdtwin.qkd_module.config import block_pulses
from qkdtwin.quantum import keyrate
from qkdtwin.quantum.estimation import estimate
from qkdtwin.quantum.params import LinkParams
from qkdtwin.quantum.postprocess import frame_layout, secret_length

CASCADE_F = 1.07  # measured by benchmarks/bench_reconcile.py for QBER 1-5 % (1.06-1.08)


def _class_yield(p: LinkParams, mean: float) -> tuple[float, float]:
    if p.protocol == "ideal":
        return keyrate.single_photon_yield(p), keyrate.single_photon_error(p)
    if mean > 0:
        return keyrate.gain(p, mean), keyrate.qber(p, mean)
    return p.dark_count_prob, keyrate.E0


def block_prediction(p: LinkParams, n_pulses: int | None = None) -> dict[str, Any]:
    """Expected outcome of one block (default: the module's block size) and the rates."""
    n = block_pulses(p) if n_pulses is None else int(n_pulses)
    sent, det, sif, dis, err = [], [], [], [], []
    for c, (prob, mean) in enumerate(p.intensity_classes):
        q, e = _class_yield(p, mean)
        s = n * prob
        sift = s * q * keyrate.Q_SIFT
        disc = sift * p.sample_fraction if c == 0 else sift
        sent.append(round(s))
        det.append(round(s * q))
        sif.append(round(sift))
        dis.append(round(disc))
        err.append(round(disc * e))
    est = estimate(p, sent, det, sif, dis, err)
    frames, per_frame = frame_layout(sif[0] - dis[0])
    kept = frames * per_frame
    qber = err[0] / dis[0] if dis[0] else 0.5
    leak = math.ceil(CASCADE_F * kept * keyrate.h2(qber))
    secret = secret_length(p, est, kept, leak, frames)
    link_s = n / p.source_rate_hz
    return {"block_pulses": n, "block_link_s": link_s, "qber": qber,
            "aborted": est.aborted, "sifted_bits": sif[0], "reconciled_bits": kept,
            "leaked_bits": leak, "secret_bits": secret,
            "skr_bps": secret / link_s, "sifted_bps": sif[0] / link_s,
            "asymptotic_skr_bps": keyrate.rate_per_pulse(p, keyrate.protocol_model(p))
            * p.source_rate_hz}
