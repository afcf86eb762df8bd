"""Where sweep points run: this process, a pool of local processes, or a Dask or Ray cluster.

Each executor takes the same work list, ``(point index, point overrides, schedules)``, and yields
``(point index, rows)`` as points finish; :func:`sfsim.sweeps.sweep.run_sweep` writes the rows. Dask and
Ray are optional extras (``pip install "sfsim[dask]"`` or ``"sfsim[ray]"``): with an address the
points run on that cluster's workers (which need sfsim installed and the scenario file at the same
path), without one on a local cluster started for the sweep and stopped after it.
"""

from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import ProcessPoolExecutor, as_completed

from sfsim.errors import SfsimError
from sfsim.sweeps.point import run_point

EXECUTORS = ("process", "dask", "ray")
"""Executor names :func:`execute` accepts."""

_WORKER: dict = {}


def execute(base: dict, file: str | None, settings, todo: list, jobs: int | None = None,
            executor: str = "process", address: str | None = None):
    """Run ``todo`` with :func:`sfsim.sweeps.point.run_point`: an iterator of ``(point index, rows)`` as points finish.

    The executor and address are checked here, before anything runs.

    Args:
        base: the scenario's raw YAML dict; file: its path.
        settings: a :class:`sfsim.sweeps.point.Settings`.
        todo: ``(index, point, schedules)`` per point.
        jobs: local processes (default: all cores; 1: in this process), local Dask workers or the
            CPUs of a local Ray cluster.
        executor: ``process``, ``dask`` or ``ray``.
        address: the Dask scheduler or Ray cluster to use (None: start a local cluster).
    """
    if executor not in EXECUTORS:
        raise SfsimError(f"--executor: unknown {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if address and executor == "process":
        raise SfsimError("--address names a Dask scheduler or a Ray cluster; add --executor dask or --executor ray")
    jobs = jobs or os.cpu_count() or 1
    if executor == "dask":
        return _dask(base, file, settings, todo, jobs, address)
    if executor == "ray":
        return _ray(base, file, settings, todo, jobs, address)
    if jobs == 1 or len(todo) <= 1:
        return _here(base, file, settings, todo)
    return _processes(base, file, settings, todo, jobs)


def _here(base, file, settings, todo):
    for i, point, left in todo:
        yield i, run_point(base, file, point, settings, left)


def _init_worker(base: dict, file: str | None, settings) -> None:
    _WORKER.update(base=base, file=file, settings=settings)


def _work(index: int, point, schedules) -> tuple[int, list[dict]]:
    w = _WORKER
    return index, run_point(w["base"], w["file"], point, w["settings"], schedules)


def _processes(base, file, settings, todo, jobs):
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


def _cluster_point(index: int, base: dict, file, point, settings, schedules) -> tuple[int, list[dict]]:
    """One point on a Dask or Ray worker, tagged with its index (results arrive out of order)."""
    return index, run_point(base, file, point, settings, schedules)


def _dask(base, file, settings, todo, jobs, address):
    try:  # Dask is an optional extra (sfsim[dask]): imported only when asked for
        from dask.distributed import Client, LocalCluster
        from dask.distributed import as_completed as dask_completed
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
        futures = [client.submit(_cluster_point, i, shared, file, point, settings, left, pure=False)
                   for i, point, left in todo]
        try:
            for fut in dask_completed(futures):
                yield fut.result()
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _reachable(address: str) -> None:
    """Refuse a ``host:port`` Ray address nobody listens on (Ray itself retries for minutes)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as err:
        raise SfsimError(f"--address: cannot reach a Ray cluster at {address} ({err}); start one with "
                         "'ray start --head', or leave out --address") from None


def _ray(base, file, settings, todo, jobs, address):
    """Check that Ray imports and the address answers (before the CSV is opened); then run."""
    try:  # Ray is an optional extra (sfsim[ray], a 79 MB wheel): imported only when asked for
        import ray  # noqa: F401
    except ImportError:
        raise SfsimError("--executor ray needs Ray: pip install 'sfsim[ray]' (or use the default local "
                         "processes)") from None
    if address:
        _reachable(address)
    return _ray_run(base, file, settings, todo, jobs, address)


def _ray_run(base, file, settings, todo, jobs, address):
    import ray  # optional extra, checked by _ray

    started = not ray.is_initialized()  # a notebook may have connected already: keep its session
    if started:
        local = address in (None, "local")
        ray.init(address=address, num_cpus=jobs if local else None, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    try:
        shared = ray.put(base)  # the scenario travels once per node, not once per point
        task = ray.remote(num_cpus=1)(_cluster_point)
        pending = [task.remote(i, shared, file, point, settings, left) for i, point, left in todo]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    finally:
        if started:
            ray.shutdown()
