"""Optional compilation: numba's ``njit`` when numba is installed, else the plain Python function.

The fast path's kernels are written in the subset of Python that numba compiles, so they run (slowly,
but with the same figures) without it. ``COMPILED`` says which one this process uses.
"""

from __future__ import annotations

try:
    import numba
except ImportError:  # pragma: no cover - numba is a core dependency; this keeps the kernels usable without it
    numba = None

COMPILED = numba is not None


def njit(fn):
    """``numba.njit(cache=True)`` when numba is installed, else ``fn`` itself."""
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True)(fn)


def inline(fn):
    """A small helper of a kernel: compiled into its callers (numba's ``inline="always"``), else ``fn``."""
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True, inline="always")(fn)
