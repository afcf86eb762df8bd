"""FedLoRA: the whole model with LoRA on every device, local steps, FedAvg of adapters + head per round.

Each round every device that still has data this epoch trains ``local_steps`` micro-batches through
all L blocks (forward and backward), uploads its adapters and head, the server averages them
(weighted by the devices' sample counts) and sends the average back. Devices keep their own AdamW
moments across rounds. In-process all devices share one model: a device's weights are swapped in.
"""

from __future__ import annotations

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
from trainer.runtime import Message, device_kwargs
from trainer.split import split_model


class FedLoRA(Method):
    """The FedLoRA baseline."""

    name = "fedlora"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        s = setup
        inject_lora(s, self.lora_block_indices())
        # cut 0: the "device part" is only the embeddings; in FedLoRA the device runs both parts
        self.emb, self.rest = split_model(s.lm.model, 0, head=s.head, frozen_device=False)
        params = trainable_params(self.rest)
        self.opt = {d.name: adamw(params, s) for d in s.devices}
        self.global_state = get_state(s.lm.model, s.head)

    def train_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """Rounds of local training and FedAvg until every device has used its epoch's data."""
        s = self.setup
        batches = {d.name: d.batches(epoch) for d in s.devices}
        pos = dict.fromkeys(batches, 0)
        while any(pos[n] < len(b) for n, b in batches.items()):
            active = [d for d in s.devices if pos[d.name] < len(batches[d.name])]
            states = []
            for d in active:
                set_state(s.lm.model, s.head, self.global_state)
                for _ in range(s.local_steps):
                    if pos[d.name] >= len(batches[d.name]):
                        break
                    loss, n = self._local_step(d.name, pos[d.name], batches[d.name][pos[d.name]])
                    pos[d.name] += 1
                    on_step(loss, n)
                s.transport.send_up(Message(d.name, -1, get_state(s.lm.model, s.head)))
                states.append(s.transport.recv_up(d.name).tensors)
            with s.meter.compute(s.server, "aggregate", "server_aggregate", count=False):
                self.global_state = fedavg(states, [d.n_samples for d in active])
            for d in s.devices:  # every device receives the new global adapters
                s.transport.send_down(Message(d.name, -1, self.global_state))
                s.transport.recv_down(d.name)
        set_state(s.lm.model, s.head, self.global_state)

    def _local_step(self, name: str, j: int, batch) -> tuple[float, int]:
        s, meter = self.setup, self.setup.meter
        self.rest.train()
        key = tuple(batch["input_ids"].shape)
        with meter.compute(name, "F", "device_forward", mb=j, device=name, key=key):
            out = self.rest(self.emb(batch["input_ids"], batch["attention_mask"], **device_kwargs(batch)), batch["attention_mask"])
            loss = task_loss(out, batch["labels"], s.is_lm)
        with meter.compute(name, "BW", "device_backward", mb=j, device=name, key=key):
            loss.backward()
        with meter.compute(name, "step", "device_step", mb=j, device=name, count=False):
            self.opt[name].step()
            self.opt[name].zero_grad(set_to_none=True)
        self.record(name, batch["labels"])
        return loss.item(), int(batch["labels"].shape[0])

    def eval_cut(self) -> int:
        """FedLoRA evaluates the whole model (cut 0)."""
        return 0
