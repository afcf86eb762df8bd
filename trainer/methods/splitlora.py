"""SplitLoRA (Lin et al., arXiv 2407.00952): LoRA on both sides, cut-layer gradient back to the client.

Each client holds its own LoRA adapters on blocks 0..k-1 (k: the run's cut, the same for every client)
and its own optimizer; the server holds one shared model (LoRA on blocks k..L-1 + head). Per
micro-batch: client forward -> activations up -> server forward, B, cut-layer gradient down, W ->
client backward. Optimizer steps honour ``accumulate`` (A) as every method does: the server steps
after every A micro-batches it trains on, a client after every A of its own backward passes, so a
step covers A x micro_batch samples on both sides (A = 1: a step per client batch, as the reference
code); both step on what they hold at a FedAvg round and at the end of the epoch.

Client orders (``setup.client_order``, :data:`sfsim.methods.CLIENT_ORDERS`):

* ``interleaved`` (default; SplitLoRA's reference code): the clients' micro-batches are mixed in the
  server order (``setup.server_order``: proportional, round-robin, or fifo arrivals); every
  ``fedavg_every`` server steps (and at the end of each epoch) the clients' adapters are averaged
  (weighted by samples): adapters up, the average down.
* ``sequential`` (classic split learning): one client after another (scenario order) trains on its
  whole epoch while the others wait; the next client starts from the adapters the previous one ended
  with (up to the server, down to the next client); no FedAvg. The server's stream is then one
  client's data at a time, which under label skew is one class at a time.

The server drives the clients with commands: ``fwd`` (compute micro-batch ``mb`` and send it),
``grad`` (the cut-layer gradient: backward and step), ``sync`` (send your adapters for a FedAvg
round) and ``adapter`` (load the average). Between two FedAvg rounds (a *segment*) the server asks a
client for its next micro-batch as soon as it has sent the gradient of the previous one, so clients
compute while the server serves the others. With a deterministic server order a segment is the next
``fedavg_every`` x A slots of the order, which makes a distributed run step for step equal to an
in-process one; with ``fifo`` over a real transport it is the next ``fedavg_every`` x A arrivals.

Handovers (several server processes, ``fifo``; :mod:`trainer.transport.handover`), as the simulator's
``sfsim.schedules.splitlora.moves``: a micro-batch whose upload starts at or after the handover goes to the
new server (``moved`` to the old one, ``join`` then the activations to the new one, which serves it in its
segment); the old server sends no ``fwd`` once its leg has ended but ``release``-s the idle client, which
then joins the server of the leg holding then from its next micro-batch (which may be a server it left
before); a FedAvg round takes the clients the server holds when it starts. A server whose own clients are done waits for a visitor while it answers the others' backhaul rounds.
"""

from __future__ import annotations

import copy

import torch

from trainer.methods.common import (
    Method,
    ServerMath,
    Setup,
    StepCallback,
    adamw,
    block_of,
    from_wire,
    inject_lora,
    set_state,
    task_loss,
    to_wire,
    trainable_params,
    training_mode,
)
from trainer.model.backward import DeferredGrads
from trainer.model.lora import fedavg
from trainer.model.split import split_model
from trainer.transport.handover import Handovers, hold_weight, mover_of, visits_of
from trainer.transport.runtime import (
    DeviceLeft,
    DeviceRole,
    Message,
    PeerLost,
    device_kwargs,
    server_order,
    wire_mask,
)
from trainer.transport.wire import pack_state, unpack_state


