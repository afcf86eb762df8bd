"""``sfsim sweep``: simulate a scenario over a grid of changed values; CSV rows and a plot."""

from __future__ import annotations

import click

from sfsim.cli.group import example, main, warn
from sfsim.errors import SfsimError
from sfsim.scenario.overrides import apply, parse_sets
from sfsim.scenario.plausible import warnings_for
from sfsim.scenario.schema import read_yaml
from sfsim.sweeps.plot import plot_sweep
from sfsim.sweeps.sweep import METRICS, Settings, grid, parse_schedules, parse_vary, read_rows, run_sweep

MAX_WARNINGS = 5
"""Plausibility warnings a sweep prints at most (its points repeat them)."""


@main.command(epilog=example("sfsim sweep --devices profiles/sixg.yaml --vary 'devices[*].uplink.bandwidth=10,50,100 "
                             "Mbps' -o bw.csv --plot bw.png"))
@click.option("--devices", "scenario", required=True, type=click.Path(dir_okay=False),
              help="scenario YAML (e.g. profiles/sixg.yaml)")
@click.option("--vary", "varies", multiple=True, required=True, metavar="KEY=VALUES",
              help="a key path and its values: devices[*].uplink.bandwidth=10,50,100 Mbps, "
                   "servers[0].flops=10TFLOPS..1PFLOPS:log:8, servers.count=1..8; repeat for a grid")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="a fixed change for every point")
@click.option("--schedule", default="splitfrozen", show_default=True,
              help="schedules to run at each point: a name, a comma list, or 'all'")
@click.option("--plan", "plan", is_flag=True, help="plan every point (cuts, LoRA start, assignment) first")
@click.option("--split", type=int, default=None, help="one cut for every device (default: the scenario's)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="results CSV")
@click.option("--plot", "plot_out", default=None, type=click.Path(dir_okay=False),
              help="write a PNG: the metric against the first key, one line per schedule")
@click.option("--metric", default="makespan_s", show_default=True, help="the plotted column")
@click.option("--resume", is_flag=True, help="keep the rows already in the CSV; run only the missing ones")
@click.option("--overwrite", is_flag=True, help="replace an existing CSV (without it or --resume, an existing "
              "-o is an error)")
@click.option("--jobs", "-j", type=int, default=None, help="processes (default: all cores)")
@click.option("--executor", default="process", show_default=True,
              help="where points run: process (local processes), dask (needs sfsim[dask]) or ray "
                   "(needs sfsim[ray])")
@click.option("--address", default=None, help="Dask scheduler (tcp://10.0.0.5:8786) or Ray cluster (10.0.0.5:6379, "
              "ray://10.0.0.5:10001, auto) to run on (default: a local cluster)")
def sweep(scenario, varies, sets, schedule, plan, split, output, plot_out, metric, resume, overwrite, jobs, executor,
          address):
    """Run every combination of the --vary values; one CSV row per point and schedule.

    Rows are appended as points finish, so an interrupted sweep keeps what it did (--resume goes
    on from there). A point whose values the scenario rejects becomes an error row; a sweep with
    error rows exits with status 2 after writing the others (and plots them, when some succeeded).
    """
    parsed = [parse_vary(v) for v in varies]
    fixed = tuple(parse_sets(sets))
    if plot_out and metric not in METRICS:
        raise SfsimError(f"--metric: unknown column {metric!r}; choose one of: {', '.join(METRICS)}")
    if plot_out and len(parsed) > 2:
        raise SfsimError("--plot draws one or two varied keys (x axis, small multiples); drop --plot or a --vary")
    if jobs is not None and jobs < 1:
        raise SfsimError(f"--jobs must be >= 1, got {jobs}")
    settings = Settings(parse_schedules(schedule), split, plan, fixed)
    warn(_warnings(scenario, fixed, parsed))
    res = run_sweep(scenario, parsed, output, settings, resume=resume, jobs=jobs, executor=executor,
                    address=address, overwrite=overwrite)
    click.echo(f"{res.rows} rows written to {output} ({res.points} points x {len(settings.schedules)} "
               f"schedules, {res.skipped} already there) in {res.seconds:.1f} s")
    if plot_out and res.errors < res.rows + res.skipped:
        plot_sweep(output, plot_out, parsed, metric=metric)
        click.echo(f"plot written to {plot_out}")
    if res.errors:
        what = "every row" if res.errors == res.rows else f"{res.errors} of {res.rows} rows"
        raise SfsimError(f"{what} failed (status error in {output}); the first: {res.first_error}")
    kept = [r for r in read_rows(output) if r["status"] != "ok"] if res.skipped else []
    if kept:  # --resume keeps failed rows (their values fail again): the sweep is still not whole
        raise SfsimError(f"{len(kept)} rows kept from before have status error in {output}; the first: "
                         f"{kept[0]['error']}")


def _warnings(scenario: str, fixed: tuple, varies) -> list[str]:
    """The distinct plausibility warnings of the sweep's points (at most :data:`MAX_WARNINGS`)."""
    base, seen = read_yaml(scenario), {}
    for point in grid(varies):
        try:
            lines = warnings_for(apply(base, [*fixed, *point], scenario), scenario)
        except SfsimError:  # a key the point cannot set: its error row says so
            continue
        for line in lines:
            seen.setdefault(line, None)
            if len(seen) >= MAX_WARNINGS:
                return list(seen)
    return list(seen)
