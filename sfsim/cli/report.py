"""``sfsim report``: regenerate the claims report (``docs/results.md``) from recorded runs (thin CLI)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from sfsim.cli.group import example, main
from sfsim.errors import SfsimError
from sfsim.units import parse_quantity

FIELDS = ("kind", "model", "task", "partition", "method", "seed", "setting")


def parse_only(texts: tuple[str, ...]) -> dict[str, set[str]]:
    """``("task=sst2,mrpc", "seed=0")`` -> ``{"task": {"sst2", "mrpc"}, "seed": {"0"}}``; one-line errors."""
    out: dict[str, set[str]] = {}
    for text in texts:
        key, sep, values = text.partition("=")
        if not sep or key.strip() not in FIELDS or not values.strip():
            raise SfsimError(f"--only {text!r}: write FIELD=V1,V2 with FIELD one of {', '.join(FIELDS)}")
        out.setdefault(key.strip(), set()).update(v.strip() for v in values.split(",") if v.strip())
    return out


def plan_lines(cells, recorded: dict, budget_s: float, partials: dict | None = None, probes: dict | None = None
               ) -> list[str]:
    """``sfsim report --plan``: each missing decisive cell with its estimate, whether it fits, and the totals
    (with the protocol before the cost cuts for comparison)."""
    from trainer.claims.budget import plan
    from trainer.claims.report import budget_sentence

    p = plan(cells, recorded, budget_s, partials, probes)
    out = [f"{'fits' if fits else 'later':5s}  {'?' if s is None else f'{s / 60:6.0f} min'}  {c.key}"
           for c, s, fits in p["rows"]]
    return out + [f"{p['fit']} of {len(p['rows'])} missing cells fit in {budget_s / 3600:.2f} h.",
                  budget_sentence(p, plan(cells, recorded, budget_s, partials, probes, cuts=False))]


@main.command(epilog=example("sfsim report --list", "sfsim report --budget 30min --only task=sst2"))
@click.option("--budget", default="0 s", show_default=True,
              help="wall time for running missing cells, e.g. '2 h' or '30 min' (0: only re-render)")
@click.option("--only", multiple=True, metavar="FIELD=V1,V2",
              help=f"run only cells whose field matches ({', '.join(FIELDS)}); repeatable")
@click.option("--list", "list_cells", is_flag=True, help="list the grid's cells, recorded or not, and exit")
@click.option("--plan", "plan_only", is_flag=True,
              help="print which missing cells fit in --budget, each with its estimate on this CPU, and exit")
@click.option("--allow-dirty", is_flag=True,
              help="run cells from a tree that differs from HEAD, storing the diff by its hash (default: refuse)")
@click.option("--results", default="bench/results/claims", show_default=True, type=click.Path(file_okay=False),
              help="folder of recorded cells (cells/*.json)")
@click.option("--docs", default="docs", show_default=True, type=click.Path(file_okay=False),
              help="folder for results.md and figures/")
@click.option("--data-dir", help="data folder (default: $SFSIM_DATA or ../shared/data)")
@click.option("--edge", default="profiles/edge.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="scenario of the simulated time and compute sections")
def report(budget, only, list_cells, plan_only, allow_dirty, results, docs, data_dir, edge):
    """Run the claims report's missing real runs within --budget, then rewrite docs/results.md and its figures."""
    # the trainer package imports torch (~3.5 s): only this command and run/eval pay for it
    from trainer.claims.grid import cell_path, claimed, load_cells, select
    from trainer.claims.report import full_grid, make_report

    try:
        budget_s = parse_quantity(budget, "time")
    except ValueError as err:
        raise SfsimError(f"--budget: {err}") from None
    if budget_s < 0:
        raise SfsimError(f"--budget must be >= 0 (got {budget})")
    if not Path(edge).is_file():
        raise SfsimError(f"--edge {edge}: no such file")
    data_dir = data_dir or os.environ.get("SFSIM_DATA") or str(Path.cwd().parent / "shared" / "data")
    cells = select(full_grid(), parse_only(only))
    if not cells:
        raise SfsimError("--only matches no cell of the grid; see sfsim report --list")
    recorded = load_cells(Path(results))
    if list_cells:
        for c in cells:
            state = "recorded" if c.key in recorded else "running" if claimed(cell_path(Path(results), c)) else "missing"
            click.echo(f"{state:8s}  {c.key}")
        click.echo(f"{sum(c.key in recorded for c in cells)} of {len(cells)} recorded")
        return
    if plan_only:
        from trainer.claims.scale import load_partials
        from trainer.claims.speed import load_speeds

        for line in plan_lines(cells, recorded, budget_s, load_partials(results), load_speeds(results)):
            click.echo(line)
        return
    if budget_s > 0 and not Path(data_dir).is_dir():
        raise SfsimError(f"data folder {data_dir} not found: pass --data-dir or set SFSIM_DATA")
    outcome = make_report(Path(results), Path(docs), data_dir, budget_s, cells=cells, edge=edge,
                          allow_dirty=allow_dirty, log=lambda s: click.echo(s))
    click.echo(f"ran {len(outcome.ran)}, skipped {len(outcome.skipped)} recorded, failed {len(outcome.failed)}, "
               f"left {len(outcome.left)} for lack of budget"
               + (f", {len(outcome.elsewhere)} running in another sfsim report" if outcome.elsewhere else "")
               + f" -> {docs}/results.md")
