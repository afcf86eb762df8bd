"""SplitLoRA (Lin et al., arXiv 2407.00952): LoRA on both sides, cut-layer gradient back to the client.

Each client holds its own LoRA adapters on blocks 0..k-1 (k: the run's cut, the same for every client)
and its own optimizer; the server holds one shared model (LoRA on blocks k..L-1 + head) updated once
per client micro-batch. Per micro-batch: client forward -> activations up -> server forward, B,
cut-layer gradient down, W, server step -> client backward and client step. Every ``fedavg_every``
server steps (and at the end of each epoch) the clients' adapters are averaged (weighted by
samples): adapters up, the average down.

The server drives the clients with commands: ``fwd`` (compute micro-batch ``mb`` and send it),
``grad`` (the cut-layer gradient: backward and step), ``sync`` (send your adapters for a FedAvg
round) and ``adapter`` (load the average). Between two FedAvg rounds (a *segment*) the server asks a
client for its next micro-batch as soon as it has sent the gradient of the previous one, so clients
compute while the server serves the others. With a deterministic server order a segment is the next
``fedavg_every`` slots of the order, which makes a distributed run step for step equal to an
in-process one; with ``fifo`` over a real transport it is the next ``fedavg_every`` arrivals.
"""

from __future__ import annotations

import copy

import torch

from trainer.backward import DeferredGrads
from trainer.lora import fedavg
from trainer.methods.common import (
    Method,
    Setup,
    StepCallback,
    adamw,
    block_of,
    inject_lora,
    set_state,
    task_loss,
    trainable_params,
)
from trainer.runtime import DeviceRole, Message, PeerLost, device_kwargs, server_order, wire_mask
from trainer.split import split_model
from trainer.wire import pack_state, unpack_state


