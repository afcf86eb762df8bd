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


def _light_cache_loads() -> None:
    """Load cached kernels without numba's implementation registries; they load when a kernel compiles.

    numba refreshes its target context before each cache load, and its first refresh imports every
    implementation it has (lists, sets, unicode, random generators, polynomials, typed containers,
    array math...: some 60 modules, about 0.1-0.2 s of CPU in each process that replays). A cached
    kernel is machine code: rebuilding it needs numba's runtime (``rtsys``, for the arrays it
    allocates), not those registries. A compile (a cache miss) refreshes fully, as before; a cache
    load and the registries' first load skip the BLAS probe (:func:`_skip_blas_probe`).
    """
    from numba.core import caching, cpu
    from numba.core.runtime import rtsys

    def load_overload(self, sig, target_context):
        _skip_blas_probe()  # a kernel's environment may import numba.np.arraymath as it loads
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            cres = self._load_overload(sig, target_context)
            if cres is None:
                _say_compiling()
            return _generator_known(cres, target_context)
        return None  # the guard swallowed an I/O error: compile instead, as numba does

    full = cpu.CPUContext.load_additional_registries

    def load_additional_registries(self):
        _skip_blas_probe()
        return full(self)

    caching.Cache.load_overload = load_overload
    cpu.CPUContext.load_additional_registries = load_additional_registries


_SAID: list[bool] = []


def _say_compiling() -> None:
    """Tell a person at a terminal, once a process, that a kernel compiles (a cache miss: a minute or two)."""
    if not _SAID and sys.stderr.isatty():
        _SAID.append(True)
        print("sfsim: compiling the fast path's kernels for this case (first use, a minute or two; cached after)",
              file=sys.stderr, flush=True)


def _generator_known(cres, target_context):
    """Tell the target context about a generator loaded from the cache, as its compile does; returns ``cres``.

    numba registers a compiled generator's ``next`` function with the context while it lowers it
    (``GeneratorLower.lower_init_func``), not when it loads one from the cache. A kernel that then compiles
    in the same process and iterates that generator (a cache miss above a hit: a generator loop on a network
    that was not compiled yet, whose inner generators were) failed with a ``KeyError`` in
    ``get_generator_impl``. The descriptor is rebuilt from the cached function's own (numba builds it from
    ``fndesc``, the generator type and the mangler alone), so its symbols are the cached library's.
    """
    from numba.core import types
    from numba.core.generators import GeneratorDescriptor

    if cres is not None and isinstance(cres.signature.return_type, types.Generator):
        gentype = cres.signature.return_type
        gendesc = GeneratorDescriptor.from_generator_fndesc(None, cres.fndesc, gentype, target_context.mangler)
        target_context.insert_generator(gentype, gendesc, [cres.library])
    return cres


def _locked_saves() -> None:
    """Make numba's cache saves hold an exclusive lock on the index they update (best effort: without ``fcntl``
    saves are numba's own).

    numba's save reads the index, picks the first data file name no entry uses and writes the index back: two
    processes that compile different kernels of one file at once (the warm-up's two parts; since kernels compile
    on first use, a sweep's worker processes too) could pick the same name, and an entry would then point at
    another kernel's machine code.
    """
    try:
        import fcntl

        from numba.core.caching import IndexDataCacheFile
    except ImportError:  # pragma: no cover - not POSIX, or another numba
        return

    save = IndexDataCacheFile.save

    def locked(self, key, data):
        with open(self._index_path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                save(self, key, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    IndexDataCacheFile.save = locked


if COMPILED:
    _light_cache_loads()
    _locked_saves()
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
