"""Optional compilation: numba's ``njit`` when numba is installed, else the plain Python function.

The fast path's kernels are written in the subset of Python that numba compiles, so they run (slowly,
but with the same figures) without it. ``COMPILED`` says which one this process uses.

Compiled kernels are cached on disk. numba checks a cached kernel against its own file only, while a
kernel carries the code of every helper it inlines or calls from the other files of this package; so
the cache lives in a folder named after a digest of all of this package's sources
(:func:`cache_dir`): any edit here compiles afresh instead of running stale code. ``NUMBA_CACHE_DIR``,
when set, is used as given.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


NO_KERNELS = frozenset({"warm.py"})
"""Files of the package that no kernel reads (editing them compiles nothing afresh)."""


def cache_dir(here: Path = HERE) -> Path:
    """``<here>/__pycache__/numba-<digest>``: the digest covers every ``.py`` file of package ``here`` but
    :data:`NO_KERNELS`."""
    digest = hashlib.sha1()
    for src in sorted(here.glob("*.py")):
        if src.name in NO_KERNELS:
            continue
        digest.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return here / "__pycache__" / f"numba-{digest.hexdigest()[:16]}"


def _prune(keep: Path) -> None:
    """Remove the caches of earlier sources, and numba's own beside the files from before this scheme
    (best effort: a read-only install keeps them)."""
    for old in keep.parent.glob("numba-*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    for old in keep.parent.glob("*.nb[ic]"):
        old.unlink(missing_ok=True)


try:
    import numba
except ImportError:  # pragma: no cover - numba is a core dependency; this keeps the kernels usable without it
    numba = None

COMPILED = numba is not None


def _skip_blas_probe() -> None:
    """Import numba's array-math registry without its BLAS probe, which imports ``scipy.linalg``.

    numba imports ``numba.np.arraymath`` at its first kernel load, even from the cache, and that module
    probes for BLAS by importing ``scipy.linalg.cython_blas``: 0.15 s of CPU in every process that
    replays, for kernels that use no BLAS. Here the probe finds nothing (a ``None`` entry in
    ``sys.modules`` for that one import) and numba uses its own loops where BLAS would serve (only
    ``np.dot``-like inner products); ``scipy.linalg`` still imports as usual afterwards.
    """
    if "scipy.linalg" in sys.modules or "numba.np.arraymath" in sys.modules:
        return
    name = "scipy.linalg.cython_blas"
    sys.modules[name] = None
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]


if COMPILED:
    _skip_blas_probe()
if COMPILED and not os.environ.get("NUMBA_CACHE_DIR"):
    CACHE = cache_dir()
    numba.config.CACHE_DIR = str(CACHE)  # read by numba's cache locator at each compile
    if not CACHE.exists():
        _prune(CACHE)


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
