"""``sfsim validate``: run a scenario for real and in the simulator, and report the prediction error.

1. The real run: the distributed trainer (one process per role, ``--launch local``) on the scenario,
   one epoch, with the chosen emulation; its merged trace is the *measured* timeline.
2. The prediction: the simulator on the same scenario, made to describe what really ran: the run's
   model, micro-batch, accumulate, per-device sample counts, cuts, LoRA blocks and targets, the mean
   trimmed sequence length of its micro-batches, per-device credits, SplitLoRA's client order
   (``--client-order``: ``training.client_order``) and the same server order (a paced
   order for ``proportional``/``round-robin``); the server's and (without ``--emulate compute``) the
   devices' speeds from measured latency profiles (``sfsim profile``); without ``--emulate links``
   the links are loopback (10 Gbit/s, no latency), and with ``--emulate none`` every device is always
   online. Time-varying links and availability are emulated as the simulator models them
   (:mod:`trainer.transport.dynamics`).
3. The comparison, for the total time and every stage: predicted, measured and
   ``error = (predicted - measured) / measured``.

Stages (sums of op durations over lanes, in seconds; ``waiting`` is the server's idle time inside
the run's span): ``device_forward`` (F on device lanes), ``device_backward`` (B/W/BW on device lanes),
``device_step``, ``uplink``, ``downlink`` (``send`` on ``link:``/``downlink:`` lanes), ``server_F``,
``server_B``, ``server_W``, ``server_BW``, ``server_step``, ``aggregate``, ``waiting``. The total is
the span from the first to the last event of each timeline. A stage that is a small share of the
run (under 2% of the measured span, e.g. an optimizer step of a few LoRA matrices) is reported but
flagged ``minor``: its relative error says little.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from sfsim.errors import SfsimError
from sfsim.outputs.trace import TraceEvent, read_chrome_trace, write_chrome_trace
from sfsim.scenario.schema import write_atomic

#: simulator policy that replays each trainer server order
POLICY_OF_ORDER = {"proportional": "paced-proportional", "round-robin": "paced-round-robin", "fifo": "fifo",
                   "pool": "pool"}
LOOPBACK = "10 Gbps"
MINOR = 0.02  # a stage under this share of the measured span is flagged minor


@dataclass
class ValidateConfig:
    """Settings of one ``sfsim validate`` (a subset of ``sfsim run``'s plus the profiles)."""

    devices: str
    model: str
    method: str
    out: str
    task: str = "sst2"
    partition: str = "iid"
    emulate: str = "all"
    data_dir: str | None = None
    train_samples: int | None = None
    split: int | None = None
    server_order: str = "proportional"
    seed: int = 0
    max_len: int = 64
    micro_batch: int | None = None
    buffer: int | None = None
    threads: int = 1
    server_profile: str | None = None
    device_profile: str | None = None
    accumulate: int | None = None  # micro-batches per optimizer step (None: the scenario's)
    client_order: str | None = None  # splitlora: interleaved (None: the trainer's default) or sequential

    def __post_init__(self):
        if self.emulate not in ("none", "compute", "links", "all"):
            raise SfsimError(f"unknown --emulate {self.emulate!r}: use none, compute, links or all")
        if self.emulate in ("none", "links") and self.device_profile is None:
            raise SfsimError("without --emulate compute the devices run at this machine's speed: give "
                             "--device-profile (made by sfsim profile --role device) or use --emulate compute/all")
        for name in ("server_profile", "device_profile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise SfsimError(f"--{name.replace('_', '-')} {path}: no such file (make one with sfsim profile)")


def run_validation(vc: ValidateConfig) -> dict:
    """Run for real, simulate, compare; write report.json, overlay.png and trace.json into ``vc.out``."""
    from trainer.run.launch import run
    from trainer.run.runner import RunConfig

    out = Path(vc.out)
    out.mkdir(parents=True, exist_ok=True)
    rc = RunConfig(devices=vc.devices, model=vc.model, task=vc.task, method=vc.method, partition=vc.partition,
                   out=str(out / "run"), split=vc.split, epochs=1, train_samples=vc.train_samples, eval_samples=8,
                   seed=vc.seed, max_len=vc.max_len, data_dir=vc.data_dir, server_order=vc.server_order,
                   micro_batch=vc.micro_batch, buffer=vc.buffer, progress=False, launch="local", emulate=vc.emulate,
                   threads=vc.threads, count_flops=False, accumulate=vc.accumulate, client_order=vc.client_order)
    metrics = run(rc)
    measured = read_chrome_trace(out / "run" / "trace.json")
    sim = predict(vc, metrics)
    predicted = sim.events
    report = compare(predicted, measured, list(metrics["server_flops"]))  # every server's lane
    report.update(method=metrics["method"], server_order=vc.server_order, client_order=metrics.get("client_order"),
                  accumulate=metrics["accumulate"], emulate=vc.emulate,
                  simulator_policy=POLICY_OF_ORDER[vc.server_order], config=dataclasses.asdict(vc),
                  seq_len=_mean_tokens(metrics), devices=list(metrics["device_flops"]),
                  samples_not_trained={"predicted": sim.samples_not_trained, "measured": metrics["samples_not_trained"]},
                  handovers={"predicted": sim.handovers, "measured": metrics.get("handovers", [])})
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    both = [e._replace(lane=f"predicted {e.lane}") for e in predicted] + \
           [e._replace(lane=f"measured {e.lane}") for e in measured]
    write_chrome_trace(both, out / "trace.json", {"method": metrics["method"], "kind": "predicted vs measured"})
    _overlay(predicted, measured, out / "overlay.png", metrics, report)
    return report


def _mean_tokens(metrics: dict) -> int:
    """Tokens per sample, averaged over samples (micro-batches are trimmed to their longest row)."""
    shapes = [s for ss in metrics["microbatch_shapes"].values() for s in ss]
    samples = sum(b for b, _ in shapes)
    return max(1, round(sum(b * t for b, t in shapes) / samples)) if samples else 1


def sim_overrides(vc: ValidateConfig, metrics: dict, credits_key: bool) -> list[tuple[str, object]]:
    """Scenario changes that make the simulator describe the run that happened (see the module docstring)."""
    sets: list[tuple[str, object]] = [
        ("model.name", _sim_model(vc.model)), ("model.seq_len", _mean_tokens(metrics)),
        ("training.micro_batch", metrics["micro_batch"]), ("training.epochs", 1),
        ("training.accumulate", metrics["accumulate"]), ("training.buffer", metrics["buffer"]),
        ("training.server_policy", POLICY_OF_ORDER[vc.server_order]),
    ]
    if credits_key:
        sets.append(("training.credits", "device"))
    if metrics.get("client_order"):  # splitlora: the order its clients ran in
        sets.append(("training.client_order", metrics["client_order"]))
    for name, n in metrics["samples_by_device"].items():
        sets.append((f"devices[{name}].samples", n))
        if vc.emulate in ("none", "links"):
            sets += [(f"devices[{name}].latency_profile", str(Path(vc.device_profile).resolve())),
                     (f"devices[{name}].flops", None)]
        if vc.emulate in ("none", "compute"):  # the whole link: a trace or a channel model goes too
            sets += [(f"devices[{name}].{link}", {"bandwidth": LOOPBACK, "latency": 0}) for link in ("uplink", "downlink")]
        if vc.emulate == "none":  # nothing emulated: every device stays online (trainer.transport.dynamics)
            sets.append((f"devices[{name}].availability", None))
    if vc.server_profile is not None:
        sets += [("servers[0].latency_profile", str(Path(vc.server_profile).resolve())), ("servers[0].flops", None)]
    return sets


def _per_device_tokens(data: dict, vc: ValidateConfig, metrics: dict) -> None:
    """Give each device its own token load: the scenario has one ``seq_len``, but a device whose samples
    are longer than the mean computes and sends more. Its FLOP rate and link rates are divided by
    ``r = its tokens per sample / the mean``, so that at the shared ``seq_len`` its forward and transfer
    times are those of its real sequence lengths (linear in tokens; attention's T^2 share is small)."""
    from sfsim.units import parse_quantity

    mean = _mean_tokens(metrics)
    for d in data["devices"]:
        shapes = metrics["microbatch_shapes"].get(d["name"])
        if not shapes:
            continue
        r = sum(b * t for b, t in shapes) / sum(b for b, _ in shapes) / mean
        if vc.emulate in ("compute", "all") and d.get("flops") is not None:
            d["flops"] = parse_quantity(d["flops"], "flops") / r
        if vc.emulate in ("links", "all"):
            for link in ("uplink", "downlink"):
                if isinstance(d.get(link), dict):
                    _scale_link(d[link], r, vc, f"{d['name']}-{link}")


def _scale_link(link: dict, r: float, vc: ValidateConfig, name: str) -> None:
    """Divide a link's rate by ``r``: its bandwidth, a Gilbert-Elliott channel's two rates, or a trace
    (a scaled copy written to ``OUT/traces/NAME.csv``)."""
    from sfsim.network.linkrate import read_trace
    from sfsim.units import parse_quantity

    if "bandwidth" in link:
        link["bandwidth"] = parse_quantity(link["bandwidth"], "bandwidth") / r
    ge = link.get("gilbert_elliott")
    if isinstance(ge, dict):
        for key in ("good", "bad"):
            ge[key] = parse_quantity(ge[key], "bandwidth") / r
    if "trace" in link:
        steps = read_trace(Path(vc.devices).parent / link["trace"], vc.devices, f"{name}.trace")
        rows = "".join(f"{t!r},{bw / r!r}\n" for t, bw in zip(steps.times, steps.rates, strict=True))
        path = Path(vc.out) / "traces" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, f"# {link['trace']}, bandwidths / {r:.6f} (this device's tokens per sample / the mean)\n"
                           f"time_s,bandwidth\n{rows}")
        link["trace"] = str(path.resolve())


def _sim_model(model: str) -> str:
    """The simulator's name for the run's model: a built-in name, or a local folder's config.json."""
    path = Path(model)
    if path.is_dir() and (path / "config.json").is_file():
        return str((path / "config.json").resolve())
    return model


def predict(vc: ValidateConfig, metrics: dict):
    """The simulator's timeline (``trace=True``) for the run described by ``metrics``."""
    import sfsim

    sc = sim_scenario(vc, metrics)
    kw = {"splits": dict(metrics["cuts"]), "trace": True}
    if metrics["method"].startswith("splitfrozen"):
        kw["lora_start"] = metrics["lora_start"]
        kw["policy"] = POLICY_OF_ORDER[vc.server_order]
    return sfsim.simulate(sc, metrics["method"], **kw)


def sim_scenario(vc: ValidateConfig, metrics: dict):
    """The scenario file with :func:`sim_overrides` applied (devices expanded, so each can differ)."""
    from sfsim.scenario.config import Training, scenario_from_dict
    from sfsim.scenario.overrides import apply
    from sfsim.scenario.schema import read_yaml

    data = read_yaml(vc.devices)
    _expand_counts(data)
    credits_key = "credits" in getattr(Training, "__pydantic_fields__", {}) or any(
        f.name == "credits" for f in dataclasses.fields(Training))
    sets = sim_overrides(vc, metrics, credits_key)
    data = apply(data, [(k, v) for k, v in sets if v is not None], file=vc.devices)
    data["training"].setdefault("lora", {})["targets"] = list(metrics["lora_targets"])  # a list: set directly
    _per_device_tokens(data, vc, metrics)
    for key, v in sets:  # None: drop the key (a device's flops when a latency profile replaces it)
        if v is None:
            section, name, field = re.fullmatch(r"(devices|servers)\[([^\]]+)\]\.(\w+)", key).groups()
            for i, item in enumerate(data[section]):
                if str(i) == name or item.get("name") == name:
                    item.pop(field, None)
    if vc.device_profile is not None:
        for d in data["devices"]:
            d["warmup"] = 0.0
        for name, w in warmups(scenario_from_dict(data, source=vc.devices), vc.device_profile,
                               dict(metrics["cuts"])).items():
            next(d for d in data["devices"] if d["name"] == name)["warmup"] = w
    return scenario_from_dict(data, source=vc.devices)


def warmups(sc, device_profile: str, cuts: dict[str, int]) -> dict[str, float]:
    """Each device's first-forward warm-up, from the device profile's first-call measurement.

    A fresh process's first forward takes the profile's ``first_call.extra_s`` longer than a steady
    one. Emulated, a forward is stretched (by sleeping) to the scenario's time ``t_target``, so the
    first one overruns only by what its real time ``t_real + extra`` exceeds it:
    ``warmup = max(0, t_real + extra - t_target)``; at real speed (no compute emulation)
    ``t_target = t_real`` and the warm-up is ``extra``. ``t_real`` is the profile's steady forward of
    the device's blocks at the run's shape.
    """
    from dataclasses import replace

    from sfsim.cost.latency import load_latency_profile
    from sfsim.cost.model import CostModel

    first = load_latency_profile(device_profile).first_call
    if first is None:
        return {}
    cm = CostModel(sc)
    out = {}
    for d in sc.devices:
        work = cm.device_prefix(cuts.get(d.name, 0))
        t_target = cm.seconds(work, d)[0]
        t_real = cm.seconds(work, replace(d, latency_profile=str(Path(device_profile).resolve()), flops=None))[0]
        out[d.name] = round(max(0.0, t_real + first.extra_s - t_target), 6)
    return out


def _expand_counts(data: dict) -> list[dict]:
    """The device list with ``count`` expanded into named devices (``name-0``...), in place."""
    out = []
    for d in data["devices"]:
        n = d.get("count", 1)
        if n == 1 and "count" not in d:
            out.append(d)
            continue
        for i in range(n):
            e = {k: copy.deepcopy(v) for k, v in d.items() if k != "count"}  # own links: each is scaled alone
            e["name"] = f"{d['name']}-{i}"
            out.append(e)
    data["devices"] = out
    return out


def stage_of(e: TraceEvent, servers: list[str]) -> str | None:
    """The stage an event counts toward (see the module docstring)."""
    lane = e.lane
    if lane.startswith("link:"):
        return "uplink"
    if lane.startswith("downlink:"):
        return "downlink"
    if lane.split("/")[0] in servers:
        return "aggregate" if e.op == "aggregate" else f"server_{e.op}" if e.op != "wait" else None
    if e.op == "F":
        return "device_forward"
    if e.op in ("B", "W", "BW"):
        return "device_backward"
    if e.op == "step":
        return "device_step"
    return None


def stages(events: list[TraceEvent], servers: list[str]) -> tuple[float, dict[str, float]]:
    """(span, stage -> seconds) of a timeline."""
    if not events:
        return 0.0, {}
    t0, t1 = min(e.start for e in events), max(e.end for e in events)
    out: dict[str, float] = {}
    busy: dict[str, float] = {}
    for e in events:
        st = stage_of(e, servers)
        if st is not None:
            out[st] = out.get(st, 0.0) + e.dur
        if e.lane.split("/")[0] in servers and e.op != "wait":
            busy[e.lane] = busy.get(e.lane, 0.0) + e.dur
    out["waiting"] = sum(max(0.0, (t1 - t0) - b) for b in busy.values())
    return t1 - t0, out


def _row(pred: float, meas: float) -> dict:
    """One report row; the error is computed from the rounded figures it sits beside, so it re-derives exactly."""
    pred, meas = round(pred, 6), round(meas, 6)
    return {"predicted_s": pred, "measured_s": meas,
            "error": round((pred - meas) / meas, 6) if meas > 0 else None}


def compare(predicted: list[TraceEvent], measured: list[TraceEvent], servers: list[str]) -> dict:
    """The report: total and per-stage predicted, measured, error.

    When one side runs the server's backward fused (``BW``, the sequential ablation in the trainer)
    and the other as ``B`` then ``W`` (the simulator records them apart even when back to back), both
    are folded into one ``server_backward`` stage so that like is compared with like.
    """
    tp, sp = stages(predicted, servers)
    tm, sm = stages(measured, servers)
    if sp.get("server_BW", 0) > 0 or sm.get("server_BW", 0) > 0:
        for side in (sp, sm):
            side["server_backward"] = sum(side.pop(k, 0.0) for k in ("server_B", "server_W", "server_BW"))
    names = [n for n in ("device_forward", "device_backward", "device_step", "uplink", "downlink", "server_F",
                         "server_B", "server_W", "server_BW", "server_backward", "server_step", "aggregate",
                         "waiting")
             if sp.get(n, 0) > 0 or sm.get(n, 0) > 0]
    rows = {n: _row(sp.get(n, 0.0), sm.get(n, 0.0)) for n in names}
    for r in rows.values():
        r["minor"] = r["measured_s"] < MINOR * tm
    return {"total": _row(tp, tm), "stages": rows}


def _overlay(predicted, measured, path: Path, metrics: dict, report: dict) -> None:
    """Predicted lanes above measured ones, one shared time axis (each timeline from its own start)."""
    from sfsim.outputs.gantt import Panel, write_panels

    def shift(evs):
        t0 = min((e.start for e in evs), default=0.0)
        return [e._replace(start=e.start - t0) for e in evs]

    devices = list(metrics["device_flops"])
    servers = list(metrics["server_flops"])
    err = report["total"]["error"]
    write_panels([Panel(shift(predicted), "predicted (simulator)", devices, servers=servers),
                  Panel(shift(measured), "measured (distributed run)", devices, servers=servers)], path,
                 title=f"{metrics['method']}: total error {100 * err:+.1f}%" if err is not None else metrics["method"])


def format_report(report: dict) -> str:
    """The report as a table for the terminal."""
    lines = [f"{'stage':16} {'predicted s':>12} {'measured s':>11} {'error':>8}"]
    for name, row in [("total", report["total"]), *report["stages"].items()]:
        e = "" if row["error"] is None else f"{100 * row['error']:+7.1f}%"
        lines.append(f"{name:16} {row['predicted_s']:12.3f} {row['measured_s']:11.3f} {e:>8}")
    return "\n".join(lines)
