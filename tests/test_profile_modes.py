"""The profile times the server's blocks in the mode the trainer trains them: the network's own dropout off,
only LoRA's input dropout on (``trainer.methods.common.training_mode``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.model.loading import tiny_model
from trainer.validate.profile import ProfileSpec, _Parts


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_profiled_server_blocks_run_without_the_networks_dropout(family):
    lm = tiny_model(family, n_layers=2, hidden=32)
    for m in lm.model.modules():  # give every dropout of the network a rate, so that a train-mode one would act
        if isinstance(m, nn.Dropout):
            m.p = 0.5
    for name in ("attention_probs_dropout_prob", "hidden_dropout_prob", "attn_pdrop", "resid_pdrop",
                 "attention_dropout"):
        if hasattr(lm.model.config, name):
            setattr(lm.model.config, name, 0.5)
    parts = _Parts(lm, ProfileSpec([2], [8], warmup=0, repeats=1, role="server", name="t"), torch.device("cpu"))
    modes = {n: m.training for n, m in parts.tsrv.named_modules() if isinstance(m, nn.Dropout)}
    assert not any(on for n, on in modes.items() if "lora_dropout" not in n)
    assert modes or family == "llama"  # Llama's attention dropout is functional: the check below covers it
    x = torch.randn(2, 8, lm.hidden)  # (B, T, d)
    ctx = parts.tsrv.body.context(x, torch.ones(2, 8, dtype=torch.long))
    block = parts.blocks_t[0]
    kw = parts.tsrv.body.kwargs(ctx, 0)
    with torch.no_grad():
        assert torch.equal(block(x, **kw), block(x, **kw))  # deterministic: no dropout drew a mask


def test_grid_shapes_take_their_timed_rounds_in_turns(monkeypatch):
    """Warm-up and the first timed round per shape, then the shapes' other rounds round-robin."""
    from trainer.validate import profile as prof

    order = []
    real = prof._round

    def spy(parts, clock, ids, *rest):
        order.append((tuple(ids.shape), clock.on))
        return real(parts, clock, ids, *rest)
    monkeypatch.setattr(prof, "_round", spy)
    lm = tiny_model("bert", n_layers=2, hidden=32)
    out = prof.profile_model(lm, ProfileSpec([2], [4, 8], warmup=1, repeats=3, name="t"), model="tiny")
    a, b = (2, 4), (2, 8)
    assert order == [(a, False), (a, True), (b, False), (b, True), (a, True), (b, True), (a, True), (b, True)]
    assert [(e["micro_batch"], e["seq_len"]) for e in out["grid"]] == [a, b] and out["grid"][0]["peak_memory"]
