"""The claims report's analytic and simulated parts: device compute against the cut, time against bandwidth.

These need no data and run in seconds, so the report recomputes them every time:

- :func:`cut_savings`: SplitFrozen's device FLOPs against FedLoRA's and SplitLoRA's for every cut of
  a scenario's model (the cost model, whose FLOPs the tests match to ``FlopCounterMode``);
- :func:`measured_gpt2_saving`: the same at one cut, measured with ``FlopCounterMode`` on GPT-2 small
  built from ``GPT2Config()`` (random weights: FLOPs do not depend on them);
- :func:`edge_times`: simulated training time of every method on a scenario (``profiles/edge.yaml``);
- :func:`bandwidth_sweep`: the same with every device link scaled by a factor, and where SplitFrozen's
  time saving reaches the paper's figure (:data:`trainer.claims.paper.PAPER`) or turns negative.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from sfsim.cost.model import CostModel
from sfsim.scenario.config import Scenario, scenario_from_dict
from sfsim.units import format_quantity, parse_quantity

#: Simulated rows of the time comparison, SplitFrozen first (``splitlora``: clients interleaved).
SCHEDULES = ("splitfrozen", "splitfrozen-sequential", "splitlora", "splitlora-sequential", "fedlora")
#: Rows that are a schedule with options: label -> (schedule, :func:`sfsim.simulate` options).
VARIANTS = {"splitlora-sequential": ("splitlora", {"client_order": "sequential"})}


def cut_savings(scenario: Scenario) -> list[dict]:
    """Device FLOPs per micro-batch at every cut 1..L-1 and SplitFrozen's saving against each baseline.

    SplitFrozen's device runs the embeddings and ``k`` blocks forward only; a SplitLoRA client runs
    them with LoRA, forward and backward; a FedLoRA device trains the whole model (fixed in ``k``).
    """
    cm = CostModel(scenario)
    fed = cm.full_model().total
    rows = []
    for k in range(1, cm.n_layers):
        sf, sl = cm.device_prefix(k).total, cm.splitlora_client(k).total
        rows.append({"cut": k, "splitfrozen_flops": sf, "splitlora_flops": sl, "fedlora_flops": fed,
                     "saving_vs_fedlora": 1 - sf / fed, "saving_vs_splitlora": 1 - sf / sl})
    return rows


def measured_gpt2_saving(cut: int = 3, seq_len: int = 128, num_labels: int = 2) -> dict:
    """``FlopCounterMode`` on GPT-2 small (``GPT2Config()``), one sample of ``seq_len`` tokens.

    SplitFrozen's device: embeddings and ``cut`` blocks, forward, no autograd. FedLoRA's device: the
    whole model with LoRA (r=8) on ``c_attn`` and a mean-pooled linear head, forward and backward.
    FLOPs are linear in the batch, so the saving is the same at any batch size.
    """
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2Model

    from trainer.run.measure import flop_counter

    torch.manual_seed(0)
    model = GPT2Model(GPT2Config()).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len))
    with torch.no_grad(), flop_counter() as fc:
        h = model.wte(ids) + model.wpe(torch.arange(seq_len)[None])
        for block in model.h[:cut]:
            out = block(h)
            h = out[0] if isinstance(out, tuple) else out
    device_sf = fc.get_total_flops()
    head = torch.nn.Linear(model.config.n_embd, num_labels)
    with warnings.catch_warnings():  # transformers' deprecation notice inside peft: not the user's business
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["c_attn"],
                                                      fan_in_fan_out=True))
        with flop_counter() as fc:
            logits = head(peft_model(input_ids=ids).last_hidden_state.mean(1))
            torch.nn.functional.cross_entropy(logits, torch.tensor([1])).backward()
    device_fed = fc.get_total_flops()
    return {"cut": cut, "seq_len": seq_len, "splitfrozen_flops": device_sf, "fedlora_flops": device_fed,
            "saving_vs_fedlora": 1 - device_sf / device_fed}


def load_raw(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def scaled_links(raw: dict, factor: float) -> dict:
    """A copy of a scenario dict with every device's uplink and downlink bandwidth times ``factor``."""
    data = copy.deepcopy(raw)
    for dev in data["devices"]:
        for link in ("uplink", "downlink"):
            if link in dev and "bandwidth" in dev[link]:
                bps = parse_quantity(dev[link]["bandwidth"], "bandwidth") * factor
                dev[link]["bandwidth"] = f"{bps:.6g} bps"
    return data


