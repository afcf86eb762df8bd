"""``sfsim validate``: run a scenario for real and in the simulator, and report the prediction error.

1. The real run: the distributed trainer (one process per role, ``--launch local``) on the scenario,
   one epoch (``--epochs``: more, e.g. a second from ``training.cache_activations``), with the chosen emulation; its merged trace is the *measured* timeline.
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
4. Whether the run kept up with its emulation (metrics.json ``emulation``, :mod:`trainer.run.emulation`): a run
   that fell behind ran slower than the scenario, so its measured times are not the scenario's; the report says
   so (``emulation_note``) and :func:`median_error` leaves such cases out of a table's median.

Stages and the report's table: :mod:`trainer.validate.table`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import sfsim
from sfsim.cost.hostshare import runnable_shares, scale_profile, slowdown
from sfsim.cost.latency import load_latency_profile
from sfsim.cost.model import CostModel
from sfsim.errors import SfsimError
from sfsim.methods import canonical
from sfsim.network.linkrate import read_trace
from sfsim.outputs.gantt import Panel, write_panels
from sfsim.outputs.trace import read_chrome_trace, write_chrome_trace
from sfsim.scenario.config import Training, expanded_names, scenario_from_dict
from sfsim.scenario.overrides import apply
from sfsim.scenario.schema import read_yaml, write_atomic
from sfsim.units import parse_quantity
from trainer.run.emulation import note, section
from trainer.run.launch import run
from trainer.run.runner import RunConfig
from trainer.validate.corewait import server_cpu
from trainer.validate.machine import check_devices, check_emulation, server_profile, sim_model
from trainer.validate.profile import LoadSampler, load_factor
from trainer.validate.stagerows import codec_measured, codec_predicted
from trainer.validate.table import (  # noqa: F401  (re-exported: the report's table lives there)
    MINOR,
    _row,
    compare,
    format_header,
    format_report,
    rank_agreement,
    stage_of,
    stages,
)

#: simulator policy that replays each trainer server order
POLICY_OF_ORDER = {"proportional": "paced-proportional", "round-robin": "paced-round-robin", "fifo": "fifo",
                   "pool": "pool"}
LOOPBACK = "10 Gbps"


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
    epochs: int = 1  # of the run and the simulation (2 with training.cache_activations: the cached epoch too)
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
    allow_native: bool = False  # run devices this machine cannot emulate at native speed (flagged) instead of refusing
    host_sharing: bool = True  # model the CPU sharing of the run's co-located processes (sfsim.cost.hostshare)
    load_calibration: bool = False  # scale the server's profile by the load sampler's ratio (opt-in: see the docs)
    wire_dtype: str | None = None  # the activation codec of the run and the simulation (None: the scenario's)

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
        canonical(self.method)  # a typo is one line before any profiling or loading
        for name in ("train_samples", "micro_batch", "accumulate", "max_len", "buffer", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SfsimError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")


def run_validation(vc: ValidateConfig, say=print) -> dict:
    """Run for real, simulate, compare; write report.json, overlay.png and trace.json into ``vc.out``.

    Without ``vc.server_profile`` this machine's server role is profiled first (or its cached profile
    loaded, :func:`trainer.validate.machine.server_profile`); devices rated faster than this machine can
    run them are refused before the run unless ``vc.allow_native`` (then simulated at native speed).
    """

    out = Path(vc.out)
    out.mkdir(parents=True, exist_ok=True)
    check_devices(vc)
    source = "given" if vc.server_profile is not None else None
    if source is None:
        vc, source = _own_server_profile(vc, say)
    native = check_emulation(vc)
    rc = RunConfig(devices=vc.devices, model=vc.model, task=vc.task, method=vc.method, partition=vc.partition,
                   out=str(out / "run"), split=vc.split, epochs=vc.epochs, train_samples=vc.train_samples, eval_samples=8,
                   seed=vc.seed, max_len=vc.max_len, data_dir=vc.data_dir, server_order=vc.server_order,
                   micro_batch=vc.micro_batch, buffer=vc.buffer, progress=False, launch="local", emulate=vc.emulate,
                   threads=vc.threads, count_flops=False, accumulate=vc.accumulate, client_order=vc.client_order,
                   server_device="cpu", wire_dtype=vc.wire_dtype)  # as the server's profile was measured (auto would take a GPU)
    load = [round(os.getloadavg()[0], 2)]
    with _threads(vc.threads), LoadSampler() as sampler:  # this machine's speed during the run, as when profiled
        metrics = run(rc)
    load.append(round(os.getloadavg()[0], 2))
    measured = read_chrome_trace(out / "run" / "trace.json")
    sim, host, profiles = predict_shared(vc, metrics, native, sampler.mean)
    predicted = sim.events
    sc = sim_scenario(vc, metrics, profiles)
    codec = codec_predicted(sc, predicted, sim.assignment, metrics["method"])
    em = metrics.get("emulation")
    if em is not None:  # a first forward's warm-up the simulation models too is no emulation falling behind
        em = section(em["lanes"], em["span_s"], {d.name: d.warmup for d in sc.devices})
    report = compare(predicted, measured, list(metrics["server_flops"]),  # every server's lane
                     {"codec": (codec, codec_measured(metrics))})
    report["header"] = header(vc, source, native, host, load, list(metrics["device_flops"]))
    report["server_cpu"] = server_cpu(report, metrics, rc.threads)  # compute against core waits (trainer.validate.corewait)
    report.update(method=metrics["method"], server_order=vc.server_order, client_order=metrics.get("client_order"),
                  accumulate=metrics["accumulate"], emulate=vc.emulate,
                  simulator_policy=POLICY_OF_ORDER[vc.server_order], config=dataclasses.asdict(vc),
                  seq_len=_mean_tokens(metrics), devices=list(metrics["device_flops"]),
                  samples_not_trained={"predicted": sim.samples_not_trained, "measured": metrics["samples_not_trained"]},
                  handovers={"predicted": sim.handovers, "measured": metrics.get("handovers", [])},
                  emulation=em, emulation_note=note(em))
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    both = [e._replace(lane=f"predicted {e.lane}") for e in predicted] + \
           [e._replace(lane=f"measured {e.lane}") for e in measured]
    write_chrome_trace(both, out / "trace.json", {"method": metrics["method"], "kind": "predicted vs measured"})
    _overlay(predicted, measured, out / "overlay.png", metrics, report)
    return report


def format_validation(report: dict) -> str:
    """The printed report (:func:`format_report`), then, for a run that fell behind its emulation, that line."""
    text = format_report(report)
    why = report.get("emulation_note")
    return text if why is None else f"{text}\nnote: {why}; this case belongs in no error median"


def median_error(rows: dict[str, dict]) -> dict:
    """The median |total error| of a table of validations (``name -> {"error": e, "emulation_note": why or None}``),
    leaving out the cases whose run fell behind its emulation: their measured time is not the scenario's.

    Returns:
        ``{"median_abs_error", "runs"`` (the cases in the median)``, "left_out"`` (name -> why)``}``.

    Example:
        >>> median_error({"a": {"error": -0.01}, "b": {"error": 0.5, "emulation_note": "fell behind"},
        ...               "c": {"error": 0.03}})
        {'median_abs_error': 0.02, 'runs': 2, 'left_out': {'b': 'fell behind'}}
    """
    left = {n: r["emulation_note"] for n, r in rows.items() if r.get("emulation_note")}
    errs = [abs(r["error"]) for n, r in rows.items() if n not in left and r.get("error") is not None]
    return {"median_abs_error": round(statistics.median(errs), 4) if errs else None, "runs": len(errs),
            "left_out": left}


def _task_head(task: str) -> tuple[str, int]:
    """(profile task, labels) of a trainer task."""
    return ("causal-lm", 2) if task == "gsm8k" else ("classification", 3 if task == "mnli" else 2)


def _own_server_profile(vc: ValidateConfig, say) -> tuple[ValidateConfig, str]:
    """``vc`` with this machine's server profile (cached or measured now), and how it was obtained."""

    data = read_yaml(vc.devices)
    mb = vc.micro_batch or data.get("training", {}).get("micro_batch", 8)
    task, labels = _task_head(vc.task)
    sp = server_profile(vc.model, sim_model(vc.model), task=task, num_labels=labels, micro_batch=mb,
                        max_len=vc.max_len, threads=vc.threads, say=say)
    how = f"measured now ({sp.wall_s} s)" if sp.measured else f"cached {sp.age_s / 60:.0f} min ago"
    return dataclasses.replace(vc, server_profile=str(sp.path)), f"this machine's, {how}"


