"""The fast path's compiled kernels are cached per version of the package's sources (sfsim.fast.jit)."""

import os
import shutil
from pathlib import Path

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


@pytest.mark.skipif(not jit.COMPILED, reason="numba is not installed")
def test_static_replay_shares_the_dynamic_kernels_specialisation():
    """kernel.replay_server (the planner's enumeration) calls replay_dynamic with the types the Python callers
    use: one compile of the largest kernel, not two."""
    from sfsim.engine.pool import DeviceTimes, ServerTimes
    from sfsim.fast import kernel, replay, warm
    from sfsim.schedules import Job, ReplayConfig

    job = Job([DeviceTimes("d0", 0, 3, f=0.01, up_s=0.02, up_l=0.001, srv_f=0.004, srv_b=0.006, srv_w=0.002)],
              [ServerTimes("s", 1, 0.001)])
    replay(job, ReplayConfig(buffer=4, accumulate=2))
    warm._static_kernel()
    assert len(kernel.replay_dynamic.signatures) == 1


def test_warm_up_parts_cover_every_step_once():
    from sfsim.fast import warm

    steps = [step for part in warm.STEPS for step in part]
    assert len(steps) == len(set(steps)) and len(warm.STEPS) == 2
    assert {schedule for _, schedule in steps} >= {"splitfrozen", "splitlora", "fedlora", "cenlora", "pool", "plan"}
    assert {label for label, _ in steps} == set(warm._SCENARIOS)


def test_default_warm_up_is_what_the_readme_fleets_reach():
    """``make setup`` compiles FIRST alone: every schedule and the planner on constant links, which is all the
    README's bundled fleets reach (no varying link, availability, handover, backhaul, sync or second epoch); the
    rest of STEPS compiles on first use."""
    from sfsim.fast import warm
    from sfsim.scenario.config import load_scenario

    first = [step for part in warm.FIRST for step in part]
    full = {step for part in warm.STEPS for step in part}
    assert len(first) == len(set(first)) and set(first) <= full and len(warm.FIRST) == 2
    assert {schedule for _, schedule in first} == {"splitfrozen", "splitlora", "fedlora", "cenlora", "plan"}
    assert {label for label, _ in first} == {"constant links"}
    root = Path(__file__).resolve().parents[1]
    for name in ("edge.yaml", "sixg.yaml"):
        sc = load_scenario(root / "profiles" / name)
        assert sc.training.sync is None and sc.training.epochs == 1, name
        assert not any(s.backhaul for s in sc.servers), name
        for d in sc.device_types:
            assert not (d.handover or d.availability or d.uplink.varies or d.downlink.varies), (name, d.name)


_GENERATORS = '''
import sys

import numpy as np
from sfsim.fast.jit import njit

@njit
def inner(X):
    for i in range(3):
        X[0] += i
        yield i

@njit
def outer(X, R):
    for code in inner(X):
        if R is not None:
            X[1] += R[0]
        yield code

X = np.zeros(2)
print([int(c) for c in outer(X, None if sys.argv[1] == 'none' else np.ones(1))], X.tolist())
'''


@pytest.mark.skipif(not jit.COMPILED, reason="numba is not installed")
def test_a_generator_loop_compiles_above_cached_inner_generators(tmp_path):
    """The first run caches ``outer(X, None)`` and ``inner``; a later process compiles ``outer`` for an array (a cache
    miss) above ``inner`` loaded from the cache: numba alone fails there with a KeyError (jit._generator_known)."""
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(jit.HERE.parents[1])}
    (tmp_path / "gens.py").write_text(_GENERATORS)  # written once: numba's cache checks its stamp
    outs = []
    for arg in ("none", "array", "array"):
        run = subprocess.run([sys.executable, str(tmp_path / "gens.py"), arg], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-400:]
        outs.append(run.stdout.strip())
    assert outs == ["[0, 1, 2] [3.0, 0.0]", "[0, 1, 2] [3.0, 3.0]", "[0, 1, 2] [3.0, 3.0]"]
    if os.name == "posix":  # every save held the index's lock (jit._locked_saves: kernels compile on first use)
        assert list((tmp_path / "cache").rglob("gens*.nbi.lock"))
