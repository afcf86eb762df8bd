"""Scenario loading: expansion of device types, defaults, and one-line errors for bad input."""

import copy
from pathlib import Path

import pytest
import yaml

from sfsim import load_scenario, scenario_from_dict
from sfsim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "model": {"name": "gpt2", "seq_len": 128, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 8},
    "servers": [{"name": "srv", "flops": "10 TFLOPS", "memory": "24 GiB"}],
    "devices": [
        {"name": "pi", "count": 2, "flops": "40 GFLOPS", "memory": "8 GiB", "samples": 100,
         "uplink": {"bandwidth": "50 Mbps", "latency": "20 ms"}, "downlink": {"bandwidth": "100 Mbps"}},
        {"name": "laptop", "flops": "200 GFLOPS", "memory": "16 GiB", "samples": 20,
         "uplink": {"bandwidth": "1 Gbps"}, "downlink": {"bandwidth": "1 Gbps"}},
    ],
}


def test_expands_device_types_in_order():
    sc = scenario_from_dict(copy.deepcopy(BASE))
    assert [d.name for d in sc.devices] == ["pi-0", "pi-1", "laptop"]
    pi = sc.devices[0]
    assert (pi.type, pi.flops, pi.memory, pi.samples) == ("pi", 40e9, 8 * 2**30, 100)
    assert (pi.uplink.bandwidth, pi.uplink.latency, pi.downlink.latency) == (50e6, 0.02, 0.0)
    assert pi.server == "srv" and not pi.server_pinned
    assert sc.micro_batches(pi) == 13 and sc.micro_batches(sc.devices[2]) == 3
    assert sc.arch.n_layers == 12 and sc.training.buffer == 4 and sc.training.decompose_backward


def test_bundled_profiles_load():
    edge = load_scenario(ROOT / "profiles/edge.yaml")
    assert len(edge.devices) == 12 and [s.name for s in edge.servers] == ["edge-gpu"]
    sixg = load_scenario(ROOT / "profiles/sixg.yaml")
    assert len(sixg.servers) == 4 and len(sixg.devices) == 48
    assert {d.server for d in sixg.devices if d.type == "xr"} == {"mec-b"}
    measured = load_scenario(ROOT / "profiles/measured.yaml")
    box = measured.devices[0]
    assert box.flops is None and measured.resolve_path(box.latency_profile).is_file()


def _set(path, value):
    def mutate(d):
        *parents, last = path
        for p in parents:
            d = d[p]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return mutate


@pytest.mark.parametrize("mutate, message", [
    (_set(["devices", 0, "uplink", "bandwidth"], "50 Mbs"),
     "s.yaml: devices[0].uplink.bandwidth: '50 Mbs' is not a bandwidth; write e.g. '50 Mbps' or a number in bit/s"),
    (_set(["devices", 1, "colour"], "red"),
     "s.yaml: devices[1].colour: unknown key; allowed here: name, memory, samples, uplink, downlink, count, "
     "flops, latency_profile, warmup, server, power, handover, availability"),
    (_set(["devices", 0, "samples"], KeyError), "s.yaml: devices[0].samples: required key is missing"),
    (_set(["servers", 0, "flops"], -1), "s.yaml: servers[0].flops: Input should be greater than 0 (got -1)"),
    (_set(["devices", 0, "uplink", "bandwidth"], 0),
     "s.yaml: devices[0].uplink.bandwidth: Input should be greater than 0 (got 0)"),
    (_set(["devices", 0, "server"], "cloud"), "s.yaml: devices[0].server: no server named 'cloud'; servers are: srv"),
    (_set(["training", "split"], 12),
     "s.yaml: training.split: 12 is beyond the model's depth; gpt2 has 12 blocks, so use 0..11"),
    (_set(["model", "num_labels"], KeyError),
     "s.yaml: model: task 'classification' needs num_labels (e.g. num_labels: 2)"),
    (_set(["model", "name"], "gpt5"),
     "s.yaml: model.name: 'gpt5' is neither a built-in model (gpt2, gpt2-medium, llama-3.2-1b, llama-3.2-3b, "
     "smollm2-135m, minilm-l6, qwen2.5-0.5b, qwen3-0.6b, gemma3-270m, gemma3-1b, phi-4-mini, mistral-7b) nor a path to a Hugging Face config.json"),
    (_set(["devices", 1, "latency_profile"], "x.yaml"),
     "s.yaml: devices[1]: give exactly one of 'flops' (e.g. '1.3 TFLOPS') or 'latency_profile' (a file)"),
    (_set(["training", "micro_batch"], "eight"),
     "s.yaml: training.micro_batch: Input should be a valid integer, unable to parse string as an integer "
     "(got 'eight')"),
])
def test_bad_input_is_one_line(mutate, message):
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        scenario_from_dict(data, source="s.yaml")
    assert str(exc.value) == message
    assert "\n" not in str(exc.value)