def _mean_tokens(metrics: dict) -> int:
    """Tokens per sample, averaged over samples (micro-batches are trimmed to their longest row)."""
    shapes = [s for ss in metrics["microbatch_shapes"].values() for s in ss]
    samples = sum(b for b, _ in shapes)
    return max(1, round(sum(b * t for b, t in shapes) / samples)) if samples else 1


def sim_overrides(vc: ValidateConfig, metrics: dict, credits_key: bool,
                  profiles: dict[str, str] | None = None) -> list[tuple[str, object]]:
    """Scenario changes that make the simulator describe the run that happened (see the module docstring).

    ``profiles``: latency profiles replacing FLOP rates, by device name (devices run at native speed) and
    ``"server"`` (default: ``vc.server_profile``), or ``"server:<name>"`` for one of several servers.
    """
    profiles = dict(profiles or {})
    sets: list[tuple[str, object]] = [
        ("model.name", sim_model(vc.model)), ("model.seq_len", _mean_tokens(metrics)),
        ("training.micro_batch", metrics["micro_batch"]), ("training.epochs", vc.epochs),
        ("training.accumulate", metrics["accumulate"]), ("training.buffer", metrics["buffer"]),
        ("training.server_policy", POLICY_OF_ORDER[vc.server_order]),
    ]
    if vc.wire_dtype is not None:  # --wire-dtype: the codec the run sent
        sets.append(("training.wire_dtype", vc.wire_dtype))
    if metrics.get("eval_samples"):  # the rows the run evaluated after each epoch (sfsim.cost.epochend)
        sets.append(("training.eval_samples", metrics["eval_samples"]))
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
        if name in profiles:  # a device this machine could not emulate: it ran at native speed
            sets += [(f"devices[{name}].latency_profile", str(Path(profiles[name]).resolve())),
                     (f"devices[{name}].flops", None)]
    for srv in metrics.get("server_flops", ()):  # every server process ran on this machine
        server = profiles.get(f"server:{srv}", profiles.get("server", vc.server_profile))
        if server is not None:
            sets += [(f"servers[{srv}].latency_profile", str(Path(server).resolve())), (f"servers[{srv}].flops", None)]
    return sets


