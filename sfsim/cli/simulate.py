"""``sfsim simulate``: run one schedule (or all) on a scenario and report; a thin layer over the library."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sfsim.cli.group import example, main, warn
from sfsim.cost.serverwarm import missing_note
from sfsim.errors import SfsimError
from sfsim.methods import METHODS, canonical
from sfsim.outputs.gantt import gantt_format, write_panels
from sfsim.outputs.report import comparison_table, summary
from sfsim.scenario.overrides import load_scenario_with, parse_sets
from sfsim.scenario.schema import write_atomic
from sfsim.schedules.network import Unsupported
from sfsim.simulate import applicable, check_options
from sfsim.simulate import simulate as run_schedule


def parse_split(text: str | None):
    """``'3' -> 3``; ``'pi5-0=2,phone=3' -> {'pi5-0': 2, 'phone': 3}``; None stays None."""
    if text is None:
        return None
    text = text.strip()
    if text.isdecimal():  # not isdigit: '¹' is a digit that int() refuses
        return int(text)
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        dev, eq, k = part.partition("=")
        if not eq or not k.strip().isdecimal() or not dev.strip():
            raise SfsimError(f"--split: cannot read {part!r}; write a cut (--split 3) or DEVICE=K pairs "
                             "(--split pi5-0=2,phone-1=3)")
        out[dev.strip()] = int(k)
    if not out:
        raise SfsimError("--split: empty; write a cut (--split 3) or DEVICE=K pairs")
    return out


def suffixed(path: str, name: str) -> Path:
    """``out.png, 'fedlora' -> out.fedlora.png``: one file per schedule with ``--schedule all``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{name}{p.suffix}")


@main.command(epilog=example("sfsim simulate --devices profiles/edge.yaml --split 2",
                             "sfsim simulate --devices profiles/sixg.yaml --schedule all --gantt all.png"))
@click.option("--devices", "scenario", required=True, type=click.Path(dir_okay=False),
              help="scenario YAML (e.g. profiles/edge.yaml)")
@click.option("--schedule", default="splitfrozen", show_default=True,
              help=f"one of {', '.join(METHODS)} (or centralized), a comma list of them, or 'all', for a "
                   "comparison table (each schedule then takes only the options it has: fedlora and cenlora no cut)")
@click.option("--split", "split", default=None, help="cut for every device (3) or DEVICE=K,... pairs")
@click.option("--plan", "plan", default=None, type=click.Path(dir_okay=False),
              help="plan file from 'sfsim plan' (cuts, LoRA start, assignment)")
@click.option("--lora-start", type=int, default=None, help="first server block with LoRA (default: largest cut)")
@click.option("--policy", default=None, help="server policy: fifo, round-robin, proportional, paced-proportional, "
              "paced-round-robin (need training.credits: device), pool")
@click.option("--client-order", type=click.Choice(["interleaved", "sequential"]), default=None,
              help="splitlora: interleaved (clients' micro-batches in the server order, FedAvg every "
                   "training.fedavg_every steps) or sequential (client after client); default training.client_order")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="write the result as JSON (with 'all': one file, schedule -> result)")
@click.option("--trace", "trace_out", default=None, type=click.Path(dir_okay=False),
              help="write a Chrome/Perfetto trace (with 'all': one file per schedule, OUT.<schedule>.json)")
@click.option("--gantt", "gantt_out", default=None, type=click.Path(dir_okay=False),
              help="write a Gantt chart (.png, .pdf or .svg; with 'all': the schedules as small "
                   "multiples on one time axis, in one file)")
