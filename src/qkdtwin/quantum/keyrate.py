"""Analytic (asymptotic) models of BB84 with weak coherent pulses.

Formulas: Lo, Ma, Chen, PRL 94, 230504 (2005) and Ma, Qi, Zhao, Lo (MQZL05), PRA 72, 012326
(2005); GLLP for no decoys; Shor-Preskill for an ideal single-photon source. See
docs/quantum.md for the equations and the GYS parameter set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qkdtwin.quantum.params import LinkParams

MODELS = ("infinite-decoy", "vacuum-weak-decoy", "no-decoy", "ideal")
Q_SIFT = 0.5  # basis sifting factor q of standard BB84
E0 = 0.5      # error probability of a background click
MU_MIN, MU_MAX, MU_STEPS = 1e-7, 1.5, 240  # the optimiser's log grid of mu


def h2(p: float) -> float:
    """Binary entropy in bits (0 at p<=0, clipped at 1 for p>=0.5)."""
    if p <= 0.0:
        return 0.0
    if p >= 0.5:
        return 1.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def effective_misalignment(p: LinkParams) -> float:
    """Intrinsic error plus intercept-resend on a fraction of pulses: e_d + f(1/4 - e_d/2)."""
    return p.misalignment + p.eve_fraction * (0.25 - p.misalignment / 2.0)


def gain(p: LinkParams, mu: float | None = None) -> float:
    """Q_mu = Y0 + 1 - exp(-eta mu)."""
    mu = p.mu if mu is None else mu
    return p.dark_count_prob + 1.0 - math.exp(-p.eta * mu)


def qber(p: LinkParams, mu: float | None = None) -> float:
    """E_mu from E_mu Q_mu = e0 Y0 + e_det (1 - exp(-eta mu))."""
    mu = p.mu if mu is None else mu
    q = gain(p, mu)
    return (E0 * p.dark_count_prob + effective_misalignment(p) * (1.0 - math.exp(-p.eta * mu))) / q


def single_photon_yield(p: LinkParams) -> float:
    y0, eta = p.dark_count_prob, p.eta
    return y0 + eta - y0 * eta


def single_photon_error(p: LinkParams) -> float:
    return (E0 * p.dark_count_prob + effective_misalignment(p) * p.eta) / single_photon_yield(p)


def _rate_infinite(p: LinkParams, mu: float) -> float:
    q_mu, e_mu = gain(p, mu), qber(p, mu)
    q1 = single_photon_yield(p) * mu * math.exp(-mu)
    e1 = single_photon_error(p)
    return Q_SIFT * (-q_mu * p.ec_efficiency * h2(e_mu) + q1 * (1.0 - h2(e1)))


def decoy_bounds(p: LinkParams, mu: float, nu: float) -> tuple[float, float]:
    """MQZL05 eqs. 34 and 37: lower bound on Y1, upper bound on e1 from vacuum + weak decoy."""
    y0 = p.dark_count_prob
    q_mu, q_nu = gain(p, mu), gain(p, nu)
    eq_nu = qber(p, nu) * q_nu
    y1_l = mu / (mu * nu - nu * nu) * (
        q_nu * math.exp(nu) - q_mu * math.exp(mu) * nu * nu / (mu * mu)
        - (mu * mu - nu * nu) / (mu * mu) * y0
    )
    if y1_l <= 0.0:
        return 0.0, 0.5
    e1_u = (eq_nu * math.exp(nu) - E0 * y0) / (y1_l * nu)
    return y1_l, min(max(e1_u, 0.0), 0.5)


def _rate_vacuum_weak(p: LinkParams, mu: float) -> float:
    if not p.nu < mu:
        return 0.0
    y1_l, e1_u = decoy_bounds(p, mu, p.nu)
    q_mu, e_mu = gain(p, mu), qber(p, mu)
    q1_l = y1_l * mu * math.exp(-mu)
    return Q_SIFT * (-q_mu * p.ec_efficiency * h2(e_mu) + q1_l * (1.0 - h2(e1_u)))


def _rate_gllp(p: LinkParams, mu: float) -> float:
    q_mu, e_mu = gain(p, mu), qber(p, mu)
    delta = (1.0 - (1.0 + mu) * math.exp(-mu)) / q_mu
    if delta >= 1.0:
        return 0.0
    return Q_SIFT * q_mu * (
        -p.ec_efficiency * h2(e_mu) + (1.0 - delta) * (1.0 - h2(e_mu / (1.0 - delta)))
    )


def _rate_ideal(p: LinkParams) -> float:
    """Single-photon source, perfect reconciliation (Shor-Preskill): q Y1 (1 - 2 H2(e1))."""
    return Q_SIFT * single_photon_yield(p) * (1.0 - 2.0 * h2(single_photon_error(p)))


def shor_preskill(e: float) -> float:
    """Ideal rate per sifted... per pulse with q: q (1 - 2 H2(e)); zero at e ~ 11.0 %."""
    return Q_SIFT * (1.0 - 2.0 * h2(e))


def rate_per_pulse(p: LinkParams, model: str, mu: float | None = None) -> float:
    """Asymptotic secret key rate per pulse (clipped at 0) for one model at intensity mu."""
    mu = p.mu if mu is None else mu
    if model == "infinite-decoy":
        r = _rate_infinite(p, mu)
    elif model == "vacuum-weak-decoy":
        r = _rate_vacuum_weak(p, mu)
    elif model == "no-decoy":
        r = _rate_gllp(p, mu)
    elif model == "ideal":
        r = _rate_ideal(p)
    else:
        raise ValueError(f"unknown model {model!r} (known: {', '.join(MODELS)})")
    return max(r, 0.0)


def optimal_mu(p: LinkParams, model: str) -> tuple[float, float]:
    """(mu, rate) maximising the rate per pulse; for `ideal`, mu is irrelevant (nan).

    The grid is logarithmic: without decoys the best mu shrinks with the transmittance
    (about 0.006 at 30 km under GYS), below the first steps of a linear grid, which then
    saw no positive rate and cut the maximum distance short (27.6 instead of 40.2 km)."""
    if model == "ideal":
        return math.nan, rate_per_pulse(p, model)
    lo = p.nu * 1.0001 if model == "vacuum-weak-decoy" else MU_MIN
    grid = [lo * (MU_MAX / lo) ** (i / MU_STEPS) for i in range(MU_STEPS + 1)]
    rates = [rate_per_pulse(p, model, m) for m in grid]
    i = max(range(len(grid)), key=rates.__getitem__)
    if rates[i] <= 0.0:
        return math.nan, 0.0
    # golden-section refinement in log mu between the grid maximum's neighbours
    a, b = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, len(grid) - 1)])
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(40):
        if rate_per_pulse(p, model, math.exp(c)) > rate_per_pulse(p, model, math.exp(d)):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    m = math.exp((a + b) / 2.0)
    best = rate_per_pulse(p, model, m)
    return (m, best) if best >= rates[i] else (grid[i], rates[i])


@dataclass(frozen=True)
class ModelPoint:
    model: str
    distance_km: float
    gain: float
    qber: float
    mu: float            # the link's mu
    rate_per_pulse: float
    rate_bps: float
    optimal_mu: float
    optimal_rate_per_pulse: float
    optimal_rate_bps: float

    def to_dict(self) -> dict:
        d = self.__dict__.copy()
        for k, v in d.items():
            if isinstance(v, float) and math.isnan(v):
                d[k] = None
        return d


def evaluate(p: LinkParams, model: str) -> ModelPoint:
    """All figures of one model at the link's length."""
    if model == "ideal":
        g, e, mu = single_photon_yield(p), single_photon_error(p), math.nan
    else:
        g, e, mu = gain(p), qber(p), p.mu
    r = rate_per_pulse(p, model)
    m_opt, r_opt = optimal_mu(p, model)
    return ModelPoint(model, p.length_km, g, e, mu, r, r * p.source_rate_hz, m_opt, r_opt,
                      r_opt * p.source_rate_hz)


def protocol_model(p: LinkParams) -> str:
    """The asymptotic model matching what the emulator runs for this link's protocol."""
    return {"bb84-decoy": "vacuum-weak-decoy", "bb84": "no-decoy", "ideal": "ideal"}[p.protocol]


def max_distance(p: LinkParams, model: str, *, optimise_mu: bool = True,
                 limit_km: float = 1000.0) -> float:
    """Distance (km) where the model's rate falls to zero (with optimal mu by default)."""
    def positive(L: float) -> bool:
        q = p.replace(length_km=L)
        r = optimal_mu(q, model)[1] if optimise_mu else rate_per_pulse(q, model)
        return r > 0.0

    if not positive(0.0):
        return 0.0
    if positive(limit_km):
        return limit_km
    lo, hi = 0.0, limit_km
    while hi - lo > 0.01:
        mid = (lo + hi) / 2.0
        if positive(mid):
            lo = mid
        else:
            hi = mid
    return lo
