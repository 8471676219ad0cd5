"""Parameter estimation from one block's public data, with finite-size fluctuation bounds.

Both ends call `estimate` on the same announced counts, so they reach the same decisions
(abort, secret length) without further messages. Bounds use `stat_sigmas` standard deviations
of a Poisson count (Ma, Qi, Zhao, Lo 2005, section on statistical fluctuations).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from qkdtwin.quantum.keyrate import E0, h2
from qkdtwin.quantum.params import LinkParams


def _up(count: float, u: float) -> float:
    return count + u * math.sqrt(max(count, 0.0)) + u * u


def _down(count: float, u: float) -> float:
    return max(count - u * math.sqrt(max(count, 0.0)), 0.0)


@dataclass
class Estimate:
    sent: list[int]            # pulses per class (signal, decoy, vacuum)
    detected: list[int]        # detections per class
    sifted: list[int]          # basis-matched detections per class
    disclosed: list[int]       # sifted bits compared publicly per class
    errors: list[int]          # errors among the disclosed bits
    gains: list[float]         # Q_k
    qbers: list[float]         # E_k measured on the disclosed bits
    qber: float                # signal QBER estimate (sample)
    qber_upper: float
    y1_lower: float
    e1_upper: float
    single_photon_fraction: float  # lower bound on signal detections from single photons
    phase_error: float             # upper bound used for privacy amplification
    aborted: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    def secret_fraction(self) -> float:
        """Secret bits per reconciled key bit before subtracting the disclosed leakage."""
        if self.aborted:
            return 0.0
        return max(self.single_photon_fraction * (1.0 - h2(self.phase_error)), 0.0)


def estimate(params: LinkParams, sent: list[int], detected: list[int], sifted: list[int],
             disclosed: list[int], errors: list[int]) -> Estimate:
    u = params.stat_sigmas
    gains = [d / s if s else 0.0 for d, s in zip(detected, sent, strict=True)]
    qbers = [e / n if n else 0.0 for e, n in zip(errors, disclosed, strict=True)]
    n_s, e_s = disclosed[0], errors[0]
    qber = e_s / n_s if n_s else 0.5
    qber_up = min(_up(e_s, u) / n_s, 0.5) if n_s else 0.5
    y1_l, e1_u, frac, phase = 0.0, 0.5, 0.0, 0.5
    aborted, reason = False, ""
    if n_s == 0 or sifted[0] == 0:
        aborted, reason = True, "no signal detections"
    elif qber > params.qber_abort:
        aborted, reason = True, f"QBER {qber:.4f} above threshold {params.qber_abort}"
    elif params.protocol == "bb84-decoy":
        mu, nu = params.mu, params.nu
        q_mu_u = _up(detected[0], u) / sent[0]
        q_nu_l = _down(detected[1], u) / sent[1] if sent[1] else 0.0
        y0_u = _up(detected[2], u) / sent[2] if sent[2] else 1.0
        y0_l = _down(detected[2], u) / sent[2] if sent[2] else 0.0
        e_nu_u = min(_up(errors[1], u) / disclosed[1], 1.0) if disclosed[1] else 0.5
        eq_nu_u = e_nu_u * _up(detected[1], u) / sent[1] if sent[1] else 1.0
        y1_l = mu / (mu * nu - nu * nu) * (
            q_nu_l * math.exp(nu) - q_mu_u * math.exp(mu) * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0_u
        )
        if y1_l > 0.0:
            e1_u = min(max((eq_nu_u * math.exp(nu) - E0 * y0_l) / (y1_l * nu), 0.0), 0.5)
            q_mu = gains[0]
            frac = min(y1_l * mu * math.exp(-mu) / q_mu, 1.0) if q_mu else 0.0
        else:
            y1_l = 0.0
        phase = e1_u
    elif params.protocol == "bb84":  # GLLP: every multi-photon pulse is tagged
        mu = params.mu
        q_mu_l = _down(detected[0], u) / sent[0]
        delta = (1.0 - (1.0 + mu) * math.exp(-mu)) / q_mu_l if q_mu_l else 1.0
        frac = max(1.0 - delta, 0.0)
        phase = min(qber_up / frac, 0.5) if frac > 0 else 0.5
    else:  # ideal single-photon source
        frac, phase = 1.0, qber_up
    return Estimate(list(sent), list(detected), list(sifted), list(disclosed), list(errors),
                    gains, qbers, qber, qber_up, y1_l, e1_u, frac, phase, aborted, reason)