@click.option("--engine", type=click.Choice(["auto", "fast", "simpy"]), default="auto", show_default=True,
              help="auto: the exact fast path where it covers the run, else the SimPy engine (a note says why)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="change the scenario without editing it: devices[*].uplink.bandwidth=50 Mbps (repeatable)")
def simulate(scenario, schedule, split, plan, lora_start, policy, client_order, json_out, trace_out, gantt_out,
             sets, engine):
    """Simulate split fine-tuning on a scenario and print a summary (or a comparison table)."""
    sc = load_scenario_with(scenario, parse_sets(sets))
    warn(sc.warnings)
    names = list(METHODS) if schedule == "all" else list(dict.fromkeys(canonical(s.strip()) for s in schedule.split(",")))
    if gantt_out:
        gantt_format(gantt_out)  # a bad suffix fails before the simulation, not after
    given = dict(splits=parse_split(split), plan=plan, lora_start=lora_start, policy=policy, client_order=client_order)
    if len(names) == 1:
        check_options(names[0], **given)  # an option the schedule would ignore is an error
    else:  # 'all' or a list: each schedule takes the options it has (--client-order: splitlora's)
        check_options("splitfrozen", **{k: v for k, v in given.items() if k != "client_order"})
    results, refused, panels = _run_all(sc, names, given, scenario, trace_out, gantt_out, engine)
    if gantt_out:
        write_panels(panels, gantt_out)
    _report(sc, names, results, refused, scenario)
    if split is None and plan is None and sc.training.split is None and set(names) & {"splitfrozen",
                                                                                    "splitfrozen-sequential"}:
        click.echo("note: SplitFrozen used the default cut 1 on every device (no --split, --plan or "
                   "training.split); 'sfsim plan' chooses per-device cuts")
    slow: dict[str, list[str]] = {}  # why -> the schedules that fell back for it (one line each)
    for n, r in results.items():
        if r.engine_note and not (trace_out or gantt_out):
            slow.setdefault(r.engine_note, []).append(n)
    for why, which in slow.items():
        click.echo(f"note: {', '.join(which)} ran on the SimPy engine, not the fast path: {why}")
    _epoch_end_note(sc, results)
    warm = missing_note(sc, list(results))  # a server profile without first_step: no warm-up (sfsim.cost.serverwarm)
    if warm:
        click.echo(warm)
    loose = sum(not d.server_pinned for d in sc.devices)
    if any(r.assignment_source == "least-loaded" for r in results.values()):
        click.echo(f"note: {loose} devices without a server pin went to the least-loaded of "
                   f"{len(sc.servers)} servers (no --plan); 'sfsim plan' assigns servers with the cuts")
    if json_out:
        data = (results[names[0]].to_dict() if len(names) == 1
                else {n: r.to_dict() for n, r in results.items()} | {n: {"refused": w} for n, w in refused.items()})
        write_atomic(json_out, json.dumps(data, indent=2) + "\n")


def _epoch_end_note(sc, results: dict) -> None:
    """Say where the simulation leaves out sfsim run's wait between epochs (evaluation, adapter, checkpoint;
    :mod:`sfsim.cost.epochend`): without ``training.eval_samples``, or where a schedule does not replay it (its
    result has no ``epoch_end_s``)."""
    if sc.training.epochs < 2:
        return
    if sc.training.eval_samples is None:
        click.echo("note: the wait between epochs (sfsim run's evaluation on every dev row, adapter, checkpoint) is "
                   "not simulated; set training.eval_samples to the rows sfsim run evaluates to simulate it")
        return
    left = [n for n, r in results.items() if not r.epoch_end_s]
    if left:
        click.echo(f"note: {', '.join(left)}: the wait between epochs (evaluation, adapter, checkpoint) is left out "
                   "of this simulation; sfsim run waits for it after each epoch")


def _run_all(sc, names: list[str], given: dict, scenario: str, trace_out, gantt_out, engine: str = "auto"):
    """Simulate each schedule; write its trace; keep its Gantt panel. With 'all', a schedule the dynamic
    network is not simulated for is skipped with a note. Returns (results, refused, panels)."""
    results, refused, panels = {}, {}, []
    one = len(names) == 1
    for name in names:
        try:
            res = run_schedule(sc, name, trace=bool(trace_out or gantt_out), engine=engine, **applicable(name, **given))
        except Unsupported as err:
            if one:
                raise
            refused[name] = str(err)
            continue
        results[name] = res
        if trace_out:
            res.write_trace(trace_out if one else suffixed(trace_out, name))
        if gantt_out:
            panels.append(res.gantt_panel(f"{name} on {Path(scenario).name}: {res.makespan_s:.1f} s"))
        res.events = None  # free what the Gantt chart does not need before the next schedule
    return results, refused, panels


def _report(sc, names: list[str], results: dict, refused: dict, scenario: str) -> None:
    """The summary of one schedule, or the comparison table of several with the skipped ones noted."""
    counts = {s.name: s.count for s in sc.servers}
    if len(names) == 1:
        click.echo(summary(results[names[0]], counts))
        return
    click.echo(f"{Path(scenario).name}: {len(sc.devices)} devices, model {sc.arch.name}")
    click.echo(comparison_table(results, counts))
    for why in refused.values():
        click.echo(f"note: skipped {why}")
