"""SplitFrozen's and SplitLoRA's servers set the training mode once an epoch, not before every micro-batch.

Walking every module to reset the modes (``trainer.methods.common.training_mode``) took 0.3-0.5 ms of each server
micro-batch on the tiny GPT-2, in the server loop's gaps that the simulator does not model (tests/test_cenlora_modes.py:
CenLoRA's server already did it once an epoch). Nothing inside an epoch changes the modes; the evaluation between
epochs puts the whole model in eval mode (``lm.model.eval()``: LoRA's input dropout too), so each epoch must still
start with them set. Every training forward of both epochs must run with the pretrained network's dropout off and
exactly LoRA's input dropout on, on the server and on SplitLoRA's clients (their own copies of the client part),
cached epochs included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _wrong(module) -> list[str]:
    """The names of ``module``'s submodules whose mode is not the training mode ('' for the module itself)."""
    return [n for n, sub in module.named_modules() if sub.training != ("lora_dropout" in n.split("."))]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(("method", "fixture", "calls"), [
    ("splitfrozen", "runtime_tiny.yaml", 2),
    ("splitfrozen", "runtime_cached.yaml", 2),  # the second epoch replays the server's activation cache
    ("splitlora", "runtime_tiny.yaml", 2 + 2 * 3),  # the server's once an epoch, and each of 3 clients' at its start
])
def test_modes_set_once_an_epoch_and_right_at_every_forward(tiny_gpt2, tmp_path, monkeypatch, method, fixture, calls):
    """2 epochs in process (32 samples, 8 micro-batches an epoch), evaluated after each: every one of the 16 server
    forwards (and SplitLoRA's 16 client forwards) sees exactly LoRA's dropout modules in training mode."""
    import trainer.methods.splitfrozen as sf
    import trainer.methods.splitlora as sl
    from tests.test_multiserver import _cfg
    from trainer.run.runner import run

    mod = sf if method == "splitfrozen" else sl
    cls = sf.SplitFrozen if method == "splitfrozen" else sl.SplitLoRA
    count, wrong, forwards, training = [0], [], [0], [False]
    real_mode, real_init, real_epoch = mod.training_mode, cls.__init__, cls.server_epoch

    def counted(*modules):
        count[0] += 1
        real_mode(*modules)

    def check(module, args):
        if training[0]:
            forwards[0] += 1
            wrong.append(_wrong(module))

    def init(self, setup):
        real_init(self, setup)
        servers = [srv for _, srv in self.parts.values()] if method == "splitfrozen" else [self.server]
        for srv in servers:
            srv.register_forward_pre_hook(check)

    def epoch(self, e, on_step):
        training[0] = True
        try:
            real_epoch(self, e, on_step)
        finally:
            training[0] = False

    monkeypatch.setattr(mod, "training_mode", counted)
    monkeypatch.setattr(cls, "__init__", init)
    monkeypatch.setattr(cls, "server_epoch", epoch)
    if method == "splitlora":  # each client's own copy of the client part is checked at its forwards too
        real_client = sl.SplitLoRA._client

        def client(self, name):
            fresh = name not in self.clients
            c = real_client(self, name)
            if fresh:
                c.part.register_forward_pre_hook(check)
            return c

        monkeypatch.setattr(sl.SplitLoRA, "_client", client)
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=FIXTURES / fixture, method=method, epochs=2, launch="inprocess",
                 server_order="fifo"))
    assert len(m["train_loss_history"]) == 16
    assert forwards[0] == (32 if method == "splitlora" else 16)
    assert wrong == [[]] * forwards[0]
    assert count[0] == calls
