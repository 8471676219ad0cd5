"""Verification (polynomial universal hash) and privacy amplification (Toeplitz, via FFT)."""

from __future__ import annotations

import numpy as np

MERSENNE_127 = (1 << 127) - 1
TAG_BITS = 127  # bits a verification tag discloses (subtracted before privacy amplification)


def poly_hash(bits: np.ndarray, key: int) -> int:
    """Polynomial hash over GF(2^127 - 1) of the key packed in 64-bit words.

    Two different keys of L words collide for at most L/2^127 of the hash keys.
    """
    packed = np.packbits(np.asarray(bits, np.uint8).ravel())
    pad = (-len(packed)) % 8
    words = np.concatenate([packed, np.zeros(pad, np.uint8)]).view(">u8").tolist()
    h = 0
    k = key % MERSENNE_127
    for w in words:
        h = (h * k + w) % MERSENNE_127
    # the length is hashed too, so keys that differ only by trailing zeros differ
    return (h * k + len(bits)) % MERSENNE_127


def toeplitz_hash(bits: np.ndarray, out_len: int, seed_bits: np.ndarray) -> np.ndarray:
    """y = T x (mod 2) with T the out_len x n Toeplitz matrix given by n+out_len-1 seed bits.

    T[i, j] = seed[i - j + n - 1]; computed as a real FFT convolution (exact: sums < 2^53).
    """
    x = np.asarray(bits, np.uint8).ravel()
    n = len(x)
    m = int(out_len)
    if m <= 0 or n == 0:
        return np.zeros(max(m, 0), np.uint8)
    if m > n:
        raise ValueError(f"cannot amplify {n} bits to {m}")
    t = np.asarray(seed_bits, np.uint8).ravel()
    if len(t) != n + m - 1:
        raise ValueError(f"Toeplitz seed needs {n + m - 1} bits, got {len(t)}")
    size = _fast_len(n + m - 1)
    fx = np.fft.rfft(x.astype(np.float64), size)
    ft = np.fft.rfft(t.astype(np.float64), size)
    conv = np.fft.irfft(fx * ft, size)
    # c[l] = sum_j t[l-j] x[j]; y[i] = c[i + n - 1]; circular aliasing only hits l < n - 1
    y = np.rint(conv[n - 1:n - 1 + m]).astype(np.int64)
    return (y & 1).astype(np.uint8)


def toeplitz_seed(rng_seed: int, n: int, m: int) -> np.ndarray:
    """The n+m-1 seed bits both ends derive from a shared random seed."""
    return np.random.default_rng(rng_seed).integers(0, 2, n + m - 1, dtype=np.uint8)


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b >= n (numpy's pocketfft is fastest on such sizes)."""
    best = 1 << (n - 1).bit_length()
    p3 = 1
    while p3 < best:
        p2 = p3
        while p2 < n:
            p2 *= 2
        best = min(best, p2)
        p3 *= 3
    return best