def test_duplicate_names_and_missing_profile(tmp_path):
    data = copy.deepcopy(BASE)
    data["devices"][1]["name"] = "pi-0"
    with pytest.raises(ConfigError, match="duplicate device name 'pi-0'"):
        scenario_from_dict(data)
    data = copy.deepcopy(BASE)
    del data["devices"][1]["flops"]
    data["devices"][1]["latency_profile"] = "missing.yaml"
    with pytest.raises(ConfigError, match=r"devices\[1\].latency_profile: no such file 'missing.yaml'"):
        scenario_from_dict(data, source=str(tmp_path / "s.yaml"))


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_scenario(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    assert len(load_scenario(good).devices) == 3


def test_hf_config_json(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64, '
                   '"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, '
                   '"vocab_size": 1000}')
    data = copy.deepcopy(BASE)
    data["model"]["name"] = str(cfg)
    sc = scenario_from_dict(data)
    assert (sc.arch.family, sc.arch.n_layers, sc.arch.kv_heads, sc.arch.head_dim) == ("llama", 4, 2, 16)
    cfg.write_text('{"model_type": "t5"}')
    with pytest.raises(ConfigError, match="model type 't5' is not supported"):
        scenario_from_dict(data)


_GPT2_NAMES = ("module names c_attn, c_proj, c_fc, attn.c_proj, mlp.c_proj or aliases q, k, v, o, qkv, attn, "
               "attention, mlp, ffn, all-linear")


@pytest.mark.parametrize("model,targets,message", [
    ("gpt2", ["q", "v"], "s.yaml: training.lora.targets: 'q' has no module of its own in gpt2-family models: GPT-2 "
                         "computes q, k and v in one fused c_attn, so write qkv (or c_attn) to adapt all three"),
    ("minilm-l6", ["q_proj"], "s.yaml: training.lora.targets: 'q_proj' is not a LoRA target of bert-family models; "
                              "use module names query, key, value, dense, attention.output.dense, intermediate.dense, "
                              "output.dense or aliases q, k, v, o, qkv, attn, attention, mlp, ffn, all-linear"),
    ("gpt2", ["c_attn", "mlpp"], f"s.yaml: training.lora.targets: 'mlpp' is not a LoRA target of gpt2-family models; "
                                 f"use {_GPT2_NAMES}"),
    ("gpt2", [], f"s.yaml: training.lora.targets: no LoRA target given; use {_GPT2_NAMES} (or leave targets out "
                 "for c_attn)"),
])
def test_lora_targets_checked_against_the_architecture(model, targets, message):
    data = copy.deepcopy(BASE)
    data["model"]["name"] = model
    data["training"]["lora"] = {"targets": targets}
    with pytest.raises(ConfigError) as exc:
        scenario_from_dict(data, source="s.yaml")
    assert str(exc.value) == message


@pytest.mark.parametrize("model,targets,modules", [
    ("minilm-l6", ["q", "v"], ("query", "value")),
    ("minilm-l6", ["attention"], ("query", "key", "value", "attention.output.dense")),
    ("minilm-l6", ["ffn", "self.key"], ("key", "intermediate.dense", "output.dense")),
    ("minilm-l6", ["dense"], ("attention.output.dense", "intermediate.dense", "output.dense")),
    ("gpt2", ["qkv", "o"], ("c_attn", "attn.c_proj")),
    ("gpt2", ["c_proj"], ("attn.c_proj", "mlp.c_proj")),
    ("gpt2", ["mlp.c_proj", "attn.c_attn"], ("c_attn", "mlp.c_proj")),
    ("smollm2-135m", ["all-linear"], ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    ("llama-3.2-1b", ["qkv", "mlp"], ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")),
])
def test_lora_target_aliases_resolve_to_the_family_modules(model, targets, modules):
    from sfsim.cost.model import CostModel

    data = copy.deepcopy(BASE)
    data["model"]["name"] = model
    data["training"]["lora"] = {"targets": targets}
    assert CostModel(scenario_from_dict(data)).lora_targets == modules


def test_lora_targets_set_from_the_command_line():
    from sfsim.cost.model import CostModel
    from sfsim.scenario.overrides import load_scenario_with, parse_sets

    sc = load_scenario_with(ROOT / "profiles/edge.yaml", parse_sets(["training.lora.targets=[qkv, mlp]"]))
    assert CostModel(sc).lora_targets == ("c_attn", "c_fc", "mlp.c_proj")
    with pytest.raises(ConfigError, match=r"training.lora.targets: 'q' has no module of its own in gpt2-family "
                                          r"models: .* \(with --set applied\)$"):
        load_scenario_with(ROOT / "profiles/edge.yaml", parse_sets(["training.lora.targets=[q, v]"]))


def test_lora_targets_of_the_family_load_and_cost_flops():
    data = copy.deepcopy(BASE)
    data["training"]["lora"] = {"targets": ["c_attn", "c_fc"]}
    from sfsim.cost.model import CostModel

    assert CostModel(scenario_from_dict(data)).trainable_params(range(1), head=False) == 8 * (768 + 3 * 768) + \
        8 * (768 + 3072)


@pytest.mark.parametrize("mutate,message", [
    (_set(("devices", 0, "count"), 9223372036854775808),
     "s.yaml: devices[0].count: Input should be less than or equal to 100000 (got 9223372036854775808)"),
    (_set(("devices", 0, "count"), 100_000),
     "s.yaml: devices: 100,001 devices in all; sfsim handles at most 100,000, so lower the counts"),
    (_set(("devices", 0, "samples"), 10**12),
     "s.yaml: devices: 250,000,000,003 micro-batches over 1 epoch(s); sfsim simulates at most 10,000,000, so "
     "lower samples or epochs or raise training.micro_batch"),
    (_set(("servers", 0, "count"), 10**6),
     "s.yaml: servers[0].count: Input should be less than or equal to 1024 (got 1000000)"),
    (_set(("model", "seq_len"), 2**40),
     "s.yaml: model.seq_len: Input should be less than or equal to 1048576 (got 1099511627776)"),
])
def test_sizes_are_bounded(mutate, message):
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        scenario_from_dict(data, source="s.yaml")
    assert str(exc.value) == message


# ------------------------------------------------------------------ names, bounded YAML, plausibility
@pytest.mark.parametrize("where", ["devices", "servers"])
@pytest.mark.parametrize("name", ["../../escaped", "/etc/passwd", ".hidden", "a b", "", "x" * 65, "tab\there"])
def test_names_that_could_be_paths_are_refused_in_one_line(where, name):
    data = copy.deepcopy(BASE)
    data[where][0]["name"] = name
    if where == "servers":
        data["devices"][0]["server"] = None
    with pytest.raises(ConfigError, match=rf"^{where}\[0\]\.name: ") as err:
        scenario_from_dict(data)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_safe_names_load():
    data = copy.deepcopy(BASE)
    data["devices"][0]["name"], data["servers"][0]["name"] = "jetson_nano.v2-a", "Edge-GPU.1"
    data["devices"][0]["server"] = "Edge-GPU.1"
    sc = scenario_from_dict(data)
    assert [d.name for d in sc.devices] == ["jetson_nano.v2-a-0", "jetson_nano.v2-a-1", "laptop"]


BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9 if p else ['lol'] * 9)}]\n"
               for p, c in zip(["", *"abcdefgh"], "abcdefghi", strict=True))


