"""Baselines under the same settings as SplitFrozen: --accumulate, one dropout rule, SplitLoRA's client orders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.errors import SfsimError

FIXTURES = Path(__file__).parent / "fixtures"
ALL = [("splitfrozen", None), ("splitlora", "interleaved"), ("splitlora", "sequential"), ("fedlora", None),
       ("cenlora", None)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(model: str, out, **over):
    from trainer.run.runner import RunConfig

    # 32 samples on 3 devices (16, 8, 8): 4 + 2 + 2 micro-batches of 4
    kw = dict(devices=str(FIXTURES / "runtime_tiny.yaml"), model=model, task="sst2", method="splitfrozen",
              partition="iid", split=1, epochs=1, train_samples=32, eval_samples=20, max_len=48, lr=0.01,
              data_dir=str(FIXTURES / "data"), out=str(out), progress=False, launch="inprocess", accumulate=2,
              local_steps=2)
    kw.update(over)
    return RunConfig(**kw)


def _steps_by_lane(out: Path) -> dict[str, int]:
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    lanes: dict[str, int] = {}
    for e in events:
        if e.get("ph") == "X" and e["name"] == "step":
            lanes[e["args"]["lane"]] = lanes.get(e["args"]["lane"], 0) + 1
    return lanes


@pytest.mark.parametrize("method, order", ALL)
def test_optimizer_steps_follow_accumulate(tiny_gpt2, tmp_path, method, order):
    from trainer.run.runner import run

    over = {"fedavg_every": 4} if order == "interleaved" else {}  # one FedAvg, at the end: no partial windows
    m = run(_cfg(tiny_gpt2, tmp_path, method=method, client_order=order, **over))
    assert m["accumulate"] == 2 and m["client_order"] == order
    assert len(m["train_loss_history"]) == 32 // (4 * 2)  # samples / (micro_batch x accumulate)
    steps = _steps_by_lane(tmp_path)
    if method in ("splitlora", "fedlora"):  # every client/device steps every 2 of its own micro-batches
        assert {k: steps.get(k, 0) for k in ("big", "small-0", "small-1")} == {"big": 2, "small-0": 1, "small-1": 1}
    if method != "fedlora":
        assert steps["srv"] == 4


def test_splitlora_partial_windows_step_at_fedavg(tiny_gpt2, tmp_path):
    from trainer.run.runner import run

    # FedAvg every 3 server steps = 6 micro-batches in the proportional order big s0 s1 big | big s0 s1 big:
    # at the round big has stepped once and has 1 more, s0 and s1 hold 2 and 1: big 1 + 1, s0 1 (+0), s1 1 + 1
    m = run(_cfg(tiny_gpt2, tmp_path, method="splitlora", fedavg_every=3))
    assert len(m["train_loss_history"]) == 4
    assert _steps_by_lane(tmp_path) == {"srv": 4, "big": 3, "small-0": 1, "small-1": 2}


def test_splitlora_client_orders(tiny_gpt2, tmp_path):
    from trainer.run.runner import build, run

    seq = run(_cfg(tiny_gpt2, tmp_path / "seq", method="splitlora", client_order="sequential", accumulate=1))
    inter = run(_cfg(tiny_gpt2, tmp_path / "int", method="splitlora", client_order="interleaved", accumulate=1,
                     fedavg_every=100))
    # proportional interleaving: big s0 s1 big big s0 s1 big; sequential: big x4, s0 x2, s1 x2
    assert seq["stream_mixing"]["longest_device_run"] == 4 and inter["stream_mixing"]["longest_device_run"] == 2
    # sequential: every client's adapters go up once; the relay's come down to every client but the first
    # (epoch 0); interleaved: one FedAvg at the end, up and down for every client
    assert seq["uplink_bytes"] == inter["uplink_bytes"]
    assert seq["downlink_bytes"] < inter["downlink_bytes"]
    method = build(_cfg(tiny_gpt2, tmp_path / "b", method="splitlora", client_order="sequential",
                         accumulate=1)).method
    method.train_epoch(0, lambda loss, n: None)
    assert [d for d, _ in method.server_stream] == ["big"] * 4 + ["small-0"] * 2 + ["small-1"] * 2


@pytest.mark.parametrize("over, message", [
    ({"method": "fedlora", "client_order": "sequential"}, "--client-order orders SplitLoRA's clients; fedlora"),
    ({"method": "splitfrozen", "client_order": "interleaved"}, "splitfrozen has no such order"),
    ({"method": "splitlora", "client_order": "zigzag"}, "unknown --client-order 'zigzag'"),
    ({"method": "splitlora", "client_order": "sequential", "server_order": "fifo"},
     "--server-order fifo interleaves clients"),
    ({"method": "splitlora", "client_order": "sequential", "fedavg_every": 5}, "--fedavg-every sets the FedAvg"),
])
def test_client_order_is_refused_where_it_does_not_apply(tmp_path, over, message):
    with pytest.raises(SfsimError, match=message):
        _cfg("unused", tmp_path, **over)
    assert _cfg("unused", tmp_path, method="splitlora").client_order is None  # the scenario's, at build
    assert _cfg("unused", tmp_path, method="fedlora").client_order is None


def test_splitlora_takes_the_scenarios_client_order_unless_given(tiny_gpt2, tmp_path):
    import yaml

    from trainer.run.runner import build

    data = yaml.safe_load((FIXTURES / "runtime_tiny.yaml").read_text())
    data.setdefault("training", {})["client_order"] = "sequential"
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump(data))
    default = build(_cfg(tiny_gpt2, tmp_path / "a", method="splitlora", accumulate=1)).setup
    assert default.client_order == "interleaved"  # the scenario's default
    built = build(_cfg(tiny_gpt2, tmp_path / "b", method="splitlora", accumulate=1, devices=str(seq))).setup
    assert built.client_order == "sequential"
    given = build(_cfg(tiny_gpt2, tmp_path / "c", method="splitlora", accumulate=1, devices=str(seq),
                       client_order="interleaved")).setup
    assert given.client_order == "interleaved"  # --client-order wins
    with pytest.raises(SfsimError, match=r"seq\.yaml: training\.client_order sequential \(no --client-order given\): "
                                         r"--server-order fifo interleaves clients"):
        build(_cfg(tiny_gpt2, tmp_path / "d", method="splitlora", devices=str(seq), server_order="fifo"))


def test_client_order_on_the_command_line(tmp_path):
    from sfsim.cli import main

    res = CliRunner().invoke(main, ["run", "--devices", str(FIXTURES / "runtime_tiny.yaml"), "--model", "x",
                                    "--task", "sst2", "--method", "cenlora", "--partition", "iid",
                                    "--client-order", "sequential", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == (
        "error: --client-order orders SplitLoRA's clients; cenlora has no such order: leave it out")


@pytest.mark.parametrize("method", ["splitfrozen", "splitlora", "fedlora", "cenlora"])
def test_dropout_is_the_same_in_every_method(tiny_gpt2, tmp_path, method):
    """Only LoRA dropout trains in training mode; every other module (attention, residual and embedding
    dropout of the pretrained network) runs as in eval, in every method and on both sides of the cut."""
    import torch

    from trainer.run.runner import build

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text((FIXTURES / "runtime_tiny.yaml").read_text().replace("{rank: 4, alpha: 8}",
                                                                           "{rank: 4, alpha: 8, dropout: 0.1}"))
    b = build(_cfg(tiny_gpt2, tmp_path / "o", devices=str(fleet), method=method))
    lm, m = b.lm, b.method
    seen: dict[str, set[bool]] = {}

    def hook(name):
        def record(module, args):
            seen.setdefault(name, set()).add(module.training)
        return record

    for name, module in lm.model.named_modules():
        module.register_forward_pre_hook(hook(name))
    lm.model.train()  # whatever mode the model was left in, the methods set their own
    m.train_epoch(0, lambda loss, n: None)
    lora = {n for n in seen if n.rpartition(".")[0].endswith("lora_dropout")}
    assert lora and all(seen[n] == {True} for n in lora)
    dropouts = [n for n, mod in lm.model.named_modules() if isinstance(mod, torch.nn.Dropout) and n not in lora]
    assert dropouts and all(seen.get(n, {False}) == {False} for n in dropouts)
    assert all(flags == {False} for n, flags in seen.items() if n not in lora)


def test_simulate_says_which_schedules_leave_backhaul_sync_out():
    """Two servers: every schedule's rounds are simulated (tests/test_baseline_sync.py), FedLoRA's training.sync with
    handovers too (tests/test_fedlora_sync.py), SplitLoRA's over several epochs too (tests/test_idle_rounds.py), and
    over several epochs with training.sync every schedule closes them at each epoch's end (SplitFrozen's:
    tests/test_splitfrozen_epochs.py). Without training.sync every schedule's closing rounds are simulated at each
    epoch's end too (SplitFrozen's: tests/test_splitfrozen_closing.py), with handovers as well."""
    from sfsim.cli import main as cli

    res = CliRunner().invoke(cli, ["simulate", "--devices", str(FIXTURES / "runtime_two_servers.yaml"),
                                   "--schedule", "all", "--split", "2"])
    assert res.exit_code == 0, res.output
    assert "backhaul rounds out" not in res.output and "closes the backhaul rounds" not in res.output
    for sync, expected in (([], []), (["--set", "training.sync=null"], [])):
        moving = CliRunner().invoke(cli, ["simulate", "--devices", str(FIXTURES / "runtime_handover.yaml"),
                                          "--schedule", "all", "--split", "1", *sync])
        assert moving.exit_code == 0, moving.output
        assert [ln for ln in moving.output.splitlines() if "backhaul rounds out" in ln] == expected
    two = CliRunner().invoke(cli, ["simulate", "--devices", str(FIXTURES / "runtime_two_servers.yaml"),
                                   "--schedule", "all", "--split", "2", "--set", "training.epochs=2"])
    assert two.exit_code == 0, two.output
    assert "closes the backhaul rounds" not in two.output
    closing = CliRunner().invoke(cli, ["simulate", "--devices", str(FIXTURES / "runtime_two_servers.yaml"),
                                       "--schedule", "all", "--split", "2", "--set", "training.epochs=2",
                                       "--set", "training.sync=null"])
    assert closing.exit_code == 0, closing.output
    assert "closes the backhaul rounds" not in closing.output
    plain = CliRunner().invoke(cli, ["simulate", "--devices", str(FIXTURES / "runtime_two_servers.yaml"),
                                     "--schedule", "all", "--split", "2", "--set", "training.sync=null"])
    assert plain.exit_code == 0, plain.output
    assert "backhaul rounds out" not in plain.output and "closes the backhaul rounds" not in plain.output


def test_simulate_takes_a_comma_list_of_schedules(tmp_path):
    """``--schedule splitfrozen,fedlora`` compares just those two (each with the options it has), in the order given,
    with the same figures as ``all``'s rows; a bad name in the list is the one-line error of a bad single name."""
    import json

    from sfsim.cli import main as cli

    scen = str(FIXTURES / "runtime_two_servers.yaml")
    two = CliRunner().invoke(cli, ["simulate", "--devices", scen, "--schedule", "fedlora, splitfrozen", "--split", "2",
                                   "--json", str(tmp_path / "two.json")])
    every = CliRunner().invoke(cli, ["simulate", "--devices", scen, "--schedule", "all", "--split", "2",
                                     "--json", str(tmp_path / "all.json")])
    assert two.exit_code == 0 and every.exit_code == 0, two.output + every.output
    rows = [ln.split()[0] for ln in two.output.splitlines() if ln.split() and ln.split()[0] in
            ("splitfrozen", "fedlora", "splitlora", "cenlora", "splitfrozen-sequential")]
    assert rows == ["fedlora", "splitfrozen"]
    picked, whole = (json.loads((tmp_path / f).read_text()) for f in ("two.json", "all.json"))
    assert list(picked) == ["fedlora", "splitfrozen"] and all(picked[k] == whole[k] for k in picked)
    bad = CliRunner().invoke(cli, ["simulate", "--devices", scen, "--schedule", "splitfrozen,bogus"])
    assert bad.exit_code == 2 and "unknown schedule/method 'bogus'" in bad.output
