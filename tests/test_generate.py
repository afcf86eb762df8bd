"""Greedy decoding with a KV cache through split models: the same tokens as without it and as HF generate."""

from __future__ import annotations

import pytest
import torch

from trainer import split_model, tiny_model
from trainer.methods import generate as gen

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _prompts(seed: int):
    """Three left-padded prompts of 7, 4 and 2 tokens: ids (3, 7), mask (3, 7)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :5] = 0
    return ids * mask, mask


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("cut", [0, 1, 2])
def test_cached_decoding_equals_the_uncached_reference(family, cut):
    lm = tiny_model(family, n_layers=3, hidden=32, seed=5)
    ids, mask = _prompts(1)
    dev, srv = split_model(lm.model, cut, frozen_device=cut != 0)
    cached = gen.greedy_generate(dev, srv, ids, mask, max_new_tokens=12, eos_id=None)
    full = gen.greedy_generate(dev, srv, ids, mask, max_new_tokens=12, eos_id=None, use_cache=False)
    assert cached == full and [len(r) for r in cached] == [12, 12, 12]


def test_cached_decoding_equals_hf_generate_and_stops_at_eos():
    lm = tiny_model("llama", n_layers=3, hidden=32, seed=4)
    ids = torch.randint(5, 60, (1, 6))
    mask = torch.ones_like(ids)
    dev, srv = split_model(lm.model, 1, frozen_device=False)
    ours = gen.greedy_generate(dev, srv, ids, mask, max_new_tokens=8, eos_id=None)
    ref = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                            min_new_tokens=8, eos_token_id=None, pad_token_id=0)
    assert ours == [ref[0, 6:].tolist()]
    stop = ours[0][3]  # the 4th generated token as EOS: decoding ends before it
    first = ours[0].index(stop)
    assert gen.greedy_generate(dev, srv, ids, mask, max_new_tokens=8, eos_id=stop) == [ours[0][:first]]


def test_exact_match_scores_rows_in_their_own_order():
    class _Tok:  # decodes ids to their numbers: the "final number" is the last generated id
        eos_token_id = None

        @staticmethod
        def decode(toks, skip_special_tokens=True):
            return " ".join(str(t) for t in toks)

    lm = tiny_model("llama", n_layers=2, hidden=32, seed=6)
    ids, mask = _prompts(2)
    dev, srv = split_model(lm.model, 1, frozen_device=False)
    want = [str(r[-1]) for r in gen.greedy_generate(dev, srv, ids, mask, max_new_tokens=3, eos_id=None)]
    prompts = {"input_ids": ids, "attention_mask": mask}
    assert gen.exact_match(dev, srv, prompts, want, _Tok(), max_new_tokens=3, batch_size=2) == 1.0
    assert gen.exact_match(dev, srv, prompts, [want[0], "x", want[2]], _Tok(), max_new_tokens=3) == pytest.approx(2 / 3)
