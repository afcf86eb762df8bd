"""CenLoRA: all data at the server, LoRA on every block, one shuffled stream: the accuracy ceiling.

The devices upload their raw samples once (token ids, mask, labels: counted on their uplinks) and
compute nothing; the server trains on the union of the shards, shuffled every epoch. The shards are the data
the method's model places at the server before training (the simulator's ``sfsim.schedules.cenlora``: no device
links), so the emulated links do not shape them (``trainer.transport.distributed``).
"""

from __future__ import annotations

import torch

from trainer.data.tasks import micro_batches
from trainer.methods.common import (
    Method,
    ServerMath,
    Setup,
    StepCallback,
    adamw,
    from_wire,
    inject_lora,
    task_loss,
    trainable_params,
    training_mode,
)
from trainer.model.split import split_model
from trainer.transport.runtime import DeviceRole, Message, PeerLost, device_kwargs, trim


def _pad_cat(parts: list[torch.Tensor], value: int, left: bool) -> torch.Tensor:
    """Concatenate (N_i,) or (N_i, T_i) tensors along rows, padding 2-D ones to the longest T."""
    if parts[0].dim() == 1:
        return torch.cat(parts)
    T = max(p.shape[1] for p in parts)
    padded = [torch.nn.functional.pad(p, (T - p.shape[1], 0) if left else (0, T - p.shape[1]), value=value)
              for p in parts]
    return torch.cat(padded)  # (sum N_i, T)


class CenLoRA(Method):
    """The centralised LoRA baseline."""

    name = "cenlora"
    resumable = True

    def __init__(self, setup: Setup):
        super().__init__(setup)
        s = setup
        inject_lora(s, self.lora_block_indices())
        # the whole model trains at the server: on --server-device (a copy off the CPU; Method.place_server)
        self.emb, self.rest = self.place_server(*split_model(s.lm.model, 0, head=s.head, frozen_device=False))
        self.math = ServerMath(s.placement)  # autocast / grad scaler (no-ops in the default fp32)
        self.opt = adamw(trainable_params(self.rest), s)
        self.data: dict[str, torch.Tensor] | None = None
        self.owner: list[str] = []
        self.uploaded: set[str] = set()  # device side: the devices of this process whose shard has gone up

    def lora_block_indices(self) -> list[int]:
        """Every block from ``--lora-start`` (default 0) on."""
        return list(range(self.setup.lora_start, self.setup.lm.n_layers))

    def hello(self, role: DeviceRole, checkpoint: int) -> None:
        """A distributed device's hello, then its shard at once: the data the method places at the server before
        training. Sent on the server's ``start`` instead, the shard's round trip (``start`` down, the shard up) lay
        before the first forward: 5 ms at load 5 in ``sfsim validate``'s trace, which the simulator (data at the
        server at 0) rightly does not have. The server reads it when its first epoch opens (:meth:`_gather`)."""
        super().hello(role, checkpoint)
        self._upload(role, 0)

    def device_handle(self, role: DeviceRole, msg: Message) -> None:
        """``start``: upload the raw shard, unless it went with the hello (once)."""
        if msg.kind == "start":
            self._upload(role, msg.epoch)

    def _upload(self, role: DeviceRole, epoch: int) -> None:
        if role.name not in self.uploaded:
            self.uploaded.add(role.name)
            self.setup.transport.send_up(Message(role.name, -1, dict(role.shard), kind="shard", epoch=epoch))

    def _gather(self) -> None:
        """Devices upload their shards once (a distributed device with its hello, else on ``start``); the server
        concatenates them."""
        s, shards = self.setup, []
        for n in self.live():
            s.transport.send_down(Message(n, -1, kind="start"))
        for n in self.live():
            try:
                shards.append(s.transport.recv_up(n, {"shard"}).tensors)
            except PeerLost as err:
                self.lose(err.device, err.reason)
                continue
            self.owner += [n] * int(shards[-1]["input_ids"].shape[0])
        if not shards:  # a server without devices (several servers): nothing to train here
            self.data = {}
            return
        left = getattr(s.lm.tokenizer, "padding_side", "right") == "left"
        pad = {"input_ids": s.lm.tokenizer.pad_token_id or 0, "labels": -100}
        self.data = {k: _pad_cat([sh[k] for sh in shards], pad.get(k, 0), left) for k in shards[0]}

    def server_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """One shuffled pass over the union; an optimizer step every ``accumulate`` micro-batches."""
        s, meter = self.setup, self.setup.meter
        if self.data is None:
            self._gather()
        done = self.resume_cursor(epoch).get("server", 0)
        if not self.data:
            return
        n = self.data["input_ids"].shape[0]
        gen = torch.Generator().manual_seed(s.seed * 1000003 + epoch)
        perm = torch.randperm(n, generator=gen)
        starts = micro_batches(perm, s.micro_batch, self.data["attention_mask"].sum(1), s.bucket, gen)
        losses, samples = [], 0
        # once an epoch, not per micro-batch: nothing in the epoch changes the modes (evaluation, between epochs,
        # does), and walking every module took 0.6-0.9 ms a micro-batch on sfsim validate's tiny GPT-2: most of
        # the gaps between the server's ops in its trace, on the critical path here (all the work is the server's)
        training_mode(self.emb, self.rest)
        for i, idx in enumerate(starts):
            if i < done:
                continue
            b = from_wire(trim({k: v[idx] for k, v in self.data.items()}), s.placement.server)
            with meter.compute(s.server, "F", "server_forward", mb=i, key=tuple(b["input_ids"].shape)):
                with self.math.autocast():
                    loss = task_loss(self.rest(self.emb(b["input_ids"], b["attention_mask"], **device_kwargs(b)),
                                               b["attention_mask"]), b["labels"], s.is_lm)
                self.math.sync()
            with meter.compute(s.server, "BW", "server_BW", mb=i, key=tuple(b["input_ids"].shape)):
                self.math.backward(loss / s.accumulate)
                self.math.sync()
            self.record(self.owner[int(idx[0])], b["labels"])
            losses.append(loss.item())
            samples += len(idx)
            if (i + 1) % s.accumulate == 0 or i == len(starts) - 1:
                self.optimizer_step(self.opt, last=i == len(starts) - 1)
                on_step(sum(losses) / len(losses), samples)
                losses, samples = [], 0
                self.cursor["server"] = i + 1
                self.step_done(epoch)

    def optimizers(self) -> dict:
        """The server's optimizer."""
        return {"server": self.opt}

    def eval_cut(self) -> int:
        """CenLoRA evaluates the whole model (cut 0)."""
        return 0
