"""SplitLoRA (Lin et al., arXiv 2407.00952): LoRA on both sides, cut-layer gradient back to the client.

Each client holds its own LoRA adapters on blocks 0..k-1 (k: the run's cut, the same for every client);
the server holds one shared model (LoRA on blocks k..L-1 + head) updated sequentially per client
micro-batch. Per micro-batch: client forward -> activations up -> server forward, B, cut-layer gradient
down, W, server step -> client backward and client step. Every ``fedavg_every`` server steps the
clients' adapters are averaged (weighted by samples): adapters up, the average down.

In-process all clients share the model's client-side modules: a client's adapters and optimizer state
are swapped in before its work and out after it.
"""

from __future__ import annotations

import torch

from trainer.backward import DeferredGrads
from trainer.lora import fedavg
from trainer.methods.common import (
    Method,
    Setup,
    StepCallback,
    adamw,
    get_state,
    inject_lora,
    set_state,
    task_loss,
    trainable_params,
)
from trainer.runtime import Message, device_kwargs, server_order
from trainer.split import split_model


class SplitLoRA(Method):
    """The SplitLoRA baseline (clients in the pacing order of ``setup.server_order``)."""

    name = "splitlora"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        s = setup
        self.cut = max(s.cuts.values())
        inject_lora(s, self.lora_block_indices())
        self.client, self.server = split_model(s.lm.model, self.cut, head=s.head, frozen_device=False)
        self.client_blocks = set(range(self.cut))
        init = get_state(s.lm.model, None, self.client_blocks)
        self.client_state = {d.name: {k: v.clone() for k, v in init.items()} for d in s.devices}
        client_params = trainable_params(self.client)
        # one optimizer per client over the shared parameter objects: each keeps its own Adam moments
        self.client_opt = {d.name: adamw(client_params, s) for d in s.devices}
        self.deferred = DeferredGrads(self.server, enabled=s.decompose_backward)
        self.server_opt = adamw(trainable_params(self.server), s)
        self.steps = 0

    def train_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """One epoch: every client micro-batch once, in the pacing order."""
        s = self.setup
        batches = {d.name: d.batches(epoch) for d in s.devices}
        order = server_order({n: len(b) for n, b in batches.items()}, s.server_order, s.periods)
        nxt = dict.fromkeys(batches, 0)
        for name in order:
            j = nxt[name]
            nxt[name] += 1
            loss, n = self._micro_batch(name, j, batches[name][j])
            on_step(loss, n)
            self.steps += 1
            if self.steps % s.fedavg_every == 0:
                self._fedavg()

    def _micro_batch(self, name: str, j: int, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        s, meter, tr = self.setup, self.setup.meter, self.setup.transport
        set_state(s.lm.model, None, self.client_state[name])
        self.client.train()
        self.server.train()
        key = tuple(batch["input_ids"].shape)
        with meter.compute(name, "F", "device_forward", mb=j, device=name, key=key):
            hidden = self.client(batch["input_ids"], batch["attention_mask"], **device_kwargs(batch))  # (B, T, d)
        tr.send_up(Message(name, j, {"hidden": hidden, "attention_mask": batch["attention_mask"],
                                     "labels": batch["labels"]}))
        t = tr.recv_up(name).tensors
        h = t["hidden"].requires_grad_(True)
        with meter.compute(s.server, "F", "server_forward", mb=j, device=name, key=key):
            loss = task_loss(self.server(h, t["attention_mask"]), t["labels"], s.is_lm)
        op = "B" if s.decompose_backward else "BW"
        with meter.compute(s.server, op, f"server_{op}", mb=j, device=name, key=key):
            loss.backward()
        tr.send_down(Message(name, j, {"grad": h.grad}))  # cut-layer gradient, before W (shorter wait)
        if s.decompose_backward:
            with meter.compute(s.server, "W", "server_W", mb=j, device=name, key=self.deferred.signature()):
                self.deferred.flush()
        with meter.compute(s.server, "step", "server_step", mb=j, device=name, count=False):
            self.server_opt.step()
            self.server_opt.zero_grad(set_to_none=True)
        grad = tr.recv_down(name).tensors["grad"]
        opt = self.client_opt[name]
        with meter.compute(name, "BW", "device_backward", mb=j, device=name, key=key):
            hidden.backward(grad)
        with meter.compute(name, "step", "device_step", mb=j, device=name, count=False):
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.client_state[name] = get_state(s.lm.model, None, self.client_blocks)
        self.record(name, t["labels"])
        return loss.item(), int(t["labels"].shape[0])

    def _fedavg(self) -> None:
        """Average the clients' adapters (weighted by samples); adapters cross both links."""
        s, tr = self.setup, self.setup.transport
        names = [d.name for d in s.devices]
        for n in names:
            tr.send_up(Message(n, -1, self.client_state[n]))
        states = [tr.recv_up(n).tensors for n in names]
        with s.meter.compute(s.server, "aggregate", "server_aggregate", count=False):
            avg = fedavg(states, [d.n_samples for d in s.devices])
        for n in names:
            tr.send_down(Message(n, -1, avg))
            self.client_state[n] = tr.recv_down(n).tensors

    def finish_epoch(self) -> None:
        """Average the clients once more and load the result: the global model for eval and checkpoints."""
        self._fedavg()
        set_state(self.setup.lm.model, None, self.client_state[self.setup.devices[0].name])

    def eval_cut(self) -> int:
        """The SplitLoRA cut."""
        return self.cut
