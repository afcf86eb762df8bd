"""CenLoRA's server sets the training mode once an epoch, not before every micro-batch.

All of CenLoRA's work is the server's, so whatever its loop does between two ops lies on the critical path that
``sfsim validate`` compares with the simulator's: walking every module to reset the modes took 0.6-0.9 ms a
micro-batch on the tiny GPT-2 (most of the ~0.85 ms gaps after each step in ``epochs2-cenlora``'s trace, which the
simulator has no reason to model). Nothing inside an epoch changes the modes; evaluation between epochs does, so
each epoch must still start with them set: every forward of both epochs runs with the pretrained network's dropout
off and only LoRA's input dropout on (``trainer.methods.common.training_mode``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "runtime_tiny.yaml"


@pytest.mark.usefixtures("one_torch_thread")
def test_modes_set_once_an_epoch_and_right_at_every_forward(tiny_gpt2, tmp_path, monkeypatch):
    """2 epochs in process (32 samples, 8 micro-batches an epoch): ``training_mode`` runs twice, and each of the 16
    training forwards sees exactly LoRA's dropout modules in training mode (epoch 2 after the evaluation's eval())."""
    import trainer.methods.cenlora as cen
    from tests.test_multiserver import _cfg
    from trainer.run.runner import run

    calls, wrong, training = [], [], [False]
    real_mode, real_init, real_epoch = cen.training_mode, cen.CenLoRA.__init__, cen.CenLoRA.server_epoch

    def counted(*modules):
        calls.append(len(modules))
        real_mode(*modules)

    def init(self, setup):
        real_init(self, setup)

        def check(module, args):  # the names whose mode is wrong at this forward ('' for the part itself)
            if training[0]:
                wrong.append([n for n, sub in module.named_modules()
                              if sub.training != ("lora_dropout" in n.split("."))])

        self.rest.register_forward_pre_hook(check)

    def epoch(self, e, on_step):
        training[0] = True
        try:
            real_epoch(self, e, on_step)
        finally:
            training[0] = False

    monkeypatch.setattr(cen, "training_mode", counted)
    monkeypatch.setattr(cen.CenLoRA, "__init__", init)
    monkeypatch.setattr(cen.CenLoRA, "server_epoch", epoch)
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=FIXTURE, method="cenlora", epochs=2, launch="inprocess",
                 server_order="fifo"))
    assert len(m["train_loss_history"]) == 16
    assert wrong == [[]] * 16
    assert calls == [2, 2]  # once an epoch, for (embeddings, the rest)