def edge_times(scenario: Scenario) -> dict[str, dict]:
    """Simulated makespan, device FLOPs and traffic of each schedule; SplitFrozen on the planner's cuts.

    The sequential ablation uses the same plan; SplitLoRA its scenario cut (``training.splitlora_cut``),
    its clients interleaved (``splitlora``) and one after another (``splitlora-sequential``); FedLoRA
    has no cut.
    """
    import sfsim

    plan = sfsim.plan(scenario).to_plan()
    out = {}
    for name in SCHEDULES:
        schedule, options = VARIANTS.get(name, (name, {}))
        res = sfsim.simulate(scenario, schedule, plan=plan if name.startswith("splitfrozen") else None, **options)
        out[name] = {"makespan_s": res.makespan_s, "device_flops_total": res.device_flops_total,
                     "uplink_bytes": res.uplink_bytes, "downlink_bytes": res.downlink_bytes,
                     "cuts": sorted(set(res.splits.values())) if res.splits else []}
    for name in SCHEDULES[1:]:
        out[name]["splitfrozen_time_saving"] = 1 - out["splitfrozen"]["makespan_s"] / out[name]["makespan_s"]
    return out


def bandwidth_sweep(path: str | Path, factors: list[float]) -> list[dict]:
    """:func:`edge_times` with every device link scaled by each factor (SplitFrozen re-planned at each)."""
    raw = load_raw(path)
    rows = []
    for f in factors:
        times = edge_times(scenario_from_dict(scaled_links(raw, f), source=str(path)))
        rows.append({"factor": f, **{f"{n}_s": t["makespan_s"] for n, t in times.items()},
                     **{f"saving_vs_{n}": t["splitfrozen_time_saving"] for n, t in times.items()
                        if n != "splitfrozen"}})
    return rows


def crossings(rows: list[dict], baseline: str, level: float) -> dict:
    """Which swept factors give a saving against ``baseline`` at or above ``level``, and which lose (< 0)."""
    key = f"saving_vs_{baseline}"
    return {"at_or_above": [r["factor"] for r in rows if r[key] >= level],
            "negative": [r["factor"] for r in rows if r[key] < 0]}


def bandwidth_label(raw: dict, factor: float) -> str:
    """The scaled first device's uplink, for axis labels: ``'8 Mbit/s'``."""
    dev = raw["devices"][0]
    return format_quantity(parse_quantity(dev["uplink"]["bandwidth"], "bandwidth") * factor, "bandwidth")


#: Simulator schedule of each accuracy-grid method (CenLoRA trains at the server alone: no fleet time).
GRID_SCHEDULES = {"splitfrozen": ("splitfrozen", {}), "splitlora-interleaved": ("splitlora", {"client_order": "interleaved"}),
                  "splitlora-sequential": ("splitlora", {"client_order": "sequential"}), "fedlora": ("fedlora", {})}


def epoch_seconds(fleet: str | Path, method: str, train_samples: int, max_len: int, cut: int,
                  knobs: dict | None = None, model: str | None = None, epochs: int = 1) -> float | None:
    """Simulated seconds of ``epochs`` epochs of ``method`` on ``fleet`` with ``train_samples`` split as its
    devices' samples, ``max_len`` tokens, ``model``'s shape (default: the fleet's), the cut and the tuned
    knobs (``local_steps``, ``fedavg_every``); None for CenLoRA (no fleet). A fleet with
    ``training.cache_activations`` makes SplitFrozen's epochs after the first cheaper, so the time of
    ``epochs`` epochs is simulated whole, not scaled from one."""
    import sfsim

    if method not in GRID_SCHEDULES:
        return None
    raw = copy.deepcopy(load_raw(fleet))
    total = sum(d.get("count", 1) * d["samples"] for d in raw["devices"])
    for d in raw["devices"]:
        d["samples"] = max(1, round(d["samples"] * train_samples / total))
    raw["model"]["seq_len"] = max_len
    if model is not None and model != raw["model"]["name"]:  # another family: its default LoRA targets, as the runtime
        raw["model"]["name"] = model
        raw["training"]["lora"].pop("targets", None)
    raw["training"]["epochs"] = epochs
    raw["training"].update({k: v for k, v in (knobs or {}).items() if k in ("local_steps", "fedavg_every")})
    schedule, options = GRID_SCHEDULES[method]
    sc = scenario_from_dict(raw, source=str(fleet))
    split = None if schedule == "fedlora" else cut
    return sfsim.simulate(sc, schedule, splits=split, **options).makespan_s
