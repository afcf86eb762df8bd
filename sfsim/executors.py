"""Where sweep points run: this process, a pool of local processes, or a Dask cluster.

Each executor takes the same work list, ``(point index, point overrides, schedules)``, and yields
``(point index, rows)`` as points finish; :func:`sfsim.sweep.run_sweep` writes the rows. Dask is
an optional extra (``pip install "dask[distributed]"``): with an address the points run on that
cluster's workers (which need sfsim installed and the scenario file at the same path), without
one on a local cluster started for the sweep.
"""

from __future__ import annotations

import os

from sfsim.errors import SfsimError

EXECUTORS = ("process", "dask")
"""Executor names :func:`execute` accepts."""

_WORKER: dict = {}


def execute(base: dict, file: str | None, settings, todo: list, jobs: int | None = None,
            executor: str = "process", address: str | None = None):
    """Run ``todo`` with :func:`sfsim.sweep.run_point`: an iterator of ``(point index, rows)`` as points finish.

    The executor and address are checked here, before anything runs.

    Args:
        base: the scenario's raw YAML dict; file: its path.
        settings: a :class:`sfsim.sweep.Settings`.
        todo: ``(index, point, schedules)`` per point.
        jobs: local processes (default: all cores; 1: in this process) or local Dask workers.
        executor: ``process`` or ``dask``.
        address: the Dask scheduler to use (None: start a local cluster).
    """
    if executor not in EXECUTORS:
        raise SfsimError(f"--executor: unknown {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if address and executor != "dask":
        raise SfsimError("--address names a Dask scheduler; add --executor dask")
    jobs = jobs or os.cpu_count() or 1
    if executor == "dask":
        return _dask(base, file, settings, todo, jobs, address)
    if jobs == 1 or len(todo) <= 1:
        return _here(base, file, settings, todo)
    return _processes(base, file, settings, todo, jobs)


def _here(base, file, settings, todo):
    from sfsim.sweep import run_point

    for i, point, left in todo:
        yield i, run_point(base, file, point, settings, left)


def _init_worker(base: dict, file: str | None, settings) -> None:
    _WORKER.update(base=base, file=file, settings=settings)


def _work(index: int, point, schedules) -> tuple[int, list[dict]]:
    from sfsim.sweep import run_point

    w = _WORKER
    return index, run_point(w["base"], w["file"], point, w["settings"], schedules)


def _processes(base, file, settings, todo, jobs):
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # the scenario travels once per process (initializer), not once per point
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), initializer=_init_worker,
                             initargs=(base, file, settings)) as pool:
        futures = [pool.submit(_work, i, point, left) for i, point, left in todo]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _dask_point(index: int, base: dict, file, point, settings, schedules) -> tuple[int, list[dict]]:
    from sfsim.sweep import run_point

    return index, run_point(base, file, point, settings, schedules)


def _dask(base, file, settings, todo, jobs, address):
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SfsimError("--executor dask needs Dask: pip install 'dask[distributed]' (or use the default "
                         "local processes)") from None
    cluster = None
    try:
        if address:
            client = Client(address, timeout="10s")
        else:
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=":0")
            client = Client(cluster)
    except OSError as err:
        raise SfsimError(f"--address: cannot reach a Dask scheduler at {address} ({err}); start one with "
                         "'dask scheduler' and 'dask worker ADDRESS', or leave out --address") from None
    try:
        shared = client.scatter(base, broadcast=True)  # the scenario travels once per worker
        futures = [client.submit(_dask_point, i, shared, file, point, settings, left, pure=False)
                   for i, point, left in todo]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
