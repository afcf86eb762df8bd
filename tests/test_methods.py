"""Tests for the trainer's methods, the decomposed backward and the measurement."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from trainer.model.backward import DeferredGrads
from trainer.run.measure import Meter, tensor_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(8, 16)
        self.l2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # (B, T, 8) -> (B, 3)
        return self.head(torch.tanh(self.l2(torch.relu(self.l1(x)))).mean(1))


def _lora_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = _Net()
    net = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["l1", "l2"]), net)
    for name, p in net.named_parameters():
        p.requires_grad = "lora_" in name or name.startswith("head")
    for name, p in net.named_parameters():  # non-zero lora_B so every gradient is non-trivial
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    return net


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_deferred_w_equals_plain_backward(micro_batches):
    plain = _lora_net(0)
    split = copy.deepcopy(plain)
    dg = DeferredGrads(split)
    assert len(dg.layers) == 5  # lora_A/lora_B of l1 and l2, plus the head
    torch.manual_seed(1)
    xs = [torch.randn(2, 5, 8) for _ in range(micro_batches)]
    ys = [torch.randint(0, 3, (2,)) for _ in range(micro_batches)]
    for x, y in zip(xs, ys, strict=True):
        nn.functional.cross_entropy(plain(x), y).backward()
        nn.functional.cross_entropy(split(x), y).backward()
    trainable = [n for n, p in split.named_parameters() if p.requires_grad]
    # after B only, no trainable Linear has a gradient yet: W really is deferred
    assert all(dict(split.named_parameters())[n].grad is None for n in trainable)
    assert dg.pending == 5 * micro_batches
    dg.flush()
    assert dg.pending == 0
    for n, p in plain.named_parameters():
        q = dict(split.named_parameters())[n]
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-6)
        else:
            assert q.grad is None


def test_deferred_grads_input_gradient_and_remove():
    net = _lora_net(2)
    ref = copy.deepcopy(net)
    x = torch.randn(3, 4, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    dg = DeferredGrads(net)
    net(x).sum().backward()
    ref(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-6, rtol=1e-6)
    dg.remove()
    assert dg.layers == [] and "forward" not in net.head.__dict__


def test_meter_counts_matmul_flops_and_bytes():
    meter = Meter()
    a, b = torch.randn(4, 5), torch.randn(5, 6)
    with meter.compute("dev", "F", "device_forward", mb=0, device="dev"):
        a @ b
    assert meter.flops["dev"] == 2 * 4 * 5 * 6
    assert tensor_bytes({"x": a, "y": [b, torch.zeros(3, dtype=torch.int64)]}) == (20 + 30) * 4 + 24
    meter.transfer("dev", 100, 0.0, 0.5, mb=0)
    s = meter.summary(["dev"])
    assert s["device_flops_total"] == 240 and s["uplink_bytes"] == 100 and s["downlink_bytes"] == 0
    assert [(e.lane, e.op) for e in meter.events] == [("dev", "F"), ("link:dev", "send")]


# ---------------------------------------------------------------- pacing, mixing, device roles

from trainer.transport.runtime import DeviceRole, server_order, stream_mixing  # noqa: E402


def test_server_orders_exact():
    counts = {"a": 2, "b": 4}
    assert server_order(counts, "proportional") == ["b", "a", "b", "b", "a", "b"]
    assert server_order(counts, "round-robin") == ["a", "b", "a", "b", "b", "b"]
    # fifo: a produces every 3 s (t=3, 6), b every 1 s (t=1..4)
    assert server_order(counts, "fifo", {"a": 3.0, "b": 1.0}) == ["b", "b", "a", "b", "b", "a"]


def test_server_order_rejects_unknown_policy():
    from sfsim.errors import SfsimError

    with pytest.raises(SfsimError, match="unknown server order 'lifo'"):
        server_order({"a": 1}, "lifo")


def test_stream_mixing_closed_form():
    m = stream_mixing(["a", "a", "b", "b"], [[0, 0], [0, 0], [1, 1], [1, 0]], window=2)
    # windows: (a, a) labels 0000 -> entropies 0, 0; (b, b) labels 1,1,1,0 -> device 0, label H(3/4,1/4)/ln2
    assert m["device_entropy_mean"] == 0.0 and m["label_entropy_min"] == 0.0
    assert m["label_entropy_mean"] == round(0.8112781244591328 / 2, 4)
    assert m["longest_device_run"] == 2 and m["single_device_tail"] == 0.5


def test_device_batches_are_reproducible_and_trimmed():
    ids = torch.arange(30).reshape(5, 6)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0]] * 4 + [[1, 1, 1, 0, 0, 0]])
    role = DeviceRole("d", {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(5)}, 2, seed=3)
    b1, b2 = role.batches(0), role.batches(0)
    assert role.n_batches == 3 and [len(b["labels"]) for b in b1] == [2, 2, 1]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(b1, b2, strict=True))
    assert sorted(torch.cat([b["labels"] for b in b1]).tolist()) == [0, 1, 2, 3, 4]
    for b in b1:  # columns that are padding in every row of the micro-batch are dropped
        assert b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max())
    assert [b["labels"].tolist() for b in role.batches(1)] != [b["labels"].tolist() for b in b1]


# ---------------------------------------------------------------- the methods on a tiny model

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

from trainer.methods.checkpoint import load_adapter, save_adapter  # noqa: E402
from trainer.model.loading import load_model, tiny_model  # noqa: E402
from trainer.model.split import split_model  # noqa: E402
from trainer.run.runner import RunConfig, _adapter_config, build, run  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
ALL_METHODS = ["splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora", "cenlora"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny random BERT and GPT-2 models saved as local HF folders (as --model PATH takes them)."""
    out = {}
    for fam in ("bert", "gpt2"):
        lm = tiny_model(fam, n_layers=4, hidden=32, seed=1)
        path = tmp_path_factory.mktemp(f"tiny-{fam}")
        lm.model.save_pretrained(path)
        lm.tokenizer.save_pretrained(path)
        out[fam] = str(path)
    return out


