"""``sfsim profile`` and grid latency profiles: measuring tiny models, the file format, interpolation in the
grid, errors outside it, and servers driven by a profile."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from sfsim.cli import main
from sfsim.cost.latency import load_latency_profile
from sfsim.cost.model import CostModel
from sfsim.errors import ConfigError
from sfsim.scenario.config import scenario_from_dict
from sfsim.simulate import simulate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ measuring (tiny random models)
@pytest.fixture(scope="module", params=[("bert", "classification"), ("llama", "causal-lm")], ids=["bert", "llama"])
def measured(request, tmp_path_factory):
    """A profile of a tiny model over a 2 x 2 grid, written to YAML and read back."""
    from trainer.model.loading import tiny_model
    from trainer.validate.profile import ProfileSpec, profile_model, write_profile

    family, task = request.param
    lm = tiny_model(family, n_layers=3, hidden=32)
    spec = ProfileSpec([2, 4], [8, 16], task=task, warmup=1, repeats=3, name="test-box")
    prof = profile_model(lm, spec, model=f"tiny-{family}", source="test")
    path = tmp_path_factory.mktemp("prof") / f"{family}.yaml"
    write_profile(prof, path)
    return prof, path, lm


def test_profile_round_trips_through_the_loader(measured):
    raw, path, lm = measured
    prof = load_latency_profile(path)
    assert (prof.device, prof.role, prof.repeats, prof.warmup) == ("test-box", "device", 3, 1)
    assert prof.arch.n_layers == 3 and prof.arch.family == lm.family and prof.lora.rank == 8
    assert prof.axes() == ([2, 4], [8, 16])
    assert {"cpu", "cores", "threads", "torch", "date", "load_average", "wall_s"} <= set(prof.machine)
    assert prof.machine["threads"] == 1
    for p in prof.points():
        for table in (p.forward, p.forward_train, p.input_grad, p.weight_grad):
            assert len(table.blocks) == 3 and all(t > 0 for t in table.blocks)
        assert p.forward.embed > 0 and p.forward_train.head > 0 and p.input_grad.head > 0
        assert p.step.block > 0 and p.step.all > 0 and p.peak_memory > 0
        assert len(p.iqr.forward.blocks) == 3 and all(t >= 0 for t in p.iqr.input_grad.blocks)
        assert p.activation_bytes == [p.micro_batch * p.seq_len * 32 * 4] * 4  # (B, T, d) fp32 at cuts 0..3
    # the file's medians are the ones the library measured (written as ms strings, read back in seconds)
    first = raw["grid"][0]["forward"]["blocks"][0]
    assert prof.points()[0].forward.blocks[0] == pytest.approx(float(first.split()[0]) / 1e3)


def test_measured_profile_drives_a_device_and_a_server(measured, tmp_path):
    """At a grid point a device prefix costs exactly the measured embeddings + blocks."""
    _, path, lm = measured
    config = tmp_path / "model"
    lm.model.config.save_pretrained(config)
    task = "classification" if lm.family == "bert" else "causal-lm"
    model = {"name": str(config), "seq_len": 16, "task": task}
    if task == "classification":
        model["num_labels"] = 2
    sc = scenario_from_dict({
        "model": model, "training": {"micro_batch": 4, "split": 2, "splitlora_cut": 1},
        "servers": [{"name": "s", "latency_profile": str(path), "memory": "1 GiB"}],
        "devices": [{"name": "d", "latency_profile": str(path), "memory": "1 GiB", "samples": 8,
                     "uplink": {"bandwidth": "100 Mbps"}, "downlink": {"bandwidth": "100 Mbps"}}]})
    cm = CostModel(sc)
    p = next(q for q in load_latency_profile(path).points() if (q.micro_batch, q.seq_len) == (4, 16))
    f, b, w = cm.seconds(cm.device_prefix(2), sc.devices[0])
    assert f == pytest.approx(p.forward.embed + sum(p.forward.blocks[:2]), rel=1e-12) and b == w == 0
    sf, sb, sw = cm.seconds(cm.server_suffix(2, 2), sc.servers[0])
    assert sf > 0 and sb > 0 and sw > 0
    for schedule in ("splitfrozen", "splitlora", "fedlora", "cenlora"):
        assert simulate(sc, schedule=schedule).makespan_s > 0


# ------------------------------------------------------------------ a hand-made grid (GPT-2 shapes, pure)
def _ms(x):
    return f"{x} ms"


def _grid_profile(points: dict, **top) -> dict:
    """A GPT-2 grid profile: {(mb, T): block forward ms}; embeddings 1 ms per 256 tokens."""
    grid = [{"micro_batch": mb, "seq_len": t,
             "forward": {"embed": _ms(mb * t / 256), "blocks": _ms(ms), "norm": "0 ms", "head": "0.5 ms"}}
            for (mb, t), ms in points.items()]
    return {"device": "hand", "model": "gpt2", "task": "classification", "num_labels": 2, "grid": grid, **top}


GRID = {(4, 64): 100.0, (4, 128): 230.0, (8, 64): 190.0, (8, 128): 420.0}


def _cm(tmp_path, prof: dict, micro_batch: int, seq_len: int) -> CostModel:
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(prof))
    return CostModel(scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": seq_len, "num_labels": 2}, "training": {"micro_batch": micro_batch},
        "servers": [{"name": "s", "flops": "1 TFLOPS", "memory": "16 GiB"}],
        "devices": [{"name": "d", "latency_profile": str(tmp_path / "grid.yaml"), "memory": "1 GiB", "samples": 8,
                     "uplink": {"bandwidth": "10 Mbps"}, "downlink": {"bandwidth": "10 Mbps"}}]}))


def _block_flops(mb, t, d=768):
    return 24 * mb * t * d**2 + 4 * mb * t**2 * d  # GPT-2 block forward (see test_costmodel)


@pytest.mark.parametrize("shape", sorted(GRID))
def test_grid_points_give_the_table_values(tmp_path, shape):
    cm = _cm(tmp_path, _grid_profile(GRID), *shape)
    f, _, _ = cm.seconds(cm.device_prefix(3), cm.scenario.devices[0])
    mb, t = shape
    assert f == pytest.approx(mb * t / 256e3 + 3 * GRID[shape] / 1e3, rel=1e-12)


def test_between_grid_points_seconds_per_flop_are_bilinear(tmp_path):
    cm = _cm(tmp_path, _grid_profile(GRID), 6, 96)  # the middle of the cell: each corner weighs 1/4
    rate = sum(ms / 1e3 / _block_flops(mb, t) for (mb, t), ms in GRID.items()) / 4
    f, _, _ = cm.seconds(cm.device_prefix(3), cm.scenario.devices[0])
    assert f == pytest.approx(6 * 96 / 256e3 + 3 * rate * _block_flops(6, 96), rel=1e-12)
    cm = _cm(tmp_path, _grid_profile(GRID), 4, 80)  # on an edge: a quarter of the way from T=64 to 128
    rate = 0.75 * 0.100 / _block_flops(4, 64) + 0.25 * 0.230 / _block_flops(4, 128)
    f, _, _ = cm.seconds(cm.device_prefix(1), cm.scenario.devices[0])
    assert f == pytest.approx(4 * 80 / 256e3 + rate * _block_flops(4, 80), rel=1e-12)


@pytest.mark.parametrize("shape", [(16, 64), (4, 32), (2, 256)])
def test_outside_the_grid_is_a_one_line_error(tmp_path, shape):
    cm = _cm(tmp_path, _grid_profile(GRID), *shape)
    with pytest.raises(ConfigError, match=r"grid\.yaml: grid: the scenario's micro_batch \d+ x seq_len \d+ is outside "
                       r"the measured grid \(micro_batch 4\.\.8, seq_len 64\.\.128\); measure one that covers it: "
                       r"sfsim profile --micro-batch [\d,]+ --seq-len [\d,]+$"):
        cm.seconds(cm.device_prefix(1), cm.scenario.devices[0])


def test_a_one_point_grid_scales_by_flops_to_any_shape(tmp_path):
    cm = _cm(tmp_path, _grid_profile({(4, 64): 100.0}), 16, 256)
    f, _, _ = cm.seconds(cm.device_prefix(2), cm.scenario.devices[0])
    assert f == pytest.approx(16 * 256 / 256e3 + 2 * 0.100 * _block_flops(16, 256) / _block_flops(4, 64), rel=1e-12)


@pytest.mark.parametrize("change, message", [
    (lambda p: p["grid"].pop(), "grid: no entry for micro_batch 8, seq_len 128; measure every"),
    (lambda p: p["grid"].append(dict(p["grid"][0])), "grid: entry 4 repeats micro_batch 4, seq_len 64"),
    (lambda p: p.update(micro_batch=4), "give either 'grid' or top-level"),
    (lambda p: p.pop("grid"), "give 'grid' (a list of measured shapes) or 'micro_batch', 'seq_len' and 'forward'"),
])
def test_bad_grid_files_are_one_line_errors(tmp_path, change, message):
    prof = _grid_profile(GRID)
    change(prof)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(prof))
    with pytest.raises(ConfigError, match="bad.yaml: " + message.replace("(", r"\(").replace(")", r"\)")):
        load_latency_profile(tmp_path / "bad.yaml")


def test_a_profile_of_another_task_is_refused(tmp_path):
    cm = _cm(tmp_path, _grid_profile(GRID, task="causal-lm", num_labels=None), 4, 64)
    with pytest.raises(ConfigError, match="task: measured with the causal-lm head but the scenario's task is "
                       "classification; profile with --task classification"):
        cm.seconds(cm.device_prefix(1), cm.scenario.devices[0])


# ------------------------------------------------------------------ a server with a latency profile
SERVER_PROFILE = {
    "device": "hand-server", "role": "server", "model": "minilm-l6", "task": "classification", "num_labels": 2,
    "lora": {"rank": 8, "alpha": 16, "targets": ["query", "value"]},
    "grid": [{"micro_batch": 4, "seq_len": 32,
              "forward": {"embed": "1 ms", "blocks": "10 ms", "norm": "0 ms", "head": "1 ms"},
              "forward_train": {"embed": "1 ms", "blocks": "20 ms", "norm": "1 ms", "head": "2 ms"},
              "input_grad": {"blocks": "30 ms", "norm": "0.5 ms", "head": "3 ms"},
              "weight_grad": {"blocks": "5 ms", "head": "1 ms"},
              "step": {"block": "3 ms", "head": "1.5 ms", "all": "13.5 ms"}}]}


def _server_scenario(tmp_path, **server):
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(SERVER_PROFILE))
    srv = {"name": "s", "latency_profile": "server.yaml", "memory": "16 GiB", **server}
    data = {"model": {"name": "minilm-l6", "seq_len": 32, "num_labels": 2},
            "training": {"micro_batch": 4, "split": 2, "lora_start": 3},
            "servers": [srv],
            "devices": [{"name": "d", "flops": "1 GFLOPS", "memory": "1 GiB", "samples": 4,
                         "uplink": {"bandwidth": "10 Mbps", "latency": "5 ms"}, "downlink": {"bandwidth": "10 Mbps"}}]}
    (tmp_path / "sc.yaml").write_text(yaml.safe_dump(data))
    from sfsim.scenario.config import load_scenario

    return load_scenario(tmp_path / "sc.yaml")


def test_server_latency_profile_gives_the_server_its_measured_times(tmp_path):
    sc = _server_scenario(tmp_path)
    cm = CostModel(sc)
    lf = cm.lf  # block 3 is the lowest LoRA block (no input gradient): its B and W scale by FLOPs
    f, b, w = cm.seconds(cm.server_suffix(2, 3), sc.servers[0])
    assert f == pytest.approx(0.010 + 3 * 0.020 + 0.001 + 0.002, rel=1e-12)  # frozen block 2, LoRA 3..5, norm, head
    assert b == pytest.approx(0.030 * (lf.B_first[4] / lf.B_lora[4] + 2) + 0.0005 + 0.003, rel=1e-12)
    assert w == pytest.approx(0.005 * (lf.W_first[4] / lf.W_lora[4] + 2) + 0.001, rel=1e-12)
    # a step costs 1 ms + 2 ms a block + 0.5 ms for the head: one block 3 ms, head 1.5 ms, all six + head 13.5 ms
    srv = sc.servers[0]
    assert cm.optimizer_seconds(cm.trainable_params(range(6), head=True), srv) == pytest.approx(0.0135, rel=1e-12)
    step = cm.optimizer_seconds(cm.trainable_params(range(3, 6), head=True), srv)
    assert step == pytest.approx(0.001 + 3 * 0.002 + 0.0005, rel=1e-12)
    # one micro-batch: device forward, uplink, then server F, B, W and the step back to back
    res = simulate(sc, schedule="splitfrozen")
    dev_f = cm.device_prefix(2).f / 1e9
    up = cm.uplink_bytes(2) * 8 / 10e6 + 0.005
    assert res.server_busy_s["s"] == pytest.approx(f + b + w + step, rel=1e-9)
    assert res.makespan_s == pytest.approx(dev_f + up + f + b + w + step, rel=1e-9)


def test_a_single_shape_file_drives_a_server_as_it_drives_a_device(tmp_path):
    """The committed older-format table: a server running the device's prefix costs what the device does."""
    from pathlib import Path

    table = Path(__file__).resolve().parents[1] / "profiles/latency/ci-x86-2core-gpt2.yaml"
    sc = scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 64, "num_labels": 2}, "training": {"micro_batch": 4},
        "servers": [{"name": "s", "latency_profile": str(table), "memory": "16 GiB"}],
        "devices": [{"name": "d", "latency_profile": str(table), "memory": "1 GiB", "samples": 4,
                     "uplink": {"bandwidth": "10 Mbps"}, "downlink": {"bandwidth": "10 Mbps"}}]})
    cm = CostModel(sc)
    for work in (cm.device_prefix(4), cm.server_suffix(4, 6), cm.full_model()):
        assert cm.seconds(work, sc.servers[0]) == cm.seconds(work, sc.devices[0])
    assert simulate(sc, schedule="splitfrozen", splits=4).makespan_s > 0


