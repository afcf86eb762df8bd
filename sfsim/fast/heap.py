"""Binary heaps in float arrays, for the compiled event loops: row 0 the keys, row 1 the values.

Entries compare as ``(key, value)`` pairs, so a heap pops in the same order as :mod:`heapq` on a
list of tuples; values are integers stored exactly as floats (below 2**53). The entry count lives in
a caller's int array, so that a loop compiled without reference counting holds no list.
"""

from __future__ import annotations

from sfsim.fast.jit import inline


@inline
def before(H, a, b):
    """Whether heap entry ``a`` comes before entry ``b`` (by key, then value)."""
    return H[0, a] < H[0, b] or (H[0, a] == H[0, b] and H[1, a] < H[1, b])


@inline
def push(H, S, n_slot, full_slot, key, value):
    """Push ``(key, value)`` on the heap ``H`` of ``S[n_slot]`` entries; a full heap sets ``S[full_slot]`` instead."""
    pos = S[n_slot]
    if pos == H.shape[1]:  # sized for the most entries a run can hold; never expected
        S[full_slot] = 1
        return
    S[n_slot] = pos + 1
    v = float(value)
    while pos > 0:
        up = (pos - 1) >> 1
        if H[0, up] < key or (H[0, up] == key and H[1, up] < v):
            break
        H[0, pos] = H[0, up]
        H[1, pos] = H[1, up]
        pos = up
    H[0, pos] = key
    H[1, pos] = v


@inline
def pop(H, S, n_slot):
    """Remove the heap's first entry; returns ``(key, value)``."""
    key, value = H[0, 0], int(H[1, 0])
    n = S[n_slot] - 1
    S[n_slot] = n
    if n > 0:
        k, v = H[0, n], H[1, n]
        pos = 0
        while True:
            c = 2 * pos + 1
            if c >= n:
                break
            if c + 1 < n and before(H, c + 1, c):
                c += 1
            if k < H[0, c] or (k == H[0, c] and v < H[1, c]):
                break
            H[0, pos] = H[0, c]
            H[1, pos] = H[1, c]
            pos = c
        H[0, pos] = k
        H[1, pos] = v
    return key, value


@inline
def heapify(H, n):
    """Make the first ``n`` entries of ``H`` a heap (sift each parent down, last first)."""
    for start in range(n // 2 - 1, -1, -1):
        _sift_down(H, start, n)


@inline
def remove(H, S, n_slot, pos):
    """Remove the entry at ``pos`` (any place) from the heap; the others keep their order."""
    n = S[n_slot] - 1
    S[n_slot] = n
    if pos == n:
        return
    H[0, pos] = H[0, n]
    H[1, pos] = H[1, n]
    while pos > 0:  # up while it comes before its parent
        up = (pos - 1) >> 1
        if not before(H, pos, up):
            break
        _swap(H, pos, up)
        pos = up
    _sift_down(H, pos, n)


@inline
def _sift_down(H, pos, n):
    """Move the entry at ``pos`` down the first ``n`` entries while a child comes before it."""
    while True:
        c = 2 * pos + 1
        if c >= n:
            break
        if c + 1 < n and before(H, c + 1, c):
            c += 1
        if not before(H, c, pos):
            break
        _swap(H, pos, c)
        pos = c


@inline
def _swap(H, a, b):
    """Swap heap entries ``a`` and ``b``."""
    H[0, a], H[0, b] = H[0, b], H[0, a]
    H[1, a], H[1, b] = H[1, b], H[1, a]