def test_alias_bomb_fails_fast_with_a_short_line(tmp_path):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(yaml.safe_dump(BASE) + BOMB + "description: *i\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases .* expand to over 2,000,000 values through 73 references"):
        load_scenario(path)
    assert time.perf_counter() - t0 < 2


def test_a_few_aliases_still_load(tmp_path):
    text = yaml.safe_dump(BASE).replace("uplink:\n    bandwidth: 50 Mbps\n    latency: 20 ms",
                                        "uplink: &link\n    bandwidth: 50 Mbps\n    latency: 20 ms")
    text = text.replace("uplink:\n    bandwidth: 1 Gbps", "uplink: *link\n  uplinkx:\n    bandwidth: 1 Gbps")
    text = text.replace("  uplinkx:\n    bandwidth: 1 Gbps\n", "")
    path = tmp_path / "alias.yaml"
    path.write_text(text)
    sc = load_scenario(path)
    assert [d.uplink.bandwidth for d in sc.devices] == [50e6, 50e6, 50e6]


def test_long_bad_values_are_cut_in_the_message():
    data = copy.deepcopy(BASE)
    data["training"]["micro_batch"] = "x" * 10_000
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(data)
    assert len(str(err.value)) < 400 and "..." in str(err.value)


@pytest.mark.parametrize("key,value,expect", [
    (("devices", 0, "uplink", "bandwidth"), 20, "devices[0].uplink.bandwidth: 20 reads as 20 bit/s (a number "
     "without a unit is in bit/s), under 1 kbit/s; if you meant 20 Mbps, write '20 Mbps'"),
    (("devices", 1, "downlink", "bandwidth"), "500 bps", "devices[1].downlink.bandwidth: '500 bps' is 500 bps, "
     "under 1 kbit/s: check the unit"),
    (("devices", 0, "uplink", "latency"), 5, "devices[0].uplink.latency: 5 reads as 5 seconds (a number without a "
     "unit is in seconds), a latency of seconds; if you meant 5 ms, write '5 ms'"),
    (("devices", 0, "uplink", "latency"), "12 s", "devices[0].uplink.latency: '12 s' is 12 s, over 10 s: check "
     "the unit"),
    (("servers", 0, "flops"), "100 PFLOPS", "servers[0].flops: '100 PFLOPS' is 100 PFLOPS, outside 1 MFLOPS .. "
     "10 PFLOPS: check the unit"),
    (("devices", 1, "flops"), 900, "devices[1].flops: 900 reads as 900 FLOP/s (a number without a unit is in "
     "FLOP/s), outside 1 MFLOPS .. 10 PFLOPS; if you meant 900 GFLOPS, write '900 GFLOPS'"),
])
def test_implausible_values_warn_with_the_unit_they_were_read_in(key, value, expect):
    data = copy.deepcopy(BASE)
    node = data
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    assert scenario_from_dict(data, source="s.yaml").warnings == [f"s.yaml: {expect}"]


def test_bundled_profiles_are_plausible():
    for path in sorted((ROOT / "profiles").glob("*.yaml")):
        if "latency" not in path.name:
            assert load_scenario(path).warnings == [], path
