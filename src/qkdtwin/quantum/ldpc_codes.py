"""LDPC mother codes for reconciliation and their rate adaptation.

A family of irregular codes, two lengths by eleven rates, each built from a fixed seed so both
ends hold the same parity-check matrix without sending it. One frame of a block is a code
word of length n: k key bits, p punctured bits (random, unknown to Bob: they hide p bits of
the syndrome) and s shortened bits (zero, known to both). Choosing p and s per block moves
the code's rate to the QBER (Elkouss, Martinez-Mateo, Martin, "Untainted puncturing for
irregular low-density parity-check codes", IEEE WCL 2012; the rate-adaptive scheme is their
2009 one), so a handful of mother codes serve every QBER from 0.5 % to 9 %.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np

from qkdtwin.quantum.keyrate import h2

MISSING = ("LDPC reconciliation needs the PyPI packages ldpc and scipy, which this "
           "environment lacks (the container images leave them out by default: "
           "QKDTWIN_IMAGE_EXCLUDE, docs/runtimes.md)")

LENGTHS = (16_384, 65_536)
# rates 0.05 apart, so a frame never needs more than 0.05 n punctured bits (puncturing
# costs the decoder more than shortening)
RATES = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
# variable-node degrees (fraction of nodes); checks as regular as the edge count allows.
# Chosen over a few candidates for frame error rate at f 1.2-1.3 with random construction.
VAR_DEGREES = {3: 0.75, 4: 0.10, 14: 0.15}
CODE_SEED = 0x514B4454  # "QKDT": changing it changes every code, so both ends must agree
MAX_ITER = 60
# sum-product: at the same f it fails far fewer frames than normalised min-sum on these codes
# (QBER 1 %, f 1.4: 0 of 10 against 5 of 10) for twice the time per frame
BP_METHOD = "product_sum"


@functools.cache
def parity_check(n: int, rate: float):
    """The (n(1-rate)) x n parity-check matrix of mother code (n, rate), built by matching
    edge sockets with a seeded permutation; repeated edges are merged."""
    if n not in LENGTHS or rate not in RATES:
        raise ValueError(f"no LDPC mother code of length {n} and rate {rate}")
    m = checks(n, rate)
    rng = np.random.default_rng([CODE_SEED, n, round(rate * 100)])
    counts = {d: int(frac * n) for d, frac in VAR_DEGREES.items()}
    first = next(iter(VAR_DEGREES))
    counts[first] += n - sum(counts.values())
    degrees = np.repeat(np.array(list(counts), np.int64), list(counts.values()))
    rng.shuffle(degrees)
    var = np.repeat(np.arange(n, dtype=np.int64), degrees)
    chk = np.arange(len(var), dtype=np.int64) % m
    rng.shuffle(chk)
    edges = np.unique(chk * n + var)
    ones = np.ones(len(edges), np.uint8)
    return _sparse().csr_matrix((ones, (edges // n, edges % n)), shape=(m, n))


def _sparse():
    """scipy.sparse, imported on first use: only LDPC links need it."""
    try:
        import scipy.sparse
    except ImportError as exc:
        raise RuntimeError(MISSING) from exc
    return scipy.sparse


def checks(n: int, rate: float) -> int:
    """Parity checks (syndrome bits) of mother code (n, rate)."""
    return int(round(n * (1.0 - rate)))


def syndromes(n: int, rate: float, words: np.ndarray) -> np.ndarray:
    """H x mod 2 for each row of `words` (frames x n, 0/1): frames x m, uint8."""
    h = parity_check(n, rate).astype(np.int32)
    return ((h @ np.asarray(words, np.int32).T) & 1).T.astype(np.uint8)


_local = threading.local()


def decoder(n: int, rate: float):
    """A belief-propagation syndrome decoder for mother code (n, rate), one per thread
    (the decoder keeps state between calls)."""
    try:
        from ldpc import BpDecoder  # imported here: only links that reconcile with LDPC need it
    except ImportError as exc:
        raise RuntimeError(MISSING) from exc

    cache = getattr(_local, "decoders", None)
    if cache is None:
        cache = _local.decoders = {}
    if (n, rate) not in cache:
        cache[(n, rate)] = BpDecoder(parity_check(n, rate), error_rate=0.05,
                                     max_iter=MAX_ITER, bp_method=BP_METHOD,
                                     schedule="parallel")
    return cache[(n, rate)]


def adapt(n: int, k: int, leak: int) -> tuple[float, int, int] | None:
    """(rate, punctured, shortened) that carry k key bits in a frame of length n while
    disclosing `leak` bits (syndrome minus punctured); None when no mother code can.

    The highest-rate mother code whose syndrome is at least `leak` long is taken: it needs
    the fewest punctured bits (at most 0.05 n with the family's spacing of rates)."""
    for rate in sorted(RATES, reverse=True):
        m = checks(n, rate)
        if m < leak:
            continue
        punctured = m - leak
        shortened = n - k - punctured
        return (rate, punctured, shortened) if shortened >= 0 else None
    return None


def max_key_bits(n: int, f: float, qber: float) -> int:
    """Most key bits one frame of length n carries at efficiency f (0 when none)."""
    h = h2(qber)
    best = 0
    for rate in RATES:
        m = checks(n, rate)
        # this code is the chosen one while f k h <= m, and shortening needs k + p <= n
        k = min(math.floor(m / (f * h)) if h else n, math.floor((n - m) / (1 - f * h)))
        while k > best and adapt(n, k, math.ceil(f * k * h)) is None:
            k -= 1
        best = max(best, min(k, n))
    return best