def _cfg(tmp_path, model, method, **kw):
    base = dict(devices=str(FIXTURES / "run_tiny.yaml"), model=model, task="sst2", method=method,
                partition="iid", out=str(tmp_path / method), split=1, epochs=1, train_samples=24,
                eval_samples=16, lr=1e-2, data_dir=str(FIXTURES / "data"), progress=False, count_flops=False,
                max_len=48)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_loss_falls(tiny_dirs, tmp_path, method):
    cfg = _cfg(tmp_path, tiny_dirs["gpt2"], method, epochs=5, train_samples=12, lr=3e-2)
    b = build(cfg)
    m = b.method
    epoch_loss = []
    for epoch in range(5):
        losses = []
        m.train_epoch(epoch, lambda loss, n, losses=losses: losses.append(loss))
        m.finish_epoch()
        epoch_loss.append(sum(losses) / len(losses))
    assert (epoch_loss[-1] + epoch_loss[-2]) / 2 < 0.7 * epoch_loss[0], epoch_loss


def _digest(module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().numpy().tobytes())
    return h.hexdigest()


def test_splitfrozen_device_weights_unchanged_and_bytes(tiny_dirs, tmp_path):
    cfg = _cfg(tmp_path, tiny_dirs["gpt2"], "splitfrozen", partition="label-skew:1", epochs=2)
    b = build(cfg)
    lm, setup, m = b.lm, b.setup, b.method
    dev_part = setup.devices[0].part
    before = _digest(dev_part)
    server_before = {n: p.detach().clone() for n, p in lm.model.named_parameters() if "lora_B" in n}
    expected_up = 0
    for epoch in range(2):
        for d in setup.devices:
            for b in d.batches(epoch):  # activation (B, T, d) fp32 + mask (1 byte a token) + labels
                expected_up += b["input_ids"].numel() * (lm.hidden * 4 + 1) + b["labels"].nbytes
        m.train_epoch(epoch, lambda loss, n: None)
    assert _digest(dev_part) == before
    assert any(not torch.equal(p, server_before[n]) for n, p in lm.model.named_parameters() if "lora_B" in n)
    s = setup.meter.summary([d.name for d in setup.devices])
    assert s["downlink_bytes"] == 0
    assert s["uplink_bytes"] == expected_up
    # every device lane has only forwards (and waits for credits); B and W happen on the server lane
    ops = {(e.lane, e.op) for e in setup.meter.events}
    assert {op for lane, op in ops if lane in setup.cuts} <= {"F", "wait"}
    assert {op for lane, op in ops if lane == setup.server} == {"F", "B", "W", "step"}


def test_deferred_w_run_equals_fused_run(tiny_dirs, tmp_path):
    """The whole SplitFrozen loop with B/W split gives the same losses as fused backward."""
    hist = {}
    for method in ("splitfrozen", "splitfrozen-sequential"):
        hist[method] = run(_cfg(tmp_path, tiny_dirs["bert"], method, epochs=2))["train_loss_history"]
    assert len(hist["splitfrozen"]) == 2 * (3 + 2 + 2)  # 12, 6, 6 samples in micro-batches of 4, 2 epochs
    torch.testing.assert_close(torch.tensor(hist["splitfrozen"]), torch.tensor(hist["splitfrozen-sequential"]),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["splitfrozen", "splitlora", "fedlora", "cenlora"])
