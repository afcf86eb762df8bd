"""The fast path's compiled kernels are cached per version of the package's sources (sfsim.fast.jit)."""

import os
import shutil

import pytest

from sfsim.fast import jit


def test_cache_folder_follows_every_source(tmp_path):
    for src in jit.HERE.glob("*.py"):
        shutil.copy(src, tmp_path / src.name)
    first = jit.cache_dir(tmp_path)
    assert first.parent == tmp_path / "__pycache__" and first.name.startswith("numba-")
    assert jit.cache_dir(tmp_path) == first  # the same sources give the same folder
    helper = tmp_path / "heap.py"  # a helper inlined into the kernels, not the kernel's own file
    helper.write_text(helper.read_text() + "\n# edited\n")
    assert jit.cache_dir(tmp_path) != first
    second = jit.cache_dir(tmp_path)
    warm = tmp_path / "warm.py"  # no kernel reads it: editing it compiles nothing afresh
    warm.write_text(warm.read_text() + "\n# edited\n")
    assert jit.cache_dir(tmp_path) == second


@pytest.mark.skipif(not jit.COMPILED, reason="numba is not installed")
def test_numba_caches_in_the_source_keyed_folder():
    import numba

    if os.environ.get("NUMBA_CACHE_DIR"):
        assert numba.config.CACHE_DIR == os.environ["NUMBA_CACHE_DIR"]
    else:
        assert numba.config.CACHE_DIR == str(jit.cache_dir())


def test_prune_keeps_only_the_current_cache(tmp_path):
    cache = tmp_path / "__pycache__"
    (cache / "numba-old").mkdir(parents=True)
    (cache / "kernel.replay-1.py313.nbi").write_text("")
    (cache / "kernel.cpython-313.pyc").write_text("")
    keep = cache / "numba-new"
    jit._prune(keep)
    assert sorted(p.name for p in cache.iterdir()) == ["kernel.cpython-313.pyc"]