def predict_shared(vc: ValidateConfig, metrics: dict, native=(), probe_s: float | None = None) -> tuple:
    """:func:`predict` with the run's co-located processes sharing this machine's cores.

    Every process of the run (the server and each device) is on this machine. Each device burns CPU
    for its compute at this machine's speed (then sleeps, when emulated, up to its scenario time): its
    runnable share is those CPU-seconds over the predicted span. The server's tables are stretched by
    :func:`sfsim.cost.hostshare.slowdown` of those shares (two fixed-point rounds, as the span moves with
    the stretch); devices at native speed get the same stretch. ``probe_s``: this machine's
    :class:`~trainer.validate.profile.LoadSampler` mean during the run; with ``vc.load_calibration`` the tables
    are also scaled by how much slower the machine computed then than while the profile was measured (other
    processes' load, :func:`~trainer.validate.profile.load_factor`).

    Returns:
        (the simulation, the host figures for the report header, the profiles it used: :func:`predict`'s).
    """

    profiles = {d.name: vc.server_profile for d in native}
    sim = predict(vc, metrics, profiles)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    names, servers = list(metrics["samples_by_device"]), list(metrics["server_flops"])
    host = {"cores": cores, "processes": len(servers) + len(names), "threads": vc.threads, "server_slowdown": 1.0}
    if vc.server_profile is None:
        return sim, host, profiles
    ratio = load_factor(read_yaml(vc.server_profile), probe_s)  # reported always, applied on request
    host.update(load_ratio=None if ratio is None else round(ratio, 4), probe_s=None if probe_s is None else round(probe_s, 6),
                load_factor=round(ratio, 4) if vc.load_calibration and ratio is not None else None)
    lf = host["load_factor"]
    if lf is not None:
        path = _stretched(vc, lf)
        profiles = {**{d.name: path for d in native}, "server": path}
        sim = predict(vc, metrics, profiles)
    if not vc.host_sharing:
        return sim, host, profiles
    own = vc.device_profile if vc.emulate in ("none", "links") else vc.server_profile
    cpu = _cpu_seconds(predict(vc, metrics, {n: own for n in names}).events, names)
    cpu = {k: v * (lf or 1.0) for k, v in cpu.items()}  # a loaded machine computes the devices' work slower too
    for _ in range(2):
        span = _span(sim.events)
        shares = runnable_shares(cpu, span)
        busy = runnable_shares(_cpu_seconds(sim.events, servers, lane=lambda lane: lane.split("/")[0]), span)
        # each server shares the cores with the devices and with every other server of the run
        factors = {s: slowdown(cores, [(p, vc.threads) for p in shares.values()]
                               + [(busy[o], vc.threads) for o in servers if o != s], vc.threads) for s in servers}
        paths = {s: _stretched(vc, f * (lf or 1.0), s if len(servers) > 1 else "") for s, f in factors.items()}
        profiles = {**{d.name: paths[servers[0]] for d in native}, **{f"server:{s}": p for s, p in paths.items()}}
        sim = predict(vc, metrics, profiles)
    host.update(server_slowdown=round(max(factors.values()), 4),
                device_cpu_shares={k: round(v, 4) for k, v in shares.items()})
    if len(servers) > 1:
        host.update(server_slowdowns={s: round(f, 4) for s, f in factors.items()},
                    server_cpu_shares={s: round(p, 4) for s, p in busy.items()})
    return sim, host, profiles


