"""Finite-key secret length of one decoy-state block (Lim, Curty, Walenta, Xu, Zbinden 2014).

Lim et al., "Concise security bounds for practical decoy-state QKD", PRA 89, 022307 (2014):
Hoeffding bounds on the counts of each intensity, decoy bounds on the vacuum and single-photon
events (their eqs. 2-4), a random-sampling bound on the phase error (gamma), and

    l = s_0 + s_1 (1 - h(phi)) - lambda_EC - 6 log2(kappa / eps_sec) - log2(2 / eps_cor).

Lim's protocol draws its key from one basis at every intensity and discloses the other basis
whole. The emulator draws its key from the signal class and discloses every decoy and vacuum
bit and a sample of the signal bits, so the bounds are applied to its counts like this:

- the decoy bounds run on the sifted events of all classes (both bases), as Lim's run on the
  key basis; the error bound uses the decoy and vacuum errors, which are disclosed whole;
- Hoeffding's deviation for the errors needs their total, which includes the signal class's
  undisclosed errors: an upper bound from the disclosed sample stands in for it;
- the key is the signal class's share of those events (each single-photon event is a signal
  pulse with probability p_{mu|1}), then the kept (not disclosed, verified) part of that share:
  two more Hoeffding steps, for the vacuum and single-photon counts each;
- lambda_EC is what reconciliation disclosed (Cascade's parities), and the 64-bit verification
  tag per frame takes the place of log2(2 / eps_cor).

Each of the kappa = 21 + 5 estimates fails with probability eps_sec / kappa. This is Lim's
analysis mapped onto the emulator's protocol, not a new security proof (docs/quantum.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from qkdtwin.quantum.keyrate import h2
from qkdtwin.quantum.params import LinkParams

KAPPA = 21 + 5   # Lim's 21 terms, plus the emulator's five (module docstring)


@dataclass(frozen=True)
class FiniteKeyBound:
    """The bounds behind one block's secret length (counts are bits of the block)."""

    s0: float          # vacuum events among all sifted events, lower bound
    s1: float          # single-photon events among all sifted events, lower bound
    v1: float          # errors of those single-photon events, upper bound
    e1: float          # v1 / s1
    key_s0: float      # vacuum events among the kept key bits, lower bound
    key_s1: float      # single-photon events among the kept key bits, lower bound
    phase_error: float  # phase error rate of key_s1, upper bound (e1 + gamma)
    pa_bits: float     # 6 log2(kappa / eps_sec)

    def to_dict(self) -> dict:
        return asdict(self)

    def secret_bits(self, leaked: int) -> int:
        """Key length after privacy amplification, when `leaked` bits were disclosed."""
        raw = self.key_s0 + self.key_s1 * (1.0 - h2(self.phase_error))
        return max(math.floor(raw - leaked - self.pa_bits), 0)


def hoeffding(n: float, eps: float) -> float:
    """Deviation sqrt(n/2 ln(1/eps)) of a sum of n independent 0/1 trials (two-sided use)."""
    return math.sqrt(max(n, 0.0) / 2.0 * math.log(1.0 / eps))


def gamma(a: float, b: float, c: float, d: float) -> float:
    """Lim's random-sampling term: error rate b seen on c of c + d events, failure a."""
    if c <= 0.0 or d <= 0.0:
        return 0.5
    b = min(max(b, 1.0 / (c + d)), 0.5)
    inner = (c + d) / (c * d * (1.0 - b) * b * a * a)
    return math.sqrt((c + d) * (1.0 - b) * b / (c * d * math.log(2.0)) * math.log2(inner))


def taus(p: LinkParams) -> tuple[float, float]:
    """tau_0 and tau_1: probability that a pulse holds 0 (resp. 1) photons."""
    classes = p.intensity_classes
    tau0 = sum(pk * math.exp(-k) for pk, k in classes)
    tau1 = sum(pk * math.exp(-k) * k for pk, k in classes)
    return tau0, tau1


def bound(p: LinkParams, sifted: list[int], disclosed: list[int], errors: list[int],
          kept_bits: int) -> FiniteKeyBound:
    """Lim's bounds on one block's announced counts (signal, decoy, vacuum classes)."""
    eps = p.eps_sec / KAPPA
    (p1, k1), (p2, k2), (p3, k3) = p.intensity_classes
    tau0, tau1 = taus(p)
    dev = hoeffding(sum(sifted), eps)

    def scaled(count: float, k: float, pk: float, sign: int, d: float) -> float:
        return math.exp(k) / pk * (count + sign * d)   # pk > 0: params.py checks it

    n1_u = scaled(sifted[0], k1, p1, +1, dev)
    n2_l, n2_u = scaled(sifted[1], k2, p2, -1, dev), scaled(sifted[1], k2, p2, +1, dev)
    n3_l, n3_u = scaled(sifted[2], k3, p3, -1, dev), scaled(sifted[2], k3, p3, +1, dev)
    s0 = max(tau0 * (k2 * n3_l - k3 * n2_u) / (k2 - k3), 0.0)
    s1 = tau1 * k1 * (n2_l - n3_u - (k2 * k2 - k3 * k3) / (k1 * k1) * (n1_u - s0 / tau0)) / (
        k1 * (k2 - k3) - k2 * k2 + k3 * k3)
    s1 = max(s1, 0.0)

    # total errors: decoy and vacuum are disclosed whole, the signal class by a sample
    if disclosed[0]:
        rate_u = errors[0] / disclosed[0] + math.sqrt(math.log(1.0 / eps) / (2.0 * disclosed[0]))
        m_signal = sifted[0] * min(rate_u, 1.0)
    else:
        m_signal = sifted[0]
    m_dev = hoeffding(m_signal + errors[1] + errors[2], eps)
    m2_u = scaled(errors[1], k2, p2, +1, m_dev)
    m3_l = max(scaled(errors[2], k3, p3, -1, m_dev), 0.0)
    v1 = max(tau1 * (m2_u - m3_l) / (k2 - k3), 0.0)
    e1 = min(v1 / s1, 0.5) if s1 > 0 else 0.5

    # the signal class's share of those events, then the kept part of that share
    share = kept_bits / sifted[0] if sifted[0] else 0.0

    def in_key(events: float, photons: int, tau: float) -> float:
        p_signal = p1 * math.exp(-k1) * k1 ** photons / math.factorial(photons) / tau
        signal = max(p_signal * events - hoeffding(events, eps), 0.0)
        return max(share * signal - hoeffding(kept_bits, eps), 0.0)

    key_s0 = in_key(s0, 0, tau0) if s0 > 0 else 0.0
    key_s1 = in_key(s1, 1, tau1) if s1 > 0 else 0.0
    phase = min(e1 + gamma(eps, e1, s1 - key_s1, key_s1), 0.5) if key_s1 > 0 else 0.5
    pa_bits = 6.0 * math.log2(KAPPA / p.eps_sec)
    return FiniteKeyBound(s0, s1, v1, e1, key_s0, key_s1, phase, pa_bits)
