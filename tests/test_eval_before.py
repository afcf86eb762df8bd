"""GSM8K's held-out answer-only loss and ``--eval-before`` (the untrained model's scores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.methods.evaluate import answer_loss
from trainer.run.runner import RunConfig, run

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_answer_loss_is_the_mean_over_answer_tokens_only():
    vocab = 5
    logits = torch.log_softmax(torch.arange(vocab, dtype=torch.float32), -1)  # the same at every position

    def device(ids, mask):
        return ids.float()[..., None]  # (B, T, 1)

    def server(h, mask):
        return logits.expand(h.shape[0], h.shape[1], vocab)  # (B, T, V)

    data = {"input_ids": torch.tensor([[1, 2, 3, 4], [1, 2, 0, 0]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
            "labels": torch.tensor([[-100, -100, 3, 4], [-100, 2, -100, -100]])}
    want = -(logits[3] + logits[4] + logits[2]) / 3  # three answer tokens, targets 3, 4 and 2
    assert answer_loss(device, server, data) == round(float(want), 6)
    assert answer_loss(device, server, {**data, "labels": torch.full((2, 4), -100)}) is None


def test_eval_before_scores_the_untrained_model_and_changes_nothing_else(tiny_gpt2, tmp_path):
    data = tmp_path / "data" / "gsm8k"  # questions short enough for the tiny model's 128 positions
    data.mkdir(parents=True)
    rows = [json.dumps({"question": f"{a}+{b}?", "answer": f"{a}+{b}={a + b} #### {a + b}"})
            for a in range(1, 5) for b in range(1, 5)]
    (data / "train.jsonl").write_text("\n".join(rows[:12]) + "\n")
    (data / "test.jsonl").write_text("\n".join(rows[12:]) + "\n")

    def cfg(name, **kw):
        return RunConfig(devices=str(FIXTURES / "run_tiny.yaml"), model=tiny_gpt2, task="gsm8k", method="cenlora",
                         partition="iid", out=str(tmp_path / name), epochs=1, train_samples=8, eval_samples=4,
                         lr=1e-2, data_dir=str(tmp_path / "data"), progress=False, count_flops=False, max_len=100,
                         gen_tokens=4, launch="inprocess", **kw)

    with_before, plain = run(cfg("with", eval_before=True)), run(cfg("plain"))
    assert with_before["train_loss_history"] == plain["train_loss_history"]
    assert with_before["eval_metrics"] == plain["eval_metrics"] and plain["eval_before"] is None
    before = with_before["eval_before"]
    assert set(before) == {"accuracy", "answer_loss", "marked", "hit_limit"} and before["answer_loss"] > 0
    assert before["answer_loss"] != plain["eval_metrics"]["answer_loss"]  # training moved the held-out loss
    assert json.loads((tmp_path / "with" / "eval_before.json").read_text()) == before
    # every scored generation is kept, in dev order, and re-derives the exact match it was scored with
    for name, em in (("generations_before.jsonl", before["accuracy"]),
                     ("generations.jsonl", with_before["eval_metrics"]["accuracy"])):
        gens = [json.loads(line) for line in (tmp_path / "with" / name).read_text().splitlines()]
        assert [g["row"] for g in gens] == [0, 1, 2, 3]
        assert [g["reference"] for g in gens] == ["5", "6", "7", "8"]  # test rows 12..15: 4+1 .. 4+4
        assert sum(g["correct"] for g in gens) / 4 == em and all(g["tokens"] <= 4 for g in gens)
        assert all(g["hit_limit"] == (g["tokens"] == 4) for g in gens)
        scores = before if name == "generations_before.jsonl" else with_before["eval_metrics"]
        assert scores["hit_limit"] == sum(g["hit_limit"] for g in gens) / 4
        assert scores["marked"] == sum(g["marked"] for g in gens) / 4
    assert not (tmp_path / "plain" / "generations_before.jsonl").exists()