@contextlib.contextmanager
def _threads(n: int):
    """torch's threads set to ``n`` for a while (the load sampler measures as the profile did)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _span(events) -> float:
    return max(e.end for e in events) - min(e.start for e in events) if events else 0.0


def _cpu_seconds(events, names: list[str], lane=lambda lane: lane) -> dict[str, float]:
    """Seconds each of ``names`` computes (F, B, W, BW, step, aggregate) on its lanes (``lane``: lane -> name) in
    a timeline."""
    out = dict.fromkeys(names, 0.0)
    for e in events:
        who = lane(e.lane)
        if who in out and e.op in ("F", "B", "W", "BW", "step", "aggregate"):
            out[who] += e.dur
    return out


def _stretched(vc: ValidateConfig, factor: float, server: str = "") -> str:
    """The server profile with every time times ``factor``, written into the validation folder (one file per
    ``server`` of several)."""
    import yaml

    path = Path(vc.out) / f"server-profile-shared{'-' + server if server else ''}.yaml"
    prof = scale_profile(read_yaml(vc.server_profile), factor)
    prof["source"] = f"{prof.get('source', '')} | times x {factor:.4f} for CPU sharing and load (sfsim.cost.hostshare)"
    write_atomic(path, yaml.safe_dump(prof, sort_keys=False, width=200))
    return str(path)


def header(vc: ValidateConfig, source: str, native, host: dict, load: list[float], devices: list[str]) -> dict:
    """What the validation emulated and what ran at native speed, for the top of the report."""
    slow = {d.name for d in native}
    if vc.emulate in ("compute", "all"):
        emulated = [n for n in devices if n not in slow]
    else:
        emulated = []
    return {
        "server": f"native speed of this machine; profile: {source} ({vc.server_profile})",
        "devices_emulated": emulated,
        "devices_native": [{"name": d.name, "scenario_flops": d.scenario_flops,
                            "achievable_flops": round(d.achievable_flops)} for d in native]
        + [{"name": n} for n in devices if vc.emulate in ("none", "links") and n not in slow],
        "links": "emulated (scenario bandwidth, latency, traces)" if vc.emulate in ("links", "all")
        else f"loopback ({LOOPBACK}, no latency)",
        "host": host, "load_average_1min": {"before": load[0], "after": load[-1]},
    }


def _per_device_tokens(data: dict, vc: ValidateConfig, metrics: dict) -> None:
    """Give each device its own token load: the scenario has one ``seq_len``, but a device whose samples
    are longer than the mean computes and sends more. Its FLOP rate and link rates are divided by
    ``r = its tokens per sample / the mean``, so that at the shared ``seq_len`` its forward and transfer
    times are those of its real sequence lengths (linear in tokens; attention's T^2 share is small)."""

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


def predict(vc: ValidateConfig, metrics: dict, profiles: dict[str, str] | None = None):
    """The simulator's timeline (``trace=True``) for the run described by ``metrics`` (``profiles``: as
    :func:`sim_overrides`)."""

    sc = sim_scenario(vc, metrics, profiles)
    kw = {"splits": dict(metrics["cuts"]), "trace": True}
    if metrics["method"].startswith("splitfrozen"):
        kw["lora_start"] = metrics["lora_start"]
        kw["policy"] = POLICY_OF_ORDER[vc.server_order]
    return sfsim.simulate(sc, metrics["method"], **kw)


def sim_scenario(vc: ValidateConfig, metrics: dict, profiles: dict[str, str] | None = None):
    """The scenario file with :func:`sim_overrides` applied (devices expanded, so each can differ)."""

    data = read_yaml(vc.devices)
    _expand_counts(data)
    credits_key = "credits" in getattr(Training, "__pydantic_fields__", {}) or any(
        f.name == "credits" for f in dataclasses.fields(Training))
    sets = sim_overrides(vc, metrics, credits_key, profiles)
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
    """The device list with ``count`` expanded into named devices, in place, named as the simulator and
    the trainer name them (:func:`sfsim.scenario.config.expanded_names`: ``slow`` for ``count: 1``)."""

    out = []
    for d in data["devices"]:
        for name in expanded_names(d["name"], d.get("count", 1)):
            e = {k: copy.deepcopy(v) for k, v in d.items() if k != "count"}  # own links: each is scaled alone
            e["name"] = name
            out.append(e)
    data["devices"] = out
    return out


def _overlay(predicted, measured, path: Path, metrics: dict, report: dict) -> None:
    """Predicted lanes above measured ones, one shared time axis (each timeline from its own start)."""

    def shift(evs):
        t0 = min((e.start for e in evs), default=0.0)
        return [e._replace(start=e.start - t0) for e in evs]

    devices = list(metrics["device_flops"])
    servers = list(metrics["server_flops"])
    err = report["total"]["error"]
    write_panels([Panel(shift(predicted), "predicted (simulator)", devices, servers=servers),
                  Panel(shift(measured), "measured (distributed run)", devices, servers=servers)], path,
                 title=f"{metrics['method']}: total error {100 * err:+.1f}%" if err is not None else metrics["method"])
