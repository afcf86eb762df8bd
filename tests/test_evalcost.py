"""``sfsim profile --role server``'s ``eval``: an epoch end's evaluation beyond its forward (trainer.validate.evalcost),
timed through the runtime's own split, tokenisation and predict, and read back by the cost model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from torch import nn

from trainer.model.loading import tiny_model
from trainer.validate import evalcost


def test_eval_costs_time_the_runtimes_split_tokenisation_and_first_evaluation(monkeypatch):
    """A fake clock the three calls advance: split 1 s, tokenising 0.5 s a row, the forward 10 s (110 s the first
    time): split 1, tokenise_row 0.5, first 100, exactly; the rows and the length are the runtime's."""
    clock, seen = [0.0], []
    monkeypatch.setattr(evalcost.time, "perf_counter", lambda: clock[0])

    def split(model, cut, head=None, frozen_device=True):
        clock[0] += 1.0
        assert not frozen_device and head is not None  # as trainer.methods.evaluate.score splits
        return "dev", "srv"

    def encode(data, tokenizer, max_len):
        clock[0] += 0.5 * len(data)
        seen.append((len(data), max_len))
        return {"n": len(data)}

    def predict(device, server, enc):
        clock[0] += 110.0 if len(seen) == 1 else 10.0

    monkeypatch.setattr(evalcost, "split_model", split)
    monkeypatch.setattr(evalcost.tdata, "encode", encode)
    monkeypatch.setattr(evalcost, "predict", predict)
    out = evalcost.eval_costs(SimpleNamespace(model=None, tokenizer=None), head=nn.Identity(), seq_len=48, repeats=3)
    assert out == {"split": 1.0, "tokenise_row": 0.5, "first": 100.0}
    assert seen == [(evalcost.ROWS, 48)] * 4
    assert evalcost.eval_costs(object(), head=None, seq_len=48) is None  # a causal LM: not priced


@pytest.mark.usefixtures("one_torch_thread")
def test_a_server_profile_has_eval_and_the_cost_model_reads_it(tmp_path):
    from sfsim.cost.latency import load_latency_profile
    from trainer.validate.profile import ProfileSpec, profile_model, write_profile

    lm = tiny_model("gpt2", n_layers=2, hidden=32)
    prof = profile_model(lm, ProfileSpec([2], [8], warmup=0, repeats=1, role="server", name="t"), model="tiny")
    assert set(prof["eval"]) == {"split", "tokenise_row", "first"}
    write_profile(prof, tmp_path / "p.yaml")
    ev = load_latency_profile(str(tmp_path / "p.yaml")).eval
    assert ev.split > 0 and ev.tokenise_row > 0 and ev.first >= 0
    device = profile_model(lm, ProfileSpec([2], [8], warmup=0, repeats=1, role="device", name="t"), model="tiny")
    assert "eval" not in device and "save" not in device
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["eval"]["split"].endswith(" ms")