class ClientReplica:
    """One client's own copy of the device part, its LoRA parameters (by model name) and optimizer."""

    def __init__(self, part: torch.nn.Module, names: dict[int, str], setup: Setup):
        self.part = copy.deepcopy(part)
        self.params = {names[id(p)]: q for p, q in zip(part.parameters(), self.part.parameters(), strict=True)
                       if id(p) in names}
        self.opt = adamw([p for p in self.params.values() if p.requires_grad], setup)
        self.batches: list = []
        self.epoch = 0
        self.pending: tuple[int, torch.Tensor, tuple] | None = None  # (mb, hidden with graph, key)
        self.since_step = 0  # backward passes accumulated since the client's last optimizer step
        self.gone = False  # the device has left for good (availability): it only answers ``leave``

    def state(self) -> dict[str, torch.Tensor]:
        """Copies of the client's LoRA weights, keyed by the model's parameter names."""
        return {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def load(self, sd: dict[str, torch.Tensor]) -> None:
        """Set the client's LoRA weights."""
        for k, v in sd.items():
            self.params[k].copy_(v)


class SplitLoRA(Handovers, Method):
    """The SplitLoRA baseline (clients interleaved in ``setup.server_order``, or one after another)."""

    name = "splitlora"
    resumable = True
    device_stateful = True  # each client keeps its adapters and optimizer

    def __init__(self, setup: Setup):
        super().__init__(setup)
        s = setup
        self.cut = max(s.cuts.values())
        inject_lora(s, self.lora_block_indices())
        self.client_part, server = split_model(s.lm.model, self.cut, head=s.head, frozen_device=False)
        (self.server,) = self.place_server(server)  # on --server-device (a copy off the CPU)
        self.math = ServerMath(s.placement)  # autocast / grad scaler (no-ops in the default fp32)
        self.client_blocks = set(range(self.cut))
        # model parameter name of every client-side LoRA parameter (what FedAvg and checkpoints use)
        self.names = {id(p): n for n, p in s.lm.model.named_parameters()
                      if p.requires_grad and block_of(n) in self.client_blocks}
        self.keys = sorted(self.names.values())
        self.like = {n: p.detach().clone() for n, p in s.lm.model.named_parameters() if n in set(self.keys)}
        self.clients: dict[str, ClientReplica] = {}  # device side: one per device this process plays
        self.deferred = DeferredGrads(self.server, enabled=s.decompose_backward)
        self.server_opt = adamw(trainable_params(self.server), s)
        self.steps = 0
        self.rounds = 0
        self.global_client: dict[str, torch.Tensor] | None = None
        self.window: tuple[list[float], int] = ([], 0)
        self.init_handovers()  # legs and visitors: trainer.transport.handover.Handovers

    # -- device side --------------------------------------------------------------------------------
    def _client(self, name: str) -> ClientReplica:
        if name not in self.clients:
            self.clients[name] = ClientReplica(self.client_part, self.names, self.setup)
        return self.clients[name]

    def device_handle(self, role: DeviceRole, msg: Message) -> None:
        """Run the server's command on this client; once it is gone (trainer.transport.dynamics), answer every
        command that wants a reply with ``leave`` (``fwd``: the samples from ``mb`` on are not trained)."""
        c = self._client(role.name)
        if c.gone and msg.kind in ("fwd", "sync"):
            self._leave(role.name, c, msg)
            return
        try:
            self._command(role, c, msg)
        except DeviceLeft:
            c.gone = True
            if msg.kind in ("fwd", "sync"):
                self._leave(role.name, c, msg)

    def _leave(self, name: str, c: ClientReplica, msg: Message) -> None:
        rest = sum(int(b["labels"].shape[0]) for b in c.batches[msg.mb:]) if msg.kind == "fwd" else 0
        self.setup.transport.send_up(Message(name, msg.mb, kind="leave", aux=rest, epoch=c.epoch))
        if self._mover is not None:  # the other servers of its legs stop waiting for it
            self._mover.close(name, c.epoch)

    def _command(self, role: DeviceRole, c: ClientReplica, msg: Message) -> None:
        s, meter = self.setup, self.setup.meter
        if msg.kind == "start":
            c.batches, c.epoch = role.batches(msg.epoch), msg.epoch
            training_mode(c.part)  # its own copy: nothing else sets its modes, so once an epoch (not per fwd)
            self._mover = self._mover or mover_of(self)
        elif msg.kind == "release":  # its old server's leg ended: it joins the next one (trainer.transport.handover)
            self._mover.move(role.name, c.epoch, msg.mb, len(c.batches) - msg.mb, msg.mb, len(c.batches), force=True)
        elif msg.kind == "fwd":
            batch = c.batches[msg.mb]
            key = tuple(batch["input_ids"].shape)
            with meter.compute(role.name, "F", "device_forward", mb=msg.mb, device=role.name, key=key):
                hidden = c.part(batch["input_ids"], batch["attention_mask"], **device_kwargs(batch))  # (B, T, d)
            c.pending = (msg.mb, hidden, key)
            if self._mover is not None and self._mover.due(role.name):  # the leg holding when the upload starts
                self._mover.move(role.name, c.epoch, msg.mb + 1, len(c.batches) - msg.mb, msg.mb, len(c.batches))
            s.transport.send_up(Message(role.name, msg.mb, {"hidden": hidden, "attention_mask": wire_mask(batch["attention_mask"]),
                                                            "labels": batch["labels"]}, epoch=c.epoch))
            if self._mover is not None:
                self._mover.note(role.name, c.epoch, msg.mb + 1, len(c.batches))
            if self._mover is not None and msg.mb == len(c.batches) - 1:
                self._mover.close(role.name, c.epoch)
        elif msg.kind == "grad":
            j, hidden, key = c.pending
            with meter.compute(role.name, "BW", "device_backward", mb=j, device=role.name, key=key):
                hidden.backward(msg.tensors["grad"])  # the gradient of loss / A: the step sees the mean
            c.pending, c.since_step = None, c.since_step + 1
            if c.since_step == s.accumulate:
                self._client_step(role.name, c, j)
        elif msg.kind == "sync":
            if c.since_step:  # a partial window: step on it before the adapters leave
                self._client_step(role.name, c, -1)
            s.transport.send_up(Message(role.name, -1, {"state": pack_state(c.state(), self.keys)}, kind="adapter",
                                        aux=msg.aux, epoch=c.epoch))
        elif msg.kind == "adapter":
            c.load(unpack_state(msg.tensors["state"], self.like, self.keys))

    def _client_step(self, name: str, c: ClientReplica, mb: int) -> None:
        with self.setup.meter.compute(name, "step", "device_step", mb=mb, device=name, count=False):
            c.opt.step()
            c.opt.zero_grad(set_to_none=True)
        c.since_step = 0

    # -- server side --------------------------------------------------------------------------------
    def server_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """Every client micro-batch once, interleaved in segments between FedAvg rounds or client after client."""
        s, tr = self.setup, self.setup.transport
        counts = self.batch_counts()
        hold_weight(self)  # handovers: the backhaul weight of the devices held now
        done = self.resume_cursor(epoch)
        # once an epoch, not per micro-batch (as CenLoRA): nothing in an epoch changes the server's modes (the
        # evaluation between epochs does), and the walk over every module was 0.3-0.5 ms of each micro-batch
        training_mode(self.server)
        self.window = ([], 0)  # losses and samples the server has accumulated since its last step
        for n in self.live():
            tr.send_down(Message(n, -1, kind="start", epoch=epoch))
            if self.sync is not None and self.global_client is not None:  # the servers' average of last epoch
                tr.send_down(Message(n, -1, {"state": pack_state(self.global_client, self.keys)}, kind="adapter",
                                     aux=self.rounds, epoch=epoch))
        if s.client_order == "sequential":
            self._sequential(epoch, counts, done, on_step)
            return
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
        self._visits = self._visits or visits_of(self)  # handovers: visitors may join mid-epoch (fifo only)
        if self._visits is not None:
            self._visits.start_epoch()
        waiting = self._visits.waiting if self._visits is not None else set()
        averaged = -1  # the server step of the last FedAvg round
        while sum(left.values()) > 0 or waiting:
            quota = (s.fedavg_every - self.steps % s.fedavg_every) * s.accumulate  # micro-batches to the round
            if order is not None:
                order = [n for n in order if n in left]
                seg, order = order[:quota], order[quota:]
                self._segment(epoch, seg, len(seg), left, nxt, on_step)
            else:
                self._segment(epoch, None, quota, left, nxt, on_step)
            self._server_step(on_step)  # a partial window (epoch end, a lost client): step on it
            if self.steps % s.fedavg_every == 0 and sum(left.values()) > 0 and self.steps != averaged:
                averaged = self.steps
                self._fedavg(epoch)
                self.step_done(epoch)  # between segments no client has work in flight: a checkpoint point
        self.lose_movers()
        self._fedavg(epoch)

    def _sequential(self, epoch: int, counts: dict[str, int], done: dict[str, int], on_step: StepCallback) -> None:
        """Client after client: each trains on the rest of its epoch from the adapters the last one ended with."""
        tr = self.setup.transport
        for n in self.live():
            todo = counts[n] - done.get(n, 0)
            if todo <= 0 or n in self.lost:
                continue
            if self.global_client is not None:  # hand over the relay's adapters
                tr.send_down(Message(n, -1, {"state": pack_state(self.global_client, self.keys)}, kind="adapter",
                                     aux=self.rounds, epoch=epoch))
            left, nxt = {n: todo}, {n: done.get(n, 0)}
            self._segment(epoch, [n] * todo, todo, left, nxt, on_step)
            self._server_step(on_step)
            if n not in self.lost:
                self.rounds += 1
                tr.send_down(Message(n, -1, kind="sync", aux=self.rounds, epoch=epoch))
                try:
                    msg = tr.recv_up(n, {"adapter", "leave"})
                    if msg.kind == "adapter":
                        self.global_client = unpack_state(msg.tensors["state"], self.like, self.keys)
                except PeerLost as err:
                    self.lose(err.device, err.reason)
            self.step_done(epoch)  # between clients nothing is in flight: a checkpoint point

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
            if self._visits is not None and not self._visits.holds(n, self.setup.meter.now()):
                self._release(n, epoch, left, nxt)  # its leg here ended while it was idle: it joins the next
                return False
            return todo.get(n, 0) > 0 if seg is not None else issued < quota

        for n in list(left):
            if may_issue(n):
                issue(n)
        served = 0
        slots = iter(seg) if seg is not None else None
        visits = self._visits
        kinds = {"act", "leave"} if visits is None else {"act", "leave", "moved", "join"}
        while served < quota and (busy or (visits is not None and visits.waiting and issued < quota)):
            want = None
            if slots is not None:
                want = next((n for n in slots if n in left), None)
                if want is None:
                    break
            try:
                msg = tr.recv_up(want, kinds) if busy or self.sync is None else tr.poll_up(kinds)
            except PeerLost as err:
                busy.discard(err.device)
                self.lose_peer(err.device, err.reason, left)
                continue
            if msg is None:  # nothing here to serve yet: a visitor may still join; answer the others' round
                self._idle()
                continue
            n = msg.device
            if msg.kind in ("moved", "join"):
                if self._visit(msg, epoch, left, nxt, busy):
                    issued += 1  # its micro-batch in flight counts toward this segment
                    quota = max(quota, issued)
                elif may_issue(n):
                    issue(n)
                continue
            busy.discard(n)
            if msg.kind == "leave":  # gone: the rest of its epoch is not trained
                self.not_trained[n] = self.not_trained.get(n, 0) + msg.aux
                left.pop(n, None)
                self.announce_joins(n)  # its join of 0 to the other servers of its legs
                continue
            self._serve(msg, epoch, on_step)
            served += 1
            left[n] -= 1
            todo[n] = todo.get(n, 0) - 1
            self.advance(n)
            if left[n] == 0:
                del left[n]
            for m in [n] + [m for m in left if m != n]:
                if may_issue(m):
                    issue(m)

    def _visit(self, msg: Message, epoch: int, left: dict[str, int], nxt: dict[str, int], busy: set[str]) -> bool:
        """A handover (trainer.transport.handover): ``moved`` (its micro-batch in flight went on to its new server)
        or ``join`` (``aux`` micro-batches of this epoch to come, from ``mb`` on); True when the joining client
        has one in flight here already (it moved while sending it)."""
        n = msg.device
        if msg.kind == "moved":
            busy.discard(n)
            left.pop(n, None)
            self._visits.gone(n, msg.aux)
            self.announce_joins(n, msg.aux)  # its joins to the servers it moves to or passes through
            return False
        aux = self.count_join(n) and self._visits.joined(msg, epoch)
        if not aux:
            return False
        left[n], nxt[n] = aux, msg.mb
        if aux > self._count(n) - msg.mb:
            busy.add(n)
            return True
        return False

    def _release(self, n: str, epoch: int, left: dict[str, int], nxt: dict[str, int]) -> None:
        """Tell idle client ``n`` that its leg here has ended (``release``): it joins its next server from ``nxt``."""
        self.setup.transport.send_down(Message(n, nxt[n], kind="release", epoch=epoch))
        left.pop(n, None)
        self._visits.gone(n, self._visits.legs.leg_at(n, self.setup.meter.now()))

    def _idle(self) -> None:
        """Answer one backhaul round while this server waits for a visitor (trainer.transport.backhaul)."""
        opt = self.server_opt
        self.sync.idle(self.sync_state(), [p for g in opt.param_groups for p in g["params"]], self._joint_step)

    def _joint_step(self) -> None:
        """The step a waiting or drained server takes with the others' mean gradient (joint rounds), traced as every
        step (the simulator traces it too)."""
        s = self.setup
        with s.meter.compute(s.server, "step", "server_step", count=False):
            self.server_opt.step()
            self.server_opt.zero_grad(set_to_none=True)

    def _count(self, name: str) -> int:
        return self.batch_counts()[name]

    def _serve(self, msg: Message, epoch: int, on_step: StepCallback) -> None:
        """Server F and B, the cut-layer gradient down, then W; the server step after every A micro-batches."""
        s, meter, tr = self.setup, self.setup.meter, self.setup.transport
        t, name, j = from_wire(msg.tensors, s.placement.server), msg.device, msg.mb  # onto the server's device
        if j == self._count(name) - 1:  # its epoch's last: its join of 0 to the other servers of its legs
            self.announce_joins(name)
        h = t["hidden"].requires_grad_(True)
        key = tuple(t["hidden"].shape[:2])
        with meter.compute(s.server, "F", "server_forward", mb=j, device=name, key=key):
            with self.math.autocast():
                loss = task_loss(self.server(h, t["attention_mask"].long()), t["labels"], s.is_lm)
            self.math.sync()
        op = "B" if s.decompose_backward else "BW"
        with meter.compute(s.server, op, f"server_{op}", mb=j, device=name, key=key):
            self.math.backward(loss / s.accumulate)
            self.math.sync()
        grad = to_wire(self.math.unscaled(h.grad))
        tr.send_down(Message(name, j, {"grad": grad}, kind="grad", epoch=epoch))  # host memory; before W
        if s.decompose_backward:
            with meter.compute(s.server, "W", "server_W", mb=j, device=name, key=self.deferred.signature()):
                self.deferred.flush()
                self.math.sync()
        self.record(name, msg.tensors["labels"])
        losses, samples = self.window
        losses.append(loss.item())
        self.window = (losses, samples + int(t["labels"].shape[0]))
        if len(losses) == s.accumulate:
            self._server_step(on_step)

    def _server_step(self, on_step: StepCallback) -> None:
        """The server's optimizer step on the micro-batches accumulated since the last one (none: nothing)."""
        losses, samples = self.window
        if not losses:
            return
        self.optimizer_step(self.server_opt)
        self.steps += 1
        self.window = ([], 0)
        on_step(sum(losses) / len(losses), samples)

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
                msg = tr.recv_up(n, {"adapter", "leave"})
            except PeerLost as err:
                self.lose(err.device, err.reason)
                continue
            if msg.kind == "leave":  # gone: nothing to average
                self.announce_joins(n)
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

    def finish_sync(self) -> None:
        """As every method, always with a last round: the clients' averages differ from server to server."""
        params = [p for g in self.server_opt.param_groups for p in g["params"]]
        self.sync.finish(self.sync_state(), params, self._joint_step, last_round=True)

    def sync_state(self) -> list[torch.Tensor]:
        """The server part and the clients' average (a server without clients contributes with weight 0)."""
        if self.global_client is None:
            self.global_client = {k: v.clone() for k, v in self.like.items()}
        return super().sync_state() + [self.global_client[k] for k in self.keys]

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
