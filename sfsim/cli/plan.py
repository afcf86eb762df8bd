"""``sfsim plan``: choose per-device cuts, the LoRA start and server assignment; print the table."""

from __future__ import annotations

import click

from sfsim.cli.group import example, main, warn
from sfsim.errors import ConfigError
from sfsim.scenario.overrides import load_scenario_with, parse_sets
from sfsim.units import parse_quantity


@main.command(epilog=example("sfsim plan --devices profiles/edge.yaml -o plan.yaml",
                             "sfsim plan --devices profiles/sixg.yaml --set 'devices[*].server=null'"))
@click.option("--devices", "devices", required=True, type=click.Path(dir_okay=False),
              help="scenario YAML (model, training, servers, devices), e.g. profiles/edge.yaml")
@click.option("--schedule", default="splitfrozen", show_default=True,
              help="schedule to plan for: splitfrozen or splitfrozen-sequential")
@click.option("--objective", default="time", show_default=True,
              help="what to minimise: time (total training time; ties within --tie-tolerance go to the plan with "
                   "the least device compute) or energy (device joules; needs --deadline and power figures)")
@click.option("--deadline", default=None, metavar="TIME",
              help="with --objective energy: the most time the plan may take, e.g. 10min or 600 (seconds)")
@click.option("--tie-tolerance", default=0.005, show_default=True, type=float,
              help="with --objective time: plans within this fraction of the fastest tie (0: fastest only)")
@click.option("--min-device-layers", default=1, show_default=True, type=int,
              help="fewest blocks every device keeps (1: raw tokens never leave a device)")
@click.option("--min-lora-layers", default=1, show_default=True, type=int,
              help="fewest LoRA blocks on the servers")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="write the plan file here (for sfsim simulate --plan / sfsim run --plan)")
@click.option("--codecs", default=None, metavar="LIST",
              help="also choose the wire codec: plan with each of these (e.g. fp16,int8) whose measured accuracy cost "
                   "is within --accuracy-budget and keep the best (docs/codecs.md)")
@click.option("--accuracy-budget", default=0.5, show_default=True, type=float, metavar="POINTS",
              help="with --codecs: most accuracy points a codec may cost against fp32 (measured, sfsim.cost.wire)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="change the scenario without editing it: servers[0].flops=200 TFLOPS (repeatable)")
def plan(devices, schedule, objective, deadline, tie_tolerance, min_device_layers, min_lora_layers, output,
         codecs, accuracy_budget, sets) -> None:
    """Plan cuts, LoRA start and server assignment for a fleet, and print what bounds the time.

    Without -o nothing is written; the last line says how to save the plan.
    """
    # the planner pulls in HiGHS (highspy) and its search: only this command pays for them
    from sfsim.planner import plan as make_plan
    from sfsim.planner.codecs import choose_codec

    if deadline is not None:
        try:
            deadline = parse_quantity(deadline, "time")
        except ValueError as err:
            raise ConfigError(None, "--deadline", str(err)) from None
    kw = dict(schedule=schedule, objective=objective, min_device_layers=min_device_layers,
              min_lora_layers=min_lora_layers, deadline=deadline, tie_tolerance=tie_tolerance)
    sc = load_scenario_with(devices, parse_sets(sets))
    warn(sc.warnings)
    choice = None
    if codecs is not None:
        def load(codec):
            return load_scenario_with(devices, [*parse_sets(sets), ("training.wire_dtype", codec)])

        choice = choose_codec(load, [c.strip() for c in codecs.split(",") if c.strip()], accuracy_budget, **kw)
        res = choice.result
    else:
        res = make_plan(sc, **kw)
    click.echo(res.table())
    if choice is not None:
        click.echo(choice.line())
    if output:
        res.save(output)
        click.echo(f"plan written to {output}; replay it with: sfsim simulate --devices {devices} --plan {output}")
    else:
        click.echo(f"plan not saved; add -o plan.yaml to write it for: sfsim simulate --devices {devices} "
                   "--plan plan.yaml")
