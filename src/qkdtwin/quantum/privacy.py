"""Verification (polynomial universal hash) and privacy amplification (Toeplitz, via FFT)."""

from __future__ import annotations

import functools
import threading

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


def toeplitz_hash(bits: np.ndarray, out_len: int, seed_bits: np.ndarray,
                  backend: str | None = None) -> np.ndarray:
    """y = T x (mod 2) with T the out_len x n Toeplitz matrix given by n+out_len-1 seed bits.

    T[i, j] = seed[i - j + n - 1]; computed as a real FFT convolution (exact: sums < 2^53).
    `backend` is "ducc0" or "numpy" (default: ducc0 when installed); both give the same bits.
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
    backend = backend or default_backend()
    if backend not in _BACKENDS:
        raise ValueError(f"unknown privacy amplification backend {backend!r}: "
                         f"choose one of {', '.join(_BACKENDS)}")
    conv = _BACKENDS[backend](x, t, n + m - 1)
    # c[l] = sum_j t[l-j] x[j]; y[i] = c[i + n - 1]; circular aliasing only hits l < n - 1
    y = np.rint(conv[n - 1:n - 1 + m]).astype(np.int64)
    return (y & 1).astype(np.uint8)


def toeplitz_seed(rng_seed: int, n: int, m: int) -> np.ndarray:
    """The n+m-1 seed bits both ends derive from a shared random seed."""
    return np.random.default_rng(rng_seed).integers(0, 2, n + m - 1, dtype=np.uint8)


def default_backend() -> str:
    """ducc0 when it is installed (2.5x numpy at 10^6 bits), else numpy."""
    return "ducc0" if _ducc_fft() is not None else "numpy"


def _numpy_convolve(x: np.ndarray, t: np.ndarray, length: int) -> np.ndarray:
    size = _fast_len(length)
    fx = np.fft.rfft(x.astype(np.float64), size)
    fx *= np.fft.rfft(t.astype(np.float64), size)
    return np.fft.irfft(fx, size)


def _ducc_convolve(x: np.ndarray, t: np.ndarray, length: int) -> np.ndarray:
    fft = _ducc_fft()
    if fft is None:
        raise RuntimeError("privacy amplification backend ducc0 is not installed "
                           "(pip install ducc0), use backend='numpy'")
    size = fft.good_size(length, True)
    buf, spectrum, seed_spectrum = _scratch_buffers(size)
    buf[:len(x)] = x
    buf[len(x):] = 0.0
    fft.r2c(buf, out=spectrum)
    buf[:len(t)] = t
    buf[len(t):] = 0.0
    fft.r2c(buf, out=seed_spectrum)
    spectrum *= seed_spectrum
    return fft.c2r(spectrum, lastsize=size, forward=False, inorm=2, out=buf)


def _scratch_buffers(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real buffer and two spectra of `size`, kept per thread for the next block of that size.

    Fresh arrays cost more than the transforms (page faults: 83 ms against 36 ms for a
    10^6-bit block); buffers above SCRATCH_MAX_SIZE are not kept, to bound a module's memory.
    """
    held = getattr(_SCRATCH, "buffers", None)
    if held is not None and held[0].size == size:
        return held
    buffers = (np.empty(size), np.empty(size // 2 + 1, np.complex128),
               np.empty(size // 2 + 1, np.complex128))
    _SCRATCH.buffers = buffers if size <= SCRATCH_MAX_SIZE else None
    return buffers


@functools.cache
def _ducc_fft():
    """ducc0's FFT module, or None; imported on first use (it is left out of the images)."""
    try:
        import ducc0.fft as fft
    except ImportError:
        return None
    return fft


SCRATCH_MAX_SIZE = 1 << 22  # 4 Mi samples: 96 MB of buffers kept per thread at most
_SCRATCH = threading.local()
_BACKENDS = {"numpy": _numpy_convolve, "ducc0": _ducc_convolve}


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
