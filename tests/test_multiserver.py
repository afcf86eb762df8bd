"""Several servers for real: one process per server, devices on their assigned server, backhaul sync.

Runs launch 2 server + 4 device processes on loopback with a tiny random GPT-2
(``tests/fixtures/runtime_two_servers.yaml``: devices pinned a, b, a, b). The split a run trains is
resolved by the simulator's own resolvers (``trainer.run.resolve``), checked here against ``simulate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sfsim.errors import SfsimError
from sfsim.methods import METHODS
from sfsim.scenario.config import load_scenario
from sfsim.simulate import simulate
from trainer.run.resolve import resolve_split

FIXTURES = Path(__file__).parent / "fixtures"
TWO = FIXTURES / "runtime_two_servers.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(model: str, out, devices=TWO, **over):
    from trainer.run.runner import RunConfig

    kw = dict(devices=str(devices), model=model, task="sst2", method="splitfrozen", partition="iid", epochs=1,
              train_samples=32, eval_samples=8, max_len=48, lr=0.01, data_dir=str(FIXTURES / "data"), out=str(out),
              progress=False, launch="local", peer_timeout=20.0, server_order="round-robin", count_flops=False)
    kw.update(over)
    return RunConfig(**kw)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(out / "adapter" / "adapter_model.safetensors")
    head = out / "adapter" / "head.safetensors"
    if head.is_file():
        tensors.update({f"head.{k}": v for k, v in load_file(head).items()})
    return tensors


def _with(tmp_path: Path, src: Path, edit) -> Path:
    """A copy of a fixture scenario (one without relative file references) changed by ``edit(data)``."""
    data = yaml.safe_load(src.read_text())
    edit(data)
    path = tmp_path / src.name
    path.write_text(yaml.safe_dump(data))
    return path


# -- one source of truth: the split ----------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_the_trainer_resolves_the_split_the_simulator_simulates(method):
    sc = load_scenario(str(TWO))
    got = resolve_split(sc, method, sc.arch.n_layers)
    res = simulate(sc, method)
    assert got.assignment == res.assignment
    if method in ("splitfrozen", "splitfrozen-sequential", "splitlora"):
        assert got.cuts == res.splits
    if method.startswith("splitfrozen"):
        assert got.lora_start == res.lora_start
    want = {"splitlora": "scenario"}.get(method, "default")  # splitlora_cut is a scenario default
    assert got.sources == {"cuts": want, "lora_start": "default" if method.startswith("splitfrozen") else "method",
                           "assignment": "scenario"}


def test_no_split_given_cuts_where_simulate_cuts_and_says_so():
    sc = load_scenario(str(FIXTURES / "runtime_tiny.yaml"))
    got = resolve_split(sc, "splitfrozen", 4)  # no --split, no training.split: simulate's default cut 1
    assert set(got.cuts.values()) == {1} == set(simulate(sc, "splitfrozen").splits.values())
    assert (got.lora_start, got.sources["cuts"]) == (1, "default")
    given = resolve_split(sc, "splitfrozen", 4, split=2, lora_start=3)
    assert set(given.cuts.values()) == {2} and given.lora_start == 3
    assert given.sources == {"cuts": "flag", "lora_start": "flag", "assignment": "scenario"}
    with pytest.raises(SfsimError, match=r"cut 5 for device big \(flag\) is beyond the model's depth: it has 4 "
                                         r"blocks, use a cut in 0\.\.3"):
        resolve_split(sc, "splitfrozen", 4, split=5)


def test_a_plan_gives_both_halves_its_cuts_and_servers(tmp_path):
    sc = load_scenario(str(TWO))
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"splits": {"a-0": 2, "b-0": 1, "a-1": 1, "b-1": 2}, "lora_start": 2,
                                    "assignment": {"a-0": "mec-b", "b-0": "mec-b", "a-1": "mec-a", "b-1": "mec-a"}}))
    got = resolve_split(sc, "splitfrozen", 4, plan=str(plan))
    res = simulate(sc, "splitfrozen", plan=str(plan))
    assert (got.cuts, got.lora_start, got.assignment) == (res.splits, res.lora_start, res.assignment)
    assert got.sources == {"cuts": "plan", "lora_start": "plan", "assignment": "plan"}


def test_runner_never_imports_launch():
    import ast

    import trainer.run.runner as runner

    tree = ast.parse(Path(runner.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "trainer.run.runner" not in imported and not any(m.startswith("trainer.run.launch") for m in imported)
    assert "trainer.run.resolve" in imported  # the split comes from the simulator's resolvers


def test_the_in_process_run_refuses_several_servers(tiny_gpt2, tmp_path):
    from trainer.run.runner import run

    with pytest.raises(SfsimError, match=r"devices are assigned to 2 servers \(mec-a, mec-b, scenario\); the "
                                         r"in-process run has one server: use --launch local"):
        run(_cfg(tiny_gpt2, tmp_path / "o", launch="inprocess"))


# -- runs on two servers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_both_servers_and_ends_as_one_model(tiny_gpt2, tmp_path, method):
    from trainer.run.launch import run

    out = tmp_path / "run"
    m = run(_cfg(tiny_gpt2, out, method=method, train_samples=16))  # one micro-batch per device
    assert m["assignment"] == {"a-0": "mec-a", "b-0": "mec-b", "a-1": "mec-a", "b-1": "mec-b"}
    assert {k: v["devices"] for k, v in m["servers"].items()} == {"mec-a": ["a-0", "a-1"], "mec-b": ["b-0", "b-1"]}
    # a round per step (FedLoRA: per FedAvg round); all servers end in the same round, so no closing round,
    # but SplitLoRA's (its client averages differ between servers), after one drain round
    rounds = {"splitlora": 4, "fedlora": 1}.get(method, 2)
    for srv in m["servers"].values():
        assert srv["train_loss_history"] and srv["joint"] and srv["sync_rounds"] == rounds
    assert m["missing_reports"] == [] and m["lost_devices"] == {}
    assert set(m["uplink_bytes_by_device"]) == {"a-0", "b-0", "a-1", "b-1"}
    assert all(v > 0 for v in m["uplink_bytes_by_device"].values())
    # after the last sync round both servers hold bit-identical adapters; server 0 saved them
    a, b = _adapter(out), _adapter(out / "servers" / "mec-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lanes = {e["args"]["lane"] for e in json.loads((out / "trace.json").read_text())["traceEvents"]
             if e.get("ph") == "X"}
    if method != "fedlora":  # FedLoRA's servers only average
        assert {"mec-a", "mec-b"} <= lanes, lanes


@pytest.mark.parametrize("method", ["splitfrozen", "fedlora"])
def test_sync_every_step_equals_a_one_server_run(tiny_gpt2, tmp_path, method):
    """2 servers (round-robin, accumulate 1, gradients averaged every step) = 1 server taking both servers'
    k-th micro-batches in its k-th step (round-robin over a, b, a, b, accumulate 2); FedLoRA's per-server
    averages averaged across servers = one FedAvg over every device."""
    from trainer.run.launch import run

    def one_server(data: dict) -> None:
        data["servers"] = data["servers"][:1]
        for d in data["devices"]:
            d["server"] = "mec-a"
        data["training"]["accumulate"] = 2 if method == "splitfrozen" else 1
        del data["training"]["sync"]

    two = run(_cfg(tiny_gpt2, tmp_path / "two", method=method))
    one = run(_cfg(tiny_gpt2, tmp_path / "one", method=method, launch="inprocess",
                   devices=_with(tmp_path, TWO, one_server)))
    if method == "splitfrozen":  # a step's loss: the mean over the servers (FedLoRA's steps are the devices')
        assert len(two["train_loss_history"]) == len(one["train_loss_history"]) == 4
        assert max(abs(x - y) for x, y in zip(two["train_loss_history"], one["train_loss_history"], strict=True)) < 1e-5
    a, b = _adapter(tmp_path / "two"), _adapter(tmp_path / "one")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert two["eval_history"] == one["eval_history"]


def test_sparse_async_sync_still_ends_with_identical_servers(tiny_gpt2, tmp_path):
    from trainer.run.launch import run

    devices = _with(tmp_path, TWO, lambda d: d["training"].update(sync={"every": 2, "mode": "async"}))
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=devices, emulate="links"))
    # 4 steps per server: rounds after steps 2 and 4; both end in the second, so no closing round
    assert [(s["steps"], s["sync_rounds"], s["joint"]) for s in m["servers"].values()] == [(4, 2, False)] * 2
    a, b = _adapter(tmp_path / "run"), _adapter(tmp_path / "run" / "servers" / "mec-b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # shaped: each round's upload and download occupy the backhaul lane of each server
    ops = [(e["args"]["lane"], e["name"]) for e in json.loads((tmp_path / "run" / "trace.json").read_text())
           ["traceEvents"] if e.get("ph") == "X" and e["args"]["lane"].startswith("backhaul:")]
    assert sorted(set(ops)) == [("backhaul:mec-a", "sync-recv"), ("backhaul:mec-a", "sync-send"),
                                ("backhaul:mec-b", "sync-recv"), ("backhaul:mec-b", "sync-send")]
    assert m["backhaul_bytes_by_server"]["mec-a"] == m["backhaul_bytes_by_server"]["mec-b"] > 0


@pytest.mark.parametrize("method", ["splitfrozen", "splitlora", "fedlora", "cenlora"])
def test_a_device_that_drops_leaves_what_the_simulator_says_untrained(tiny_gpt2, tmp_path, method):
    from trainer.run.launch import run

    devices = FIXTURES / "runtime_two_servers_drop.yaml"
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=devices, method=method, emulate="links",
                 server_order="fifo" if method.startswith("split") else "proportional"))
    want = simulate(load_scenario(str(devices)), method).samples_not_trained
    assert m["samples_not_trained"] == want == {"b-1": 0 if method == "cenlora" else 8}
    assert m["lost_devices"] == {} and m["missing_reports"] == []
    assert m["servers"]["mec-b"]["train_loss_history"]  # b-0 still trained on mec-b


def _linked(encrypt: bool = True):
    """Server 0's and server 1's :class:`ServerLinks` over one loopback connection (AES-GCM both ways)."""
    import os
    import socket

    from trainer.transport.backhaul import ServerLinks
    from trainer.transport.secure import Channel

    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    k1, k2 = os.urandom(32), os.urandom(32)
    ch0, ch1 = Channel(a, (k1, k2) if encrypt else None), Channel(b, (k2, k1) if encrypt else None)
    return ServerLinks(0, 2, {1: ch0}, 5.0), ServerLinks(1, 2, {0: ch1}, 5.0), ch1


def test_backhaul_rounds_sum_over_the_servers_channels_and_refuse_bad_vectors():
    """A round over the servers' admitted channels: both get the same sum, bit for bit, but for the last value, the
    round's instant (``invitation_at``: with no vector that opens the round, the latest of the vectors' instants); a
    vector of the wrong size, with NaN, or a server that went away ends the round with one line naming the server."""
    import threading

    from sfsim.errors import SfsimError

    s0, s1, ch1 = _linked()
    x0, x1 = torch.tensor([1.0, 2.0, 0.1, 0.7]), torch.tensor([3.0, -2.0, 0.2, 0.5])
    th = threading.Thread(target=s1.all_reduce, args=(x1,))
    th.start()
    s0.all_reduce(x0)
    th.join()
    want = torch.tensor([1.0, 2.0, 0.1, 0.0]) + torch.tensor([3.0, -2.0, 0.2, 0.0])
    want[-1] = 0.7
    assert torch.equal(x0, want) and torch.equal(x1, want)
    got = {}
    th = threading.Thread(target=lambda: got.update(parts=s0.gather_json({"server": "a"})))
    th.start()
    assert s1.gather_json({"server": "b", "n": [1, 2]}) is None
    th.join()
    assert got["parts"] == [{"server": "a"}, {"server": "b", "n": [1, 2]}]
    ch1.send(torch.tensor([1.0, float("nan"), 0.0]).numpy().tobytes())
    with pytest.raises(SfsimError, match="backhaul: server 1 sent non-finite values"):
        s0.all_reduce(torch.zeros(3))
    ch1.send(torch.zeros(4).numpy().tobytes())
    with pytest.raises(SfsimError, match=r"backhaul: the link with server 1 failed \(frame of 40 bytes where 36"):
        s0.all_reduce(torch.zeros(3))
    ch1.close()
    with pytest.raises(SfsimError, match="backhaul: the link with server 1 failed"):
        s0.all_reduce(torch.zeros(3))


@pytest.mark.parametrize("method", ["splitfrozen", "cenlora"])
def test_a_server_without_devices_steps_with_the_others_and_ends_identical(tiny_gpt2, tmp_path, method):
    from trainer.run.launch import run

    def all_on_a(data: dict) -> None:
        for d in data["devices"]:
            d["server"] = "mec-a"

    m = run(_cfg(tiny_gpt2, tmp_path / "run", method=method, train_samples=16, devices=_with(tmp_path, TWO, all_on_a)))
    assert m["servers"]["mec-b"]["devices"] == [] and m["servers"]["mec-b"]["train_loss_history"] == []
    a, b = _adapter(tmp_path / "run"), _adapter(tmp_path / "run" / "servers" / "mec-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_handover_brings_at_most_the_credit_window_once_per_epoch():
    """Credits on receipt with handovers: a JOIN gives the new server at most the window (the credits in hand and
    those returned for micro-batches in flight), once per epoch, within the device's budget and the run's epochs."""
    from trainer.run.measure import Meter
    from trainer.transport import wire
    from trainer.transport.distributed import DistTransport
    from trainer.transport.wire import Kind, Limits, Packet, WireError

    lim = Limits(hidden=32, max_batch=4, max_len=8, budget=(8,), epochs=2)
    tr = DistTransport(0, [], {}, Meter(count_flops=False), lim, window=2)

    def join(epoch: int, aux: int) -> None:
        p = Packet(Kind.JOIN, 0, 3, epoch, aux)
        wire.check_specs(p, [], lim)
        tr._permit("d", p)

    def act() -> None:
        tr._permit("d", Packet(Kind.ACT, 0, 0, 0, 0))

    join(0, 5)
    act()
    act()
    with pytest.raises(WireError, match="without a credit"):
        act()
    join(0, 5)  # the same epoch again: nothing more
    with pytest.raises(WireError, match="without a credit"):
        act()
    join(1, 1)  # one micro-batch left: one permit
    act()
    with pytest.raises(WireError, match="without a credit"):
        act()
    with pytest.raises(WireError, match="a join for epoch 2; the run has epochs 0..1"):
        join(2, 1)
    with pytest.raises(WireError, match="this device holds 0..8"):
        join(1, 9)