def test_save_reload_gives_same_outputs(tiny_dirs, tmp_path, method):
    cfg = _cfg(tmp_path, tiny_dirs["gpt2"], method)
    b = build(cfg)
    lm, setup, m = b.lm, b.setup, b.method
    m.train_epoch(0, lambda loss, n: None)
    m.finish_epoch()
    save_adapter(tmp_path / "adapter", lm.model, setup.head, _adapter_config(cfg, lm, setup, m))
    lm2 = load_model(cfg.model)
    head2, _ = load_adapter(tmp_path / "adapter", lm2)
    ids = torch.randint(5, 60, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    outs = []
    for model, head in ((lm.model, setup.head), (lm2.model, head2)):
        model.eval()
        head.eval()
        dev, srv = split_model(model, m.eval_cut(), head=head, frozen_device=False)
        with torch.no_grad():
            outs.append(srv(dev(ids, mask), mask))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)
    # the reloaded adapters are trained ones (LoRA B starts at zero), so the equality above is not trivial
    assert any(p.abs().sum() > 0 for n, p in lm2.model.named_parameters() if "lora_B" in n)


def test_meter_reuses_measured_flops_for_identical_shapes():
    meter = Meter()
    a, b = torch.randn(4, 5), torch.randn(5, 6)
    for _ in range(3):
        with meter.compute("srv", "F", "server_forward", key=(4, 5)):
            a @ b
    with meter.compute("srv", "step", "server_step", count=False):
        a @ b  # not counted
    assert meter.flops["srv"] == 3 * 240 and len(meter._cache) == 1


# ---------------------------------------------------------------- causal LM (GSM8K) pieces

from trainer.methods.common import task_loss  # noqa: E402
from trainer.methods.evaluate import greedy_generate  # noqa: E402


def test_lm_loss_matches_hf_and_is_zero_without_targets():
    lm = tiny_model("gpt2", n_layers=2, hidden=32, seed=3)
    ids = torch.randint(5, 60, (2, 7))
    labels = ids.clone()
    labels[:, :3] = -100  # prompt
    with torch.no_grad():
        out = lm.model(input_ids=ids, labels=labels)
        ours = task_loss(out.logits, labels, is_lm=True)
        torch.testing.assert_close(ours, out.loss, atol=1e-6, rtol=1e-6)
        assert task_loss(out.logits, torch.full_like(labels, -100), is_lm=True).item() == 0.0


def test_greedy_generate_through_split_equals_hf_generate():
    lm = tiny_model("llama", n_layers=3, hidden=32, seed=4)
    ids = torch.randint(5, 60, (1, 6))
    mask = torch.ones_like(ids)
    dev, srv = split_model(lm.model, 1, frozen_device=False)
    ours = greedy_generate(dev, srv, ids, mask, max_new_tokens=5, eos_id=None)
    ref = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                            min_new_tokens=5, eos_token_id=None, pad_token_id=0)
    assert ours == [ref[0, 6:].tolist()]


def test_scenario_lora_targets_fall_back_to_the_model_family(capsys):
    from types import SimpleNamespace

    from trainer.run.runner import _lora_targets

    def scenario(family, targets):
        return SimpleNamespace(arch=SimpleNamespace(family=family),
                               training=SimpleNamespace(lora=SimpleNamespace(targets=targets)))

    bert = SimpleNamespace(family="bert")
    assert _lora_targets(scenario("gpt2", ["c_attn"]), bert) == ["query", "value"]
    assert "are for gpt2 models" in capsys.readouterr().out
    assert _lora_targets(scenario("bert", ["query"]), bert) == ["query"]
    assert _lora_targets(scenario("gpt2", None), bert) == ["query", "value"]
    assert _lora_targets(scenario("gpt2", ["qkv", "o"]), bert) == ["query", "key", "value", "attention.output.dense"]
    assert _lora_targets(scenario("bert", ["mlp"]), SimpleNamespace(family="llama")) == ["gate_proj", "up_proj",
                                                                                        "down_proj"]


def test_build_says_when_the_loaded_model_is_not_the_scenarios(tiny_dirs, tmp_path, capsys):
    """The fixture describes a 12-block GPT-2; the tiny folder has 4 blocks: one note line names both."""
    build(_cfg(tmp_path, tiny_dirs["gpt2"], "splitfrozen"))
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "this run loads" in ln]
    assert len(notes) == 1
    assert "(gpt2, 4 blocks)" in notes[0] and "emulated times and the cut check follow" in notes[0]
