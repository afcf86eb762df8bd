"""SplitFrozen: frozen device prefixes forward only; one server LoRA model trains on the paced stream.

Device i runs embeddings + blocks 0..k_i-1 under ``torch.inference_mode`` and sends (hidden, mask,
labels); the server runs blocks k_i..lora_start-1 frozen, blocks lora_start..L-1 with LoRA, and the
head. The server takes micro-batches in the order of a pacing policy (``server_order``); its backward
is split into B (now) and W (deferred until the optimizer step, see ``trainer.backward``). Nothing
is sent back to the devices.
"""

from __future__ import annotations

from trainer.backward import DeferredGrads
from trainer.methods.common import (
    Method,
    Setup,
    StepCallback,
    adamw,
    inject_lora,
    task_loss,
    trainable_params,
)
from trainer.runtime import server_order
from trainer.split import split_model


class SplitFrozen(Method):
    """The SplitFrozen method (``decompose_backward=False`` gives the fused-BW ablation)."""

    name = "splitfrozen"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        s = setup
        inject_lora(s, self.lora_block_indices())
        # one (device part, server part) per distinct cut; all share the model's modules and the head
        self.parts = {k: split_model(s.lm.model, k, head=s.head, frozen_device=True)
                      for k in sorted(set(s.cuts.values()))}
        for d in s.devices:
            d.part = self.parts[s.cuts[d.name]][0]
        widest = self.parts[min(self.parts)][1]  # holds every server block and the head
        self.deferred = DeferredGrads(widest, enabled=s.decompose_backward)
        self.opt = adamw(trainable_params(widest), s)

    def lora_block_indices(self) -> list[int]:
        """Blocks lora_start..L-1."""
        return list(range(self.setup.lora_start, self.setup.lm.n_layers))

    def train_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """Devices stream activations; the server trains on them in the pacing order."""
        s, meter = self.setup, self.setup.meter
        batches = {d.name: d.batches(epoch) for d in s.devices}
        roles = {d.name: d for d in s.devices}
        order = server_order({n: len(b) for n, b in batches.items()}, s.server_order, s.periods)
        nxt = dict.fromkeys(batches, 0)
        losses, samples = [], 0
        for i, name in enumerate(order):
            j = nxt[name]
            nxt[name] += 1
            # in-process the device produces micro-batch j just before the server needs it
            s.transport.send_up(roles[name].forward_frozen(batches[name][j], j, meter))
            msg = s.transport.recv_up(name)
            t = msg.tensors
            _, server = self.parts[s.cuts[name]]
            server.train()
            key = (s.cuts[name], *t["hidden"].shape)
            with meter.compute(s.server, "F", "server_forward", mb=j, device=name, key=key):
                loss = task_loss(server(t["hidden"], t["attention_mask"]), t["labels"], s.is_lm)
            op = "B" if s.decompose_backward else "BW"
            with meter.compute(s.server, op, f"server_{op}", mb=j, device=name, key=key):
                (loss / s.accumulate).backward()
            self.record(name, t["labels"])
            losses.append(loss.item())
            samples += t["labels"].shape[0]
            if (i + 1) % s.accumulate == 0 or i == len(order) - 1:
                self._step()
                on_step(sum(losses) / len(losses), samples)
                losses, samples = [], 0

    def _step(self) -> None:
        s, meter = self.setup, self.setup.meter
        if s.decompose_backward:
            with meter.compute(s.server, "W", "server_W", key=self.deferred.signature()):
                self.deferred.flush()  # W of every micro-batch since the last step, right before it
        with meter.compute(s.server, "step", "server_step", count=False):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)


class SplitFrozenSequential(SplitFrozen):
    """SplitFrozen without the B/W split (fused backward): the ablation ``splitfrozen-sequential``."""

    name = "splitfrozen-sequential"

    def __init__(self, setup: Setup):
        setup.decompose_backward = False
        super().__init__(setup)
