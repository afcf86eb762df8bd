"""Test-wide settings: never reach a model hub; draw plots without a screen."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread avoids OpenMP spin-waiting on a shared, loaded CPU (10x faster)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A tiny random GPT-2 (4 blocks, width 32) saved as a local HF folder; its path."""
    from trainer.model.loading import tiny_model

    lm = tiny_model("gpt2", n_layers=4, hidden=32, seed=2)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)
