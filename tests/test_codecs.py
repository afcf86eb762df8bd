"""Activation codecs: exact bytes (the simulator's count), decode error bounds, malformed payloads refused."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch

from sfsim.cost.model import CostModel
from sfsim.cost.wire import CODECS, admissible, wire_bytes
from sfsim.errors import SfsimError
from sfsim.scenario.config import Training, scenario_from_dict
from trainer.run.measure import Meter
from trainer.transport import codecs, wire
from trainer.transport.codecs import CodecError
from trainer.transport.runtime import InProcessTransport, Message
from trainer.transport.wire import Kind, Limits, Packet, WireError

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(B=3, T=5, d=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d, generator=g) * torch.logspace(-3, 3, T).reshape(1, T, 1)  # tokens of every scale
    x[0, 0] = 0.0  # an all-zero token
    x[1, 1, 0] = 5e4  # an outlier
    return x


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("d", [32, 33])
def test_round_trip_bytes_are_exact_and_error_within_bound(codec, d):
    x = _x(d=d)
    enc = codecs.encode(x, codec)
    assert sum(t.nbytes for t in enc.values()) == wire_bytes(codec, 3 * 5, d)
    y = codecs.decode(enc, codec, d)
    assert y.shape == x.shape and y.dtype == torch.float32
    err = (y - x).abs()
    if codec == "fp32":
        assert torch.equal(y, x)
    elif codec in ("fp16", "bf16"):
        rel = 2.0 ** (-11 if codec == "fp16" else -8)  # half an ulp: round to nearest
        assert bool((err <= rel * x.abs() + 1e-7).all())  # fp16 subnormals below 6e-5: absolute 1e-7 is room
    else:
        qmax = {"int8": 127, "int4": 7}[codec]
        step = x.abs().amax(-1, keepdim=True) / qmax  # (B, T, 1)
        assert bool((err <= step / 2 * (1 + 1e-6) + 1e-30).all())
        assert torch.equal(y[0, 0], torch.zeros(d))  # the zero token stays zero
        assert y[1, 1, 0] == x[1, 1, 0]  # the absmax value itself is exact


def test_int4_packs_two_values_per_byte_low_nibble_first():
    x = torch.tensor([[[7.0, -7.0, 0.0]]])  # absmax 7: scale 1
    enc = codecs.encode(x, "int4")
    assert enc["values"].tolist() == [[[15 | (1 << 4), 8 | (8 << 4)]]]  # 7+8, -7+8 | 0+8, pad 8
    assert enc["scales"].tolist() == [[1.0]]


def test_codec_vocabulary_is_the_scenarios():
    wire_dtype = typing.get_type_hints(Training)["wire_dtype"]
    assert list(typing.get_args(wire_dtype)) == list(CODECS)
    assert [c.code for c in CODECS.values()] == list(range(len(CODECS)))


@pytest.mark.parametrize("codec, field, value, message", [
    ("int8", "scales", float("nan"), "scales must be finite"),
    ("int8", "scales", -1.0, "scales must be finite and >= 0"),
    ("int8", "values", -128, "int8 values must lie in -127..127"),
    ("int4", "values", 0x80, "nibbles must lie in 1..15"),
    ("int4", "scales", float("inf"), "scales must be finite"),
])
def test_malformed_payload_is_refused(codec, field, value, message):
    enc = codecs.encode(_x(), codec)
    enc[field].view(-1)[3] = value
    with pytest.raises(CodecError, match=message):
        codecs.decode(enc, codec, 32)


def test_int4_odd_width_padding_must_be_zero():
    enc = codecs.encode(_x(d=33), "int4")
    enc["values"][..., -1] |= 0xF0  # the padding nibble of every token: 15 instead of 8
    with pytest.raises(CodecError, match="padding nibble"):
        codecs.decode(enc, "int4", 33)


def _act(codec: str, **over) -> tuple[Packet, list]:
    t = codecs.pack({"hidden": _x(B=4, T=8), "attention_mask": torch.ones(4, 8, dtype=torch.uint8),
                     "labels": torch.zeros(4, dtype=torch.int64)}, "hidden", codec)
    t.update(over)
    p = Packet(Kind.ACT, 0, 0, 0, CODECS[codec].code, {k: v for k, v in t.items() if v is not None})
    return wire.decode_header(wire.encode_header(p), wire.UP)


@pytest.mark.parametrize("sent, expect, over, message", [
    ("int8", "int8", {"scales": torch.ones(4, 7)}, "codec int8 sends"),
    ("int8", "int8", {"scales": None}, "codec int8 sends"),
    ("int8", "int8", {"hidden": torch.zeros(4, 8, 32, dtype=torch.uint8)}, "codec int8 sends"),
    ("int4", "int4", {"hidden": torch.zeros(4, 8, 32, dtype=torch.uint8)}, r"\(4, 8, 16\)"),
    ("fp16", "fp32", {}, "codec number 1; this run sends fp32"),
    ("fp32", "int8", {}, "codec number 0; this run sends int8"),
])
def test_header_that_does_not_match_the_runs_codec_is_refused(sent, expect, over, message):
    p, specs = _act(sent, **over)
    with pytest.raises(WireError, match=message):
        wire.check_specs(p, specs, Limits(hidden=32, max_batch=4, max_len=8, codec=expect))


@pytest.mark.parametrize("codec", list(CODECS))
def test_header_of_each_codec_is_accepted(codec):
    p, specs = _act(codec)
    wire.check_specs(p, specs, Limits(hidden=32, max_batch=4, max_len=8, codec=codec))


def _scenario(codec: str, B: int, T: int, d_model: str = "gpt2"):
    return scenario_from_dict({
        "model": {"name": d_model, "seq_len": T, "task": "classification", "num_labels": 2},
        "training": {"micro_batch": B, "wire_dtype": codec},
        "servers": [{"name": "s", "flops": "1 TFLOPS", "memory": "16 GiB"}],
        "devices": [{"name": "d", "flops": "1 GFLOPS", "memory": "1 GiB", "samples": 8,
                     "uplink": {"bandwidth": "10 Mbps"}, "downlink": {"bandwidth": "10 Mbps"}}]})


@pytest.mark.parametrize("codec", list(CODECS))
def test_each_sent_message_has_the_simulators_bytes(codec):
    """The in-process transport counts what crosses the wire; per message it equals CostModel.uplink_bytes."""
    meter = Meter(count_flops=False)
    tr = InProcessTransport(meter, codec=codec, hidden=768)
    for B, T in [(4, 16), (3, 7), (1, 1)]:
        before = meter.uplink_bytes["d"]
        hidden = torch.randn(B, T, 768)
        tr.send_up(Message("d", 0, {"hidden": hidden, "attention_mask": torch.ones(B, T, dtype=torch.uint8),
                                    "labels": torch.zeros(B, dtype=torch.int64)}))
        assert meter.uplink_bytes["d"] - before == CostModel(_scenario(codec, B, T)).uplink_bytes(2)
        got = tr.recv_up("d")
        assert got.tensors["hidden"].dtype == torch.float32 and got.aux == 0
        if codec == "fp32":
            assert torch.equal(got.tensors["hidden"], hidden)
        down = meter.downlink_bytes["d"]  # SplitLoRA's cut-layer gradient comes back in the same codec
        grad = torch.randn(B, T, 768)
        tr.send_down(Message("d", 0, {"grad": grad}, kind="grad", aux=3))
        assert meter.downlink_bytes["d"] - down == CostModel(_scenario(codec, B, T)).gradient_bytes(2)
        back = tr.recv_down("d")
        assert back.aux == 3 and back.tensors["grad"].shape == (B, T, 768)  # aux (fedavg rounds) untouched


def test_run_sends_the_scenarios_codec_and_refuses_what_it_cannot_honour(tiny_gpt2, tmp_path):
    from trainer.run.launch import run
    from trainer.run.runner import RunConfig

    kw = dict(devices=str(FIXTURES / "runtime_tiny.yaml"), model=tiny_gpt2, task="sst2", method="splitfrozen",
              partition="iid", split=1, epochs=1, train_samples=16, eval_samples=4, max_len=48,
              data_dir=str(FIXTURES / "data"), progress=False, launch="inprocess", count_flops=False)
    sizes = {}
    for codec in ("fp32", "int8", "int4"):  # fp16 and bf16: per message above
        m = run(RunConfig(out=str(tmp_path / codec), wire_dtype=codec, **kw))
        shapes = [s for shp in m["microbatch_shapes"].values() for s in shp]
        # hidden in the codec + uint8 mask + int64 labels, per micro-batch as trimmed
        assert m["uplink_bytes"] == sum(wire_bytes(codec, b * t, 32) + b * t + 8 * b for b, t in shapes)
        sizes[codec] = m["uplink_bytes"]
        assert (m["phase_s"].get("codec_encode", 0) > 0) == (codec != "fp32")
    assert sizes["fp32"] > sizes["int8"] > sizes["int4"]
    bf16 = tmp_path / "bf16.yaml"
    bf16.write_text((FIXTURES / "runtime_tiny.yaml").read_text().replace("  micro_batch: 4", "  micro_batch: 4\n  dtype: bf16"))
    with pytest.raises(SfsimError, match="training.dtype: bf16: the runtime trains in fp32"):
        run(RunConfig(out=str(tmp_path / "x"), **{**kw, "devices": str(bf16)}))


def test_admissible_codecs_under_an_accuracy_budget():
    assert admissible(["fp32", "int8"], None) == ["fp32", "int8"]
    assert admissible(["fp32"], 0.0) == ["fp32"]
    with pytest.raises(ValueError, match="unknown wire codec 'int3'"):
        admissible(["int3"], 1.0)


@pytest.mark.slow  # a local launch: about 30 s on the loaded 2-core CI machine
def test_malformed_codec_payload_over_the_wire_drops_the_sender(tiny_gpt2, tmp_path):
    from trainer.run.launch import launch_local
    from trainer.run.runner import RunConfig

    out = tmp_path / "rogue"
    cfg = RunConfig(devices=str(FIXTURES / "runtime_tiny.yaml"), model=tiny_gpt2, task="sst2", method="splitfrozen",
                    partition="label-skew:1", split=1, epochs=1, train_samples=24, eval_samples=8, max_len=48,
                    data_dir=str(FIXTURES / "data"), out=str(out), progress=False, launch="local", peer_timeout=20.0,
                    wire_dtype="int8")
    m = launch_local(cfg, targets={3: _rogue})
    assert set(m["lost_devices"]) == {"small-1"} and "int8 values must lie" in m["lost_devices"]["small-1"]["reason"]
    assert len(m["train_loss_history"]) == 3 + 2  # big and small-0 trained in full, in int8
    bad = [line for line in (out / "logs" / "server.log").read_text().splitlines() if line.startswith("bad message")]
    assert bad == ["bad message from rank 3 (small-1): malformed int8 hidden: int8 values must lie in -127..127; "
                   "dropping small-1"]
    assert "int8 values must lie" in m["dropped_peers"]["small-1"]  # dropped on receipt, as every bad message


def _rogue(master: str, world: int, rank: int, log: str) -> None:
    """A device that joins with the run's secret, waits for its credits, then sends a well-formed int8 header
    whose payload holds -128 (no encoder makes it)."""
    import os

    from trainer.transport import secure
    from trainer.transport.distributed import connect, sync_clock

    ch = connect(rank, world, master, [f"d{i}" for i in range(world - 1)], secure.need_secret(), False, 10.0)[0]
    sync_clock(Meter())
    ch.send(wire.encode_header(Packet(Kind.HELLO, rank - 1, aux=6)).numpy().tobytes())
    try:
        while True:  # credits come with START (activations without one would be refused for that first)
            p, specs = wire.decode_header(torch.frombuffer(ch.recv(wire.HEADER_LEN * 8), dtype=torch.int64), wire.DOWN)
            if specs:
                ch.recv(wire.payload_bytes(specs))
            if p.kind == Kind.START:
                break
        t = codecs.pack({"hidden": _x(B=4, T=8), "attention_mask": torch.ones(4, 8, dtype=torch.uint8),
                         "labels": torch.zeros(4, dtype=torch.int64)}, "hidden", "int8")
        t["hidden"].view(-1)[0] = -128
        bad = Packet(Kind.ACT, rank - 1, 0, 0, CODECS["int8"].code, t)
        ch.send(wire.encode_header(bad).numpy().tobytes())
        ch.send(*wire.tensor_views(bad.tensors))
        while True:  # read (and ignore) what the server sends until it drops us
            ch.recv(wire.HEADER_LEN * 8)
    except Exception:  # noqa: BLE001 (the server closed the connection)
        pass
    finally:
        os._exit(0)


def _profiled(tmp_path, codec: str, timed: bool):
    """One device and one server on a hand-made GPT-2 latency profile (4 x 64 and 4 x 128), with or without codec times."""
    import yaml

    grid = []
    for t in (64, 128):
        p = {"micro_batch": 4, "seq_len": t, "forward": {"embed": "1 ms", "blocks": "10 ms", "norm": "0 ms", "head": "1 ms"}}
        if timed:  # 2 us per token to encode int8, 1 us to decode; int4 twice that
            p["codec"] = {c: {"encode": f"{k * 2e-3 * 4 * t} ms", "decode": f"{k * 1e-3 * 4 * t} ms"}
                          for c, k in (("int8", 1), ("int4", 2))}
        grid.append(p)
    path = tmp_path / f"prof-{timed}.yaml"
    path.write_text(yaml.safe_dump({"device": "hand", "model": "gpt2", "task": "classification", "num_labels": 2,
                                    "grid": grid}))
    return scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 96, "num_labels": 2},
        "training": {"micro_batch": 4, "wire_dtype": codec, "split": 2, "epochs": 1},
        "servers": [{"name": "s", "latency_profile": str(path), "memory": "16 GiB"}],
        "devices": [{"name": "d", "latency_profile": str(path), "memory": "1 GiB", "samples": 4,
                     "uplink": {"bandwidth": "10 Mbps"}, "downlink": {"bandwidth": "10 Mbps"}}]})


@pytest.mark.parametrize("codec, enc_us, dec_us", [("int8", 2, 1), ("int4", 4, 2), ("fp16", 0, 0), ("fp32", 0, 0)])
def test_profiled_codec_time_is_costed_and_simulated(tmp_path, codec, enc_us, dec_us):
    from sfsim.simulate import simulate

    sc = _profiled(tmp_path, codec, timed=True)
    cm = CostModel(sc)
    tokens = 4 * 96  # between the grid's 64 and 128: linear in tokens
    assert cm.codec_seconds(sc.devices[0], "encode") == pytest.approx(enc_us * 1e-6 * tokens, rel=1e-9)
    assert cm.codec_seconds(sc.servers[0], "decode") == pytest.approx(dec_us * 1e-6 * tokens, rel=1e-9)
    plain = simulate(_profiled(tmp_path, codec, timed=False), schedule="splitfrozen").makespan_s
    # one micro-batch: the makespan is forward + encode + link + decode + server, one after the other
    assert simulate(sc, schedule="splitfrozen").makespan_s - plain == pytest.approx((enc_us + dec_us) * 1e-6 * tokens)


def test_measured_profile_has_codec_times(tmp_path):
    from sfsim.cost.latency import load_latency_profile
    from trainer.model.loading import tiny_model
    from trainer.validate.profile import ProfileSpec, profile_model, write_profile

    prof = profile_model(tiny_model("bert", n_layers=2, hidden=32), ProfileSpec([2], [8], repeats=2, warmup=1),
                         model="tiny")
    write_profile(prof, tmp_path / "p.yaml")
    point = load_latency_profile(tmp_path / "p.yaml").points()[0]
    assert sorted(point.codec) == sorted(c for c in CODECS if c != "fp32")
    assert all(t.encode > 0 and t.decode > 0 for t in point.codec.values())


def test_planner_picks_the_fastest_codec_within_the_accuracy_budget(monkeypatch):
    from sfsim.cost import wire as cost_wire
    from sfsim.planner import codecs as pcodecs
    from sfsim.scenario.overrides import load_scenario_with

    table = {"fp32": 0.0, "fp16": 0.0, "int8": 0.4, "int4": 2.0}
    monkeypatch.setattr(cost_wire, "ACCURACY_COST_POINTS", table)
    monkeypatch.setattr(pcodecs, "ACCURACY_COST_POINTS", table)
    edge = str(Path(__file__).parents[1] / "profiles" / "edge.yaml")  # uplink-bound: smaller is faster

    def load(codec):
        return load_scenario_with(edge, [("training.wire_dtype", codec)])

    got = pcodecs.choose_codec(load, ["fp16", "int8", "int4"], 1.0)
    assert got.codec == "int8" and set(got.costs) == {"fp16", "int8"} and got.refused == {"int4": 2.0}
    assert got.costs["int8"] < got.costs["fp16"] and got.result.makespan_s == got.costs["int8"]
    assert got.line().startswith("wire codec: int8 (accuracy budget 1 points; ")
    assert "over budget: int4 (-2 points)" in got.line()
    with pytest.raises(SfsimError, match="no codec of int4 costs at most 1 points"):
        pcodecs.choose_codec(load, ["int4"], 1.0)
