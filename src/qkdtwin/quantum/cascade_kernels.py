"""Compiled (numba) inner loops of Cascade: the layout, Alice's answers, Bob's rounds.

`cascade.py` holds the protocol objects; this module only the loops, over plain arrays.

Every (pass, frame) has a *slot*: a dyadic tree over that pass's padded, permuted copy of the
frame (node (lv, j) of a pass with `blocks` blocks of 2^K positions sits at
`blocks * (2^lv - 1) + j`), one state byte per node: KNOWN (Alice's parity is known to Bob),
APAR (her parity), BPAR (Bob's parity of his current bits), SRCH (a binary search is here).
A slot is built only when its pass needs it: a pass of two blocks (the final n/2 passes) is
first checked with a packed bit mask (one AND + parity per 64 bits) and usually never built.
Alice keeps per slot the prefix parities of her permuted bits, also built on first use.

A search is coded as one int64 `(pass << 48) | (level << 40) | j`. Bob's frames advance
independently: a frame moves to its next pass as soon as its searches are done, so a round
trip carries the pending queries of every frame at whatever pass it has reached.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

KNOWN, APAR, BPAR, SRCH = 1, 2, 4, 8
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_U1 = np.uint64(1)

# the layout as the kernels see it (built by `build_layout`)
Lay = namedtuple("Lay", "n frames passes words K blocks big perm poff inv mask goff starts "
                        "st_p st_lv tsize toff tmpl bbase abase topoff")
# Bob's mutable state
Bob = namedtuple("Bob", "y yp st mat topa cp flips")
# Alice's state
Alice = namedtuple("Alice", "x xp pre mat")


@njit(cache=True)
def shuffle(n, seed):
    """A permutation of range(n): Fisher-Yates driven by splitmix64 (same at both ends)."""
    perm = np.arange(n).astype(np.int32)
    s = np.uint64(seed)
    for i in range(n - 1, 0, -1):
        s += _GOLD
        z = (s ^ (s >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z ^= z >> np.uint64(31)
        j = np.int64(((z >> np.uint64(32)) * np.uint64(i + 1)) >> np.uint64(32))
        t = perm[i]
        perm[i] = perm[j]
        perm[j] = t
    return perm


@njit(cache=True)
def fill_pass(n, k, K, sh, perm, inv, tmpl, mask):
    """Pass arrays from a shuffle: padded order, inverse, known-padding template, mask."""
    width = 1 << K
    blocks = (n + k - 1) // k
    perm[:] = n
    for idx in range(n):
        b = idx // k
        pos = b * width + idx - b * k
        perm[pos] = sh[idx]
        inv[sh[idx]] = pos
    tmpl[:] = 0
    leaf = blocks * (width - 1)
    for s in range(blocks * width):
        if perm[s] == n:
            tmpl[leaf + s] = KNOWN
    for lv in range(K - 1, -1, -1):
        o = blocks * ((1 << lv) - 1)
        c = blocks * ((2 << lv) - 1)
        for j in range(blocks << lv):
            tmpl[o + j] = tmpl[c + 2 * j] & tmpl[c + 2 * j + 1] & KNOWN
    mask[:] = 0
    if blocks <= 2:
        for i in range(n):
            if inv[i] < width:
                mask[i >> 6] |= _U1 << np.uint64(i & 63)


@njit(cache=True)
def pack(bits, frames, n, words):
    """(frames*n) uint8 bits -> (frames*words) uint64, bit i of a frame in word i >> 6."""
    out = np.zeros(frames * words, np.uint64)
    for f in range(frames):
        for i in range(n):
            if bits[f * n + i]:
                out[f * words + (i >> 6)] |= _U1 << np.uint64(i & 63)
    return out


@njit(cache=True)
def _wparity(w):
    w ^= w >> np.uint64(32)
    w ^= w >> np.uint64(16)
    w ^= w >> np.uint64(8)
    w ^= w >> np.uint64(4)
    w ^= w >> np.uint64(2)
    w ^= w >> np.uint64(1)
    return np.uint8(w & _U1)


@njit(cache=True)
def _mask_parity(lay, xp, f, p, whole):
    """Parity of a frame's packed bits under pass p's block-0 mask (or of all of them)."""
    acc = np.uint64(0)
    o = f * lay.words
    m = p * lay.words
    for t in range(lay.words):
        acc ^= xp[o + t] if whole else xp[o + t] & lay.mask[m + t]
    return _wparity(acc)


@njit(cache=True)
def _decode(lay, g):
    """Global node id -> (pass, level, index in the frame's level, frame)."""
    r = np.searchsorted(lay.starts, g, side="right") - 1
    p = lay.st_p[r]
    lv = lay.st_lv[r]
    idx = g - lay.starts[r]
    per = lay.blocks[p] << lv
    return p, lv, idx % per, idx // per


@njit(cache=True)
def _alice_build(lay, al, p, f):
    n = lay.n
    size = lay.poff[p + 1] - lay.poff[p]
    base = lay.abase[p] + f * (size + 1)
    acc = np.uint8(0)
    al.pre[base] = 0
    for s in range(size):
        b = lay.perm[lay.poff[p] + s]
        if b < n:
            acc ^= al.x[f * n + b]
        al.pre[base + s + 1] = acc
    al.mat[p, f] = 1


@njit(cache=True)
def alice_answer(lay, al, nodes, out, per_frame):
    """Alice's parities of the queried nodes (counted per frame)."""
    for q in range(len(nodes)):
        p, lv, j, f = _decode(lay, nodes[q])
        per_frame[f] += 1
        if lay.big[p] and lv == 0 and al.mat[p, f] == 0:
            par = _mask_parity(lay, al.xp, f, p, False)
            if j == 1:
                par ^= _mask_parity(lay, al.xp, f, p, True)
            out[q] = par
            continue
        if al.mat[p, f] == 0:
            _alice_build(lay, al, p, f)
        size = lay.poff[p + 1] - lay.poff[p]
        base = lay.abase[p] + f * (size + 1)
        sh = lay.K[p] - lv
        out[q] = al.pre[base + ((j + 1) << sh)] ^ al.pre[base + (j << sh)]


# ---------------------------------------------------------------------------------- Bob
@njit(cache=True)
def _odd(s):
    return (s & KNOWN) != 0 and ((s >> 1) ^ (s >> 2)) & 1 == 1


@njit(cache=True)
def _code(p, lv, j):
    return (np.int64(p) << 48) | (np.int64(lv) << 40) | np.int64(j)


@njit(cache=True)
def _uncode(c):
    return c >> 48, (c >> 40) & 0xFF, c & ((np.int64(1) << 40) - 1)


@njit(cache=True)
def _node(lay, p, f, lv, j):
    """Index of node (lv, j) of slot (p, f) in Bob's state pool."""
    return lay.bbase[p] + f * lay.tsize[p] + lay.blocks[p] * ((1 << lv) - 1) + j


@njit(cache=True)
def _bob_build(lay, bs, p, f):
    """Build slot (p, f) from Bob's current bits and Alice's top parities."""
    n, K, blocks = lay.n, lay.K[p], lay.blocks[p]
    base = lay.bbase[p] + f * lay.tsize[p]
    st = bs.st
    st[base:base + lay.tsize[p]] = lay.tmpl[lay.toff[p]:lay.toff[p] + lay.tsize[p]]
    leaf = base + blocks * ((1 << K) - 1)
    for s in range(blocks << K):
        b = lay.perm[lay.poff[p] + s]
        if b < n:
            st[leaf + s] |= bs.y[f * n + b] << 2
    for lv in range(K - 1, -1, -1):
        o = base + blocks * ((1 << lv) - 1)
        c = base + blocks * ((2 << lv) - 1)
        for j in range(blocks << lv):
            st[o + j] |= (st[c + 2 * j] ^ st[c + 2 * j + 1]) & BPAR
    for b in range(blocks):
        st[base + b] |= KNOWN | (bs.topa[lay.topoff[p] + f * blocks + b] << 1)
    bs.mat[p, f] = 1


@njit(cache=True)
def _walk(lay, bs, p, f, s, v, toggle, started, stack):
    """After Bob flipped the bit at position s of slot (p, f) (now v, known to be Alice's):
    update his parities along its path and, in a started pass, search again from the
    deepest known odd node (the cascade effect)."""
    K, blocks = lay.K[p], lay.blocks[p]
    base = lay.bbase[p] + f * lay.tsize[p]
    st = bs.st
    leaf = base + blocks * ((1 << K) - 1) + s
    c = st[leaf] ^ BPAR if toggle else st[leaf]
    st[leaf] = (c & (BPAR | SRCH)) | KNOWN | (v << 1)
    found, flv, fj = -1, 0, 0
    for lv in range(K - 1, -1, -1):
        j = s >> (K - lv)
        idx = base + blocks * ((1 << lv) - 1) + j
        if toggle:
            st[idx] ^= BPAR
        if started and found < 0 and _odd(st[idx]):
            found, flv, fj = idx, lv, j
            if not toggle:
                break
    if found >= 0 and (st[found] & SRCH) == 0:
        st[found] |= SRCH
        stack.append(_code(p, flv, fj))


@njit(cache=True)
def _flip(lay, bs, f, i, stack):
    n = lay.n
    bs.y[f * n + i] ^= 1
    v = bs.y[f * n + i]
    bs.yp[f * lay.words + (i >> 6)] ^= _U1 << np.uint64(i & 63)
    bs.flips[f] += 1
    cp = bs.cp[f]
    for p in range(lay.passes):
        toggle = True
        if bs.mat[p, f] == 0:
            if p > cp:
                continue
            _bob_build(lay, bs, p, f)  # from the bits as flipped
            toggle = False
        _walk(lay, bs, p, f, lay.inv[p * n + i], v, toggle, p <= cp, stack)


@njit(cache=True)
def _process(lay, bs, f, stack, pend):
    """Run frame f's searches until each has found its error or needs a parity."""
    st = bs.st
    while len(stack):
        code = stack.pop()
        p, lv, j = _uncode(code)
        K = lay.K[p]
        idx = _node(lay, p, f, lv, j)
        if not _odd(st[idx]):
            st[idx] &= ~SRCH
            continue
        while True:
            if lv == K:
                st[idx] &= ~SRCH
                _flip(lay, bs, f, lay.perm[lay.poff[p] + j], stack)
                break
            cl = _node(lay, p, f, lv + 1, 2 * j)
            sl, sr = st[cl], st[cl + 1]
            if (sl & KNOWN) == 0 and (sr & KNOWN) == 0:
                pend.append(_code(p, lv, j))
                break
            a = (st[idx] >> 1) & 1
            if (sl & KNOWN) == 0:
                st[cl] = sl | KNOWN | ((a ^ ((sr >> 1) & 1)) << 1)
            elif (sr & KNOWN) == 0:
                st[cl + 1] = sr | KNOWN | ((a ^ ((sl >> 1) & 1)) << 1)
            j = 2 * j if _odd(st[cl]) else 2 * j + 1
            child = _node(lay, p, f, lv + 1, j)
            st[idx] &= ~SRCH
            if st[child] & SRCH:
                break  # another search already goes this way
            st[child] |= SRCH
            idx = child
            lv += 1


@njit(cache=True)
def _settle(lay, bs, f, stack, pend, start):
    """Drop pending searches a later flip made even; resume those a flip gave a known child."""
    st = bs.st
    keep = start
    for t in range(start, len(pend)):
        p, lv, j = _uncode(pend[t])
        idx = _node(lay, p, f, lv, j)
        cl = _node(lay, p, f, lv + 1, 2 * j)
        if not _odd(st[idx]):
            st[idx] &= ~SRCH
        elif (st[cl] & KNOWN) or (st[cl + 1] & KNOWN):
            stack.append(pend[t])
        else:
            pend[keep] = pend[t]
            keep += 1
    while len(pend) > keep:
        pend.pop()
    return len(stack) > 0


@njit(cache=True)
def _start_pass(lay, bs, f, p, stack):
    blocks = lay.blocks[p]
    if bs.mat[p, f] == 0:
        if lay.big[p]:
            b0 = _mask_parity(lay, bs.yp, f, p, False)
            b1 = b0 ^ _mask_parity(lay, bs.yp, f, p, True)
            t = lay.topoff[p] + f * blocks
            if b0 == bs.topa[t] and (blocks == 1 or b1 == bs.topa[t + 1]):
                return
        _bob_build(lay, bs, p, f)
    for b in range(blocks):
        idx = _node(lay, p, f, 0, b)
        if _odd(bs.st[idx]) and (bs.st[idx] & SRCH) == 0:
            bs.st[idx] |= SRCH
            stack.append(_code(p, 0, b))


@njit(cache=True)
def _advance(lay, bs, f, stack, pend):
    """Frame f until it waits for parities or has run all passes."""
    start = len(pend)
    while True:
        _process(lay, bs, f, stack, pend)
        if _settle(lay, bs, f, stack, pend, start):
            continue
        if len(pend) > start:
            return
        p = bs.cp[f] + 1
        if p >= lay.passes:
            bs.cp[f] = lay.passes
            return
        bs.cp[f] = p
        _start_pass(lay, bs, f, p, stack)


@njit(cache=True)
def _emit(lay, pend, f, codes, frames, queries, q):
    for t in range(len(pend)):
        p, lv, j = _uncode(pend[t])
        codes[q] = pend[t]
        frames[q] = f
        queries[q] = lay.goff[p, lv + 1] + f * (lay.blocks[p] << (lv + 1)) + 2 * j
        q += 1
    return q


@njit(cache=True)
def bob_start(lay, bs, tops, answers):
    """Round 1: Alice's top parities of every pass (the last block of passes >= 1 inferred
    from the frame's total parity); then every frame starts pass 0."""
    for q in range(len(tops)):
        p, lv, j, f = _decode(lay, tops[q])
        bs.topa[lay.topoff[p] + f * lay.blocks[p] + j] = answers[q]
    for f in range(lay.frames):
        total = np.uint8(0)
        for b in range(lay.blocks[0]):
            total ^= bs.topa[lay.topoff[0] + f * lay.blocks[0] + b]
        for p in range(1, lay.passes):
            blocks = lay.blocks[p]
            if blocks > 1:
                t = lay.topoff[p] + f * blocks
                rest = np.uint8(0)
                for b in range(blocks - 1):
                    rest ^= bs.topa[t + b]
                bs.topa[t + blocks - 1] = total ^ rest
    none = np.empty(0, np.int64)
    return _resume(lay, bs, np.arange(lay.frames), none, none)


@njit(cache=True)
def bob_round(lay, bs, codes, frames, answers):
    """A later round: answers[q] is Alice's parity of the left child of search codes[q]."""
    st = bs.st
    active = np.empty(len(codes), np.int64)
    na = 0
    for q in range(len(codes)):
        p, lv, j = _uncode(codes[q])
        f = frames[q]
        st[_node(lay, p, f, lv + 1, 2 * j)] |= KNOWN | (answers[q] << 1)
        if na == 0 or active[na - 1] != f:
            active[na] = f
            na += 1
    # each frame resumes its searches from the stack (their nodes still carry SRCH)
    return _resume(lay, bs, active[:na], codes, frames)


@njit(cache=True)
def _resume(lay, bs, active, codes, frames):
    """Advance every frame in `active` (with its waiting searches); return the searches
    left waiting (code, frame) and one query each (the left child's global node id)."""
    stack = [np.int64(0) for _ in range(0)]
    pend = [np.int64(0) for _ in range(0)]
    size = max(16, len(codes), 4 * len(active))
    ocodes = np.empty(size, np.int64)
    oframes = np.empty(size, np.int64)
    oqueries = np.empty(size, np.int64)
    q = 0
    t = 0
    for f in active:
        while t < len(codes) and frames[t] == f:
            stack.append(codes[t])
            t += 1
        _advance(lay, bs, f, stack, pend)
        if q + len(pend) > len(ocodes):
            grow = max(2 * len(ocodes), q + len(pend))
            ocodes = np.concatenate((ocodes[:q], np.empty(grow - q, np.int64)))
            oframes = np.concatenate((oframes[:q], np.empty(grow - q, np.int64)))
            oqueries = np.concatenate((oqueries[:q], np.empty(grow - q, np.int64)))
        q = _emit(lay, pend, f, ocodes, oframes, oqueries, q)
        pend.clear()
    return ocodes[:q].copy(), oframes[:q].copy(), oqueries[:q].copy()
