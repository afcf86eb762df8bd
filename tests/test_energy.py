"""Energy: power figures in the scenario, joules = power x busy time worked out by hand."""

from __future__ import annotations

import copy

import pytest

import sfsim
from sfsim.cost.energy import run_energy
from sfsim.cost.model import CostModel
from sfsim.errors import ConfigError

BASE = {
    "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 4, "epochs": 1, "accumulate": 1000, "buffer": 4, "decompose_backward": False,
                 "lora_start": 6},
    "servers": [{"name": "gpu", "flops": "5 TFLOPS", "memory": "24 GiB", "count": 2,
                 "power": {"compute": "300 W", "idle": "60 W"}}],
    "devices": [{"name": "phone", "flops": "300 GFLOPS", "memory": "4 GiB", "samples": 12,
                 "uplink": {"bandwidth": "20 Mbps", "latency": "10 ms"},
                 "downlink": {"bandwidth": "200 Mbps", "latency": "10 ms"},
                 "power": {"compute": "6 W", "idle": "1.5 W", "transmit": "2500 mW"}}],
}


def scenario(**device_power):
    data = copy.deepcopy(BASE)
    if device_power:
        data["devices"][0]["power"] = device_power
    return sfsim.scenario_from_dict(data)


def by_hand(sc):
    """Busy seconds worked out from the cost model: device compute, uplink serialisation, server compute."""
    cm, dev, srv = CostModel(sc), sc.devices[0], sc.servers[0]
    n = 3
    f = cm.seconds(cm.device_prefix(4), dev)[0]
    up = n * cm.uplink_bytes(4) * 8 / dev.uplink.bandwidth
    # both accelerators take micro-batches, and each ends with its own optimizer step
    srv_busy = n * sum(cm.seconds(cm.server_suffix(4, 6), srv)) + 2 * cm.optimizer_seconds(
        cm.trainable_params(range(6, 12), head=True), srv)
    return n * f, up, srv_busy


def test_joules_are_power_times_busy_time():
    sc = scenario()
    res = sfsim.simulate(sc, "splitfrozen", splits=4)
    busy, up, srv_busy = by_hand(sc)
    T = res.makespan_s
    e = run_energy(res, sc)
    assert e["devices"]["phone"] == pytest.approx(
        {"compute": 6 * busy, "radio": 2.5 * up, "idle": 1.5 * (T - busy), "total": 6 * busy + 2.5 * up + 1.5 * (T - busy)},
        rel=1e-12)
    # two accelerators: idle is 2 x T minus the busy seconds over both
    assert e["servers"]["gpu"] == pytest.approx(
        {"compute": 300 * srv_busy, "radio": 0.0, "idle": 60 * (2 * T - srv_busy), "total": 300 * srv_busy + 60 * (2 * T - srv_busy)},
        rel=1e-12)
    assert e["device_total_j"] == e["devices"]["phone"]["total"]


def test_energy_per_bit_and_receive():
    sc = scenario(compute="6 W", energy_per_bit="50 nJ/bit")
    res = sfsim.simulate(sc, "splitlora", splits=4)  # splitlora also receives gradients on the downlink
    bits = 8 * (res.uplink_bytes + res.downlink_bytes)
    assert res.downlink_bytes > 0
    e = run_energy(res, sc)["devices"]["phone"]
    assert e["radio"] == pytest.approx(50e-9 * bits, rel=1e-12) and e["idle"] == 0.0
    sc = scenario(compute="6 W", transmit="2 W", receive="1 W")
    res = sfsim.simulate(sc, "splitlora", splits=4)
    dev = sc.devices[0]
    assert run_energy(res, sc)["devices"]["phone"]["radio"] == pytest.approx(
        2 * res.uplink_bytes * 8 / dev.uplink.bandwidth + 1 * res.downlink_bytes * 8 / dev.downlink.bandwidth,
        rel=1e-12)


def test_no_power_no_energy():
    data = copy.deepcopy(BASE)
    del data["devices"][0]["power"], data["servers"][0]["power"]
    sc = sfsim.scenario_from_dict(data)
    assert run_energy(sfsim.simulate(sc, "splitfrozen"), sc) is None


@pytest.mark.parametrize("power,message", [
    ({"compute": "6 V"}, "devices[0].power.compute: '6 V' is not a power; write e.g. '2.5 W' or a number in watts"),
    ({"idle": "1 W"}, "devices[0].power.compute: required key is missing"),
    ({"compute": "6 W", "transmit": "1 W", "energy_per_bit": "5 nJ/bit"},
     "devices[0].power: give the radio's power as transmit/receive watts or as energy_per_bit, not both"),
    ({"compute": "6 W", "radio": "1 W"}, "devices[0].power.radio: unknown key; allowed here: compute, idle, transmit"),
])
def test_bad_power_one_line(power, message):
    data = copy.deepcopy(BASE)
    data["devices"][0]["power"] = power
    with pytest.raises(ConfigError) as err:
        sfsim.scenario_from_dict(data, source="s.yaml")
    assert str(err.value).startswith(f"s.yaml: {message}")


def test_sweep_rows_carry_energy(tmp_path):
    import yaml

    from sfsim.sweeps.sweep import Settings, parse_vary, read_rows, run_sweep

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(BASE))
    run_sweep(path, [parse_vary("devices[phone].power.transmit=1,3 W")], tmp_path / "e.csv", Settings(split=4),
              jobs=1, progress=False)
    low, high = sorted(read_rows(tmp_path / "e.csv"), key=lambda r: int(r["point"]))
    sc = scenario()
    _, up, _ = by_hand(sc)
    assert float(high["device_energy_j"]) - float(low["device_energy_j"]) == pytest.approx(2 * up, rel=1e-9)
    assert float(low["server_energy_j"]) == float(high["server_energy_j"]) > 0


def test_simulate_json_and_summary_carry_energy(tmp_path):
    import json

    import yaml
    from click.testing import CliRunner

    from sfsim.cli import main

    sc = scenario()
    res = sfsim.simulate(sc, "splitfrozen", splits=4)
    assert res.energy == run_energy(res, sc) and res.to_dict()["energy"] == res.energy
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(BASE))
    r = CliRunner().invoke(main, ["simulate", "--devices", str(path), "--split", "4", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    e = res.energy
    assert json.loads((tmp_path / "r.json").read_text())["energy"] == e
    from sfsim.outputs.report import si

    d = e["devices"]["phone"]
    assert (f"  energy: 1 devices {si(d['total'], 'J')} (compute {si(d['compute'], 'J')}, radio {si(d['radio'], 'J')}, "
            f"idle {si(d['idle'], 'J')}); 1 servers {si(e['server_total_j'], 'J')}") in r.output.splitlines()