@pytest.mark.parametrize("server, message", [
    ({"flops": "1 TFLOPS"}, "servers[0]: give exactly one of 'flops' (e.g. '12 TFLOPS') or 'latency_profile'"),
    ({"latency_profile": "missing.yaml"}, "servers[0].latency_profile: no such file 'missing.yaml'"),
])
def test_server_latency_profile_errors(tmp_path, server, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        _server_scenario(tmp_path, **server)


# ------------------------------------------------------------------ the profiles shipped in profiles/latency
SHIPPED = [f"{m}-{r}.yaml" for m in ("minilm-l6", "smollm2-135m") for r in ("device", "server")]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_reproduce_their_measured_times(name):
    """Each shipped table says how it was made, and at each of its grid points a device prefix costs what it measured."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "profiles/latency" / name
    prof = load_latency_profile(path)
    assert prof.source.startswith(f"sfsim profile --model {prof.model} ") and f"--role {prof.role}" in prof.source
    assert name == f"{prof.model}-{prof.role}.yaml" and prof.machine["threads"] == 1
    assert set(prof.machine["load_average"]) == {"before", "after", "after_5min"} and prof.task == "classification"
    for p in prof.points():
        sc = scenario_from_dict({
            "model": {"name": prof.model, "seq_len": p.seq_len, "num_labels": 2},
            "training": {"micro_batch": p.micro_batch},
            "servers": [{"name": "s", "latency_profile": str(path), "memory": "16 GiB"}],
            "devices": [{"name": "d", "latency_profile": str(path), "memory": "1 GiB", "samples": 4,
                         "uplink": {"bandwidth": "10 Mbps"}, "downlink": {"bandwidth": "10 Mbps"}}]})
        cm = CostModel(sc)
        f, _, _ = cm.seconds(cm.device_prefix(2), sc.devices[0])
        assert f == pytest.approx(p.forward.embed + sum(p.forward.blocks[:2]), rel=1e-12)


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from trainer.model.loading import tiny_model

    lm = tiny_model("gpt2", n_layers=2, hidden=32)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


def test_cli_writes_a_profile_with_its_command(tiny_folder, tmp_path):
    out = tmp_path / "p.yaml"
    args = ["profile", "--model", tiny_folder, "--seq-len", "8", "--micro-batch", "2,3", "--warmup", "0",
            "--repeats", "1", "--role", "server", "--name", "box", "-o", str(out), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    prof = load_latency_profile(out)
    assert prof.role == "server" and prof.axes() == ([2, 3], [8]) and prof.machine["threads"] == 1
    assert prof.source.startswith(f"sfsim profile --model {tiny_folder} --seq-len 8 --micro-batch 2,3 --threads 1 "
                                  "--role server --task classification")


@pytest.mark.parametrize("over, message", [
    ({"--model": "no-such-model"}, "error: unknown model 'no-such-model'"),
    ({"--seq-len": "0,abc"}, "error: --seq-len '0,abc': give whole numbers separated by commas"),
    ({"--micro-batch": "4,0"}, "error: --micro-batch 4,0: give distinct sizes in 1..65536"),
    ({"--micro-batch": "4,4"}, "error: --micro-batch 4,4: give distinct sizes"),
    ({"--seq-len": "4096"}, "error: --seq-len 4096 is longer than"),
    ({"-o": "no/such/folder/p.yaml"}, "error: -o no/such/folder/p.yaml: folder 'no/such/folder' does not exist"),
])
def test_cli_bad_input_is_one_line_exit_2(tiny_folder, tmp_path, over, message):
    opts = {"--model": tiny_folder, "--seq-len": "8", "--micro-batch": "2", "--repeats": "1", "--warmup": "0",
            "--name": "box", "-o": str(tmp_path / "p.yaml"), **over}
    res = CliRunner().invoke(main, ["profile", *[x for kv in opts.items() for x in kv]])
    assert res.exit_code == 2, res.output
    assert res.output.startswith(message) and res.output.count("\n") == 1, res.output


# ------------------------------------------------------------------ first-call warm-up (issue 9)
def test_profile_records_the_first_calls_overhead(measured):
    raw, path, _ = measured
    fc = load_latency_profile(path).first_call
    assert (fc.micro_batch, fc.seq_len) == (2, 8) and fc.cold_s > 0 and fc.steady_s > 0
    assert fc.extra_s == pytest.approx(max(0.0, fc.cold_s - fc.steady_s), abs=2e-6)
    assert raw["first_call"]["extra_s"] == round(max(0.0, raw["first_call"]["cold_s"] - raw["first_call"]["steady_s"]), 6)


@pytest.mark.parametrize(("flops", "want"), [("1 TFLOPS", None), ("1 GFLOPS", 0.0)])
def test_validate_warmup_is_the_first_calls_overrun_of_the_emulated_forward(tmp_path, flops, want):
    """warmup = max(0, t_real + extra - t_target): a fast emulated device overruns, a slow one absorbs it."""
    from trainer.validate.compare import warmups

    prof = _grid_profile({(4, 64): 100.0, (4, 128): 230.0, (8, 64): 190.0, (8, 128): 420.0},
                         first_call={"micro_batch": 4, "seq_len": 64, "cold_s": "350 ms", "steady_s": "100 ms",
                                     "extra_s": "250 ms"})
    (tmp_path / "dev.yaml").write_text(yaml.safe_dump(prof))
    sc = scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 64, "num_labels": 2}, "training": {"micro_batch": 4},
        "servers": [{"name": "s", "flops": "1 TFLOPS", "memory": "16 GiB"}],
        "devices": [{"name": "d", "flops": flops, "memory": "1 GiB", "samples": 8,
                     "uplink": {"bandwidth": "10 Mbps"}, "downlink": {"bandwidth": "10 Mbps"}}]})
    cm = CostModel(sc)
    t_target = cm.seconds(cm.device_prefix(2), sc.devices[0])[0]
    t_real = 4 * 64 / 256 * 1e-3 + 2 * 0.1  # the grid point: embeddings + two blocks
    got = warmups(sc, str(tmp_path / "dev.yaml"), {"d": 2})
    assert got == {"d": round(max(0.0, t_real + 0.25 - t_target), 6)}
    if want is not None:
        assert got["d"] == want  # a 1-GFLOPS device's 2.8 s forward hides a 0.25 s first-call overhead
    else:
        assert got["d"] == pytest.approx(t_real + 0.25 - t_target, abs=1e-6) and got["d"] > 0.25
