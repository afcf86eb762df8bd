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


@pytest.fixture(scope="session")
def tiny_profiles():
    """Latency profiles of a tiny random GPT-2 (2 blocks, width 32) measured once a session, as ``sfsim profile`` does:
    ``(server, device)``, the server's on a 2 x 2 grid (its ``first_step`` and ``bookkeeping`` included), the
    device's on one shape. Deep-copy before changing them: several tests read them (a measurement is ~15 s)."""
    import torch

    from trainer.model.loading import tiny_model
    from trainer.validate.profile import ProfileSpec, profile_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    lm = tiny_model("gpt2", n_layers=2, hidden=32, seed=2)
    server = profile_model(lm, ProfileSpec([2, 4], [8, 16], warmup=0, repeats=1, role="server"), model="tiny")
    device = profile_model(lm, ProfileSpec([2], [8], warmup=0, repeats=1), model="tiny")
    torch.set_num_threads(before)
    return server, device


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A tiny random GPT-2 (4 blocks, width 32) saved as a local HF folder; its path."""
    from trainer.model.loading import tiny_model

    lm = tiny_model("gpt2", n_layers=4, hidden=32, seed=2)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)