class _Client:
    """One client's own copy of the device part, its LoRA parameters (by model name) and optimizer."""

    def __init__(self, part: torch.nn.Module, names: dict[int, str], setup: Setup):
        self.part = copy.deepcopy(part)
        self.params = {names[id(p)]: q for p, q in zip(part.parameters(), self.part.parameters(), strict=True)
                       if id(p) in names}
        self.opt = adamw([p for p in self.params.values() if p.requires_grad], setup)
        self.batches: list = []
        self.epoch = 0
        self.pending: tuple[int, torch.Tensor, tuple] | None = None  # (mb, hidden with graph, key)

    def state(self) -> dict[str, torch.Tensor]:
        """Copies of the client's LoRA weights, keyed by the model's parameter names."""
        return {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def load(self, sd: dict[str, torch.Tensor]) -> None:
        """Set the client's LoRA weights."""
        for k, v in sd.items():
            self.params[k].copy_(v)


class SplitLoRA(Method):
    """The SplitLoRA baseline (clients in the pacing order of ``setup.server_order``)."""

    name = "splitlora"
    resumable = True
    device_stateful = True  # each client keeps its adapters and optimizer

    def __init__(self, setup: Setup):
        super().__init__(setup)
        s = setup
        self.cut = max(s.cuts.values())
        inject_lora(s, self.lora_block_indices())
        self.client_part, self.server = split_model(s.lm.model, self.cut, head=s.head, frozen_device=False)
        self.client_blocks = set(range(self.cut))
        # model parameter name of every client-side LoRA parameter (what FedAvg and checkpoints use)
        self.names = {id(p): n for n, p in s.lm.model.named_parameters()
                      if p.requires_grad and block_of(n) in self.client_blocks}
        self.keys = sorted(self.names.values())
        self.like = {n: p.detach().clone() for n, p in s.lm.model.named_parameters() if n in set(self.keys)}
        self.clients: dict[str, _Client] = {}  # device side: one per device this process plays
        self.deferred = DeferredGrads(self.server, enabled=s.decompose_backward)
        self.server_opt = adamw(trainable_params(self.server), s)
        self.steps = 0
        self.rounds = 0
        self.global_client: dict[str, torch.Tensor] | None = None

    # -- device side --------------------------------------------------------------------------------
    def _client(self, name: str) -> _Client:
        if name not in self.clients:
            self.clients[name] = _Client(self.client_part, self.names, self.setup)
        return self.clients[name]

    def device_handle(self, role: DeviceRole, msg: Message) -> None:
        """Run the server's command on this client."""
        s, meter, c = self.setup, self.setup.meter, self._client(role.name)
        if msg.kind == "start":
            c.batches, c.epoch = role.batches(msg.epoch), msg.epoch
        elif msg.kind == "fwd":
            batch = c.batches[msg.mb]
            c.part.train()
            key = tuple(batch["input_ids"].shape)
            with meter.compute(role.name, "F", "device_forward", mb=msg.mb, device=role.name, key=key):
                hidden = c.part(batch["input_ids"], batch["attention_mask"], **device_kwargs(batch))  # (B, T, d)
            c.pending = (msg.mb, hidden, key)
            s.transport.send_up(Message(role.name, msg.mb, {"hidden": hidden, "attention_mask": wire_mask(batch["attention_mask"]),
                                                            "labels": batch["labels"]}, epoch=c.epoch))
        elif msg.kind == "grad":
            j, hidden, key = c.pending
            with meter.compute(role.name, "BW", "device_backward", mb=j, device=role.name, key=key):
                hidden.backward(msg.tensors["grad"])
            with meter.compute(role.name, "step", "device_step", mb=j, device=role.name, count=False):
                c.opt.step()
                c.opt.zero_grad(set_to_none=True)
            c.pending = None
        elif msg.kind == "sync":
            s.transport.send_up(Message(role.name, -1, {"state": pack_state(c.state(), self.keys)}, kind="adapter",
                                        aux=msg.aux, epoch=c.epoch))
        elif msg.kind == "adapter":
            c.load(unpack_state(msg.tensors["state"], self.like, self.keys))

    # -- server side --------------------------------------------------------------------------------
    def server_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """Every client micro-batch once, in segments between FedAvg rounds; FedAvg at the end."""
        s, tr = self.setup, self.setup.transport
        counts = self.batch_counts()
        done = self.resume_cursor(epoch)
        for n in self.live():
            tr.send_down(Message(n, -1, kind="start", epoch=epoch))
        arrival = s.server_order == "fifo" and tr.arrival_order
        order = None
        if not arrival:
            skip, order = dict(done), []
            for n in server_order(counts, s.server_order, s.periods):  # minus what a checkpoint already trained
                if skip.get(n, 0) > 0:
                    skip[n] -= 1
                else:
                    order.append(n)
        left = {n: counts[n] - done.get(n, 0) for n in self.live() if counts[n] > done.get(n, 0)}
        nxt = {n: done.get(n, 0) for n in left}
        while sum(left.values()) > 0:
            quota = s.fedavg_every - self.steps % s.fedavg_every
            if order is not None:
                order = [n for n in order if n in left]
                seg, order = order[:quota], order[quota:]
                self._segment(epoch, seg, len(seg), left, nxt, on_step)
            else:
                self._segment(epoch, None, quota, left, nxt, on_step)
            if self.steps % s.fedavg_every == 0 and sum(left.values()) > 0:
                self._fedavg(epoch)
                self.step_done(epoch)  # between segments no client has work in flight: a checkpoint point
        self._fedavg(epoch)

    def _segment(self, epoch: int, seg: list[str] | None, quota: int, left: dict[str, int], nxt: dict[str, int],
                 on_step: StepCallback) -> None:
        """Serve ``quota`` micro-batches: the slots of ``seg`` in order, or (``None``) arrivals."""
        tr = self.setup.transport
        todo = dict.fromkeys(left, 0)  # micro-batches each client still owes in this segment
        if seg is not None:
            for n in seg:
                todo[n] += 1
        busy: set[str] = set()  # clients with a fwd outstanding
        issued = 0

        def issue(n: str) -> None:
            nonlocal issued
            tr.send_down(Message(n, nxt[n], kind="fwd", epoch=epoch))
            nxt[n] += 1
            busy.add(n)
            issued += 1

        def may_issue(n: str) -> bool:
            if n not in left or n in busy or nxt[n] >= self._count(n):
                return False
            return todo[n] > 0 if seg is not None else issued < quota

        for n in list(left):
            if may_issue(n):
                issue(n)
        served = 0
        slots = iter(seg) if seg is not None else None
        while served < quota and busy:
            want = None
            if slots is not None:
                want = next((n for n in slots if n in left), None)
                if want is None:
                    break
            try:
                msg = tr.recv_up(want, {"act"})
            except PeerLost as err:
                busy.discard(err.device)
                self.lose(err.device, err.reason, left)
                continue
            n = msg.device
            busy.discard(n)
            loss, k = self._serve(msg, epoch)
            served += 1
            left[n] -= 1
            todo[n] -= 1
            self.advance(n)
            self.steps += 1
            on_step(loss, k)
            if left[n] == 0:
                del left[n]
            for m in [n] + [m for m in left if m != n]:
                if may_issue(m):
                    issue(m)

    def _count(self, name: str) -> int:
        return self.batch_counts()[name]

    def _serve(self, msg: Message, epoch: int) -> tuple[float, int]:
        """Server F and B, the cut-layer gradient down, then W and the server step."""
        s, meter, tr = self.setup, self.setup.meter, self.setup.transport
        t, name, j = msg.tensors, msg.device, msg.mb
        self.server.train()
        h = t["hidden"].requires_grad_(True)
        key = tuple(t["hidden"].shape[:2])
        with meter.compute(s.server, "F", "server_forward", mb=j, device=name, key=key):
            loss = task_loss(self.server(h, t["attention_mask"].long()), t["labels"], s.is_lm)
        op = "B" if s.decompose_backward else "BW"
        with meter.compute(s.server, op, f"server_{op}", mb=j, device=name, key=key):
            loss.backward()
        tr.send_down(Message(name, j, {"grad": h.grad}, kind="grad", epoch=epoch))  # before W: shorter wait
        if s.decompose_backward:
            with meter.compute(s.server, "W", "server_W", mb=j, device=name, key=self.deferred.signature()):
                self.deferred.flush()
        with meter.compute(s.server, "step", "server_step", mb=j, device=name, count=False):
            self.server_opt.step()
            self.server_opt.zero_grad(set_to_none=True)
        self.record(name, t["labels"])
        return loss.item(), int(t["labels"].shape[0])

    def _fedavg(self, epoch: int) -> None:
        """Average the live clients' adapters (weighted by samples); adapters cross both links."""
        s, tr = self.setup, self.setup.transport
        self.rounds += 1
        names = self.live()
        for n in names:
            tr.send_down(Message(n, -1, kind="sync", aux=self.rounds, epoch=epoch))
        states, weights = [], []
        for n in names:
            try:
                msg = tr.recv_up(n, {"adapter"})
            except PeerLost as err:
                self.lose(err.device, err.reason)
                continue
            states.append(unpack_state(msg.tensors["state"], self.like, self.keys))
            weights.append(s.samples[n])
        if not states:
            return
        with s.meter.compute(s.server, "aggregate", "server_aggregate", count=False):
            avg = fedavg(states, weights)
        self.global_client = avg
        flat = pack_state(avg, self.keys)
        for n in self.live():
            tr.send_down(Message(n, -1, {"state": flat}, kind="adapter", aux=self.rounds, epoch=epoch))

    def finish_epoch(self) -> None:
        """Load the last average into the server's model: the global model for eval and checkpoints."""
        if self.global_client is not None:
            set_state(self.setup.lm.model, None, self.global_client)

    def optimizers(self) -> dict:
        """The server's optimizer."""
        return {"server": self.server_opt}

    def device_state(self, role: DeviceRole) -> tuple[dict, dict]:
        """A client's adapters and optimizer."""
        c = self._client(role.name)
        return c.params, {"client": c.opt}

    def server_extra(self) -> tuple[dict, dict]:
        """The last client average and the step and round counters."""
        return dict(self.global_client or {}), {"steps": self.steps, "rounds": self.rounds}

    def load_server_extra(self, tensors: dict, meta: dict) -> None:
        """Inverse of :meth:`server_extra`."""
        self.global_client = {k: v.clone() for k, v in tensors.items()} or None
        self.steps, self.rounds = meta["steps"], meta["rounds"]

    def eval_cut(self) -> int:
        """The SplitLoRA cut."""
        return self.cut
