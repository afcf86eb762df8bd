"""FedLoRA: the whole model with LoRA on every device, local steps, FedAvg of adapters + head per round.

Each round the server sends the global adapters and head to every device that still has data this
epoch (``round``); each trains ``local_steps`` micro-batches through all L blocks (forward and
backward) from there, with an optimizer step after every ``accumulate`` micro-batches and one on a
partial window at the round's end (as the simulator's FedLoRA schedule), and uploads its adapters,
head and per-step (loss, samples, micro-batches) (``adapter``); the server averages them (weighted
by the devices' sample counts). Devices keep their own AdamW moments across
rounds. In-process all devices share one model and a device's weights are swapped in; in a
distributed run every device trains in its own process, all at once.

Handovers (several server processes; :mod:`trainer.transport.handover`), as the simulator's FedLoRA: a round's
upload that starts at or after the handover goes to the new server (``moved`` to the old one, whose round stops
waiting for it; ``join`` then the upload to the new one, whose round being collected takes it in, or which
waits for it, answering the other servers' backhaul rounds, when it has no round of its own); its next rounds
come from the new server.
"""

from __future__ import annotations

import torch

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
    training_mode,
)
from trainer.model.lora import fedavg
from trainer.model.split import split_model
from trainer.transport.handover import Handovers, hold_weight, mover_of, visits_of
from trainer.transport.runtime import DeviceLeft, DeviceRole, Message, PeerLost, device_kwargs
from trainer.transport.wire import pack_state, unpack_state


class FedLoRA(Handovers, Method):
    """The FedLoRA baseline."""

    name = "fedlora"
    resumable = True
    device_stateful = True  # each device keeps its own AdamW moments across rounds

    def __init__(self, setup: Setup):
        super().__init__(setup)
        s = setup
        inject_lora(s, self.lora_block_indices())
        # cut 0: the "device part" is only the embeddings; in FedLoRA the device runs both parts
        self.emb, self.rest = split_model(s.lm.model, 0, head=s.head, frozen_device=False)
        self.params = trainable_params(self.rest)
        self.opt: dict[str, torch.optim.Optimizer] = {}  # device -> its optimizer (device side)
        self.global_state = get_state(s.lm.model, s.head)
        self.keys = sorted(self.global_state)
        self.like = {k: v.clone() for k, v in self.global_state.items()}
        self.round = 0
        self._dev: dict[str, dict] = {}
        self.init_handovers()  # legs and visitors: trainer.transport.handover.Handovers

    # -- device side --------------------------------------------------------------------------------
    def device_handle(self, role: DeviceRole, msg: Message) -> None:
        """``start``: the epoch's batches; ``round``: local steps from the global state, then upload."""
        s = self.setup
        if msg.kind == "start":  # mb: micro-batches already trained this epoch (resume)
            self._dev[role.name] = {"batches": role.batches(msg.epoch), "pos": max(msg.mb, 0), "epoch": msg.epoch}
            self._mover = self._mover or mover_of(self)
            return
        if msg.kind != "round":
            return
        st = self._dev[role.name]
        start = st["pos"]
        try:
            self._round(role, msg, st)
        except DeviceLeft:  # gone (trainer.transport.dynamics): this round's upload never leaves, as in the simulator
            rest = sum(int(b["labels"].shape[0]) for b in st["batches"][start:])
            st["pos"] = len(st["batches"])
            s.transport.send_up(Message(role.name, start, kind="leave", aux=rest, epoch=st["epoch"]))
            if self._mover is not None:  # the other servers of its legs stop waiting for it
                self._mover.close(role.name, st["epoch"])

    def _round(self, role: DeviceRole, msg: Message, st: dict) -> None:
        """Local steps from the global state in ``msg``, then the upload (``adapter``)."""
        s = self.setup
        set_state(s.lm.model, s.head, unpack_state(msg.tensors["state"], self.like, self.keys))
        losses, window = [], []  # per optimizer step: mean loss, samples, micro-batches

        def step() -> None:
            self._local_step(role.name, st["pos"] - 1)
            losses.extend([sum(x for x, _ in window) / len(window), float(sum(k for _, k in window)), len(window)])
            window.clear()

        for _ in range(s.local_steps):
            if st["pos"] >= len(st["batches"]):
                break
            window.append(self._local_pass(role.name, st["pos"], st["batches"][st["pos"]]))
            st["pos"] += 1
            if len(window) == s.accumulate:
                step()
        if window:  # a partial window at the round's end
            step()
        state = pack_state(get_state(s.lm.model, s.head), self.keys)
        start = st["pos"] - int(sum(losses[2::3]))  # the round's first micro-batch
        if self._mover is not None and self._mover.due(role.name):  # the leg holding when the upload starts
            self._mover.move(role.name, st["epoch"], st["pos"], len(st["batches"]) - start, start, len(st["batches"]))
        s.transport.send_up(Message(role.name, -1, {"state": state, "losses": torch.tensor(losses, dtype=torch.float32)},
                                    kind="adapter", aux=msg.aux, epoch=st["epoch"]))
        if self._mover is not None:
            self._mover.note(role.name, st["epoch"], st["pos"], len(st["batches"]))
        if self._mover is not None and st["pos"] >= len(st["batches"]):
            self._mover.close(role.name, st["epoch"])

    def _optimizer(self, name: str) -> torch.optim.Optimizer:
        if name not in self.opt:
            self.opt[name] = adamw(self.params, self.setup)
        return self.opt[name]

    def device_state(self, role: DeviceRole) -> tuple[dict, dict]:
        """A device's state between rounds: its optimizer (its weights come with the next round)."""
        return {}, {"device": self._optimizer(role.name)}

    def server_extra(self) -> tuple[dict, dict]:
        """The global adapters and the round counter."""
        return dict(self.global_state), {"round": self.round}

    def load_server_extra(self, tensors: dict, meta: dict) -> None:
        """Inverse of :meth:`server_extra`."""
        self.global_state = {k: tensors[k].clone() for k in self.keys}
        self.round = meta["round"]

    def _local_pass(self, name: str, j: int, batch) -> tuple[float, int]:
        """Forward and backward of one micro-batch (gradients of loss / A accumulate); (loss, samples)."""
        s, meter = self.setup, self.setup.meter
        self._optimizer(name)
        training_mode(self.emb, self.rest)
        key = tuple(batch["input_ids"].shape)
        with meter.compute(name, "F", "device_forward", mb=j, device=name, key=key):
            out = self.rest(self.emb(batch["input_ids"], batch["attention_mask"], **device_kwargs(batch)), batch["attention_mask"])
            loss = task_loss(out, batch["labels"], s.is_lm)
        with meter.compute(name, "BW", "device_backward", mb=j, device=name, key=key):
            (loss / s.accumulate).backward()
        self.record(name, batch["labels"])
        return loss.item(), int(batch["labels"].shape[0])

    def _local_step(self, name: str, j: int) -> None:
        with self.setup.meter.compute(name, "step", "device_step", mb=j, device=name, count=False):
            self.opt[name].step()
            self.opt[name].zero_grad(set_to_none=True)

    # -- server side --------------------------------------------------------------------------------
    def server_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """Rounds of local training and FedAvg until every device has used its epoch's data."""
        s, tr = self.setup, self.setup.transport
        counts = self.batch_counts()
        hold_weight(self)  # handovers: the backhaul weight of the devices held now
        done = self.resume_cursor(epoch)
        for n in self.live():
            tr.send_down(Message(n, done.get(n, 0), kind="start", epoch=epoch))
        left = {n: counts[n] - done.get(n, 0) for n in self.live()}
        self._visits = self._visits or visits_of(self)  # handovers: visitors may join mid-epoch
        if self._visits is not None:
            self._visits.start_epoch(s.meter.now())  # not a visitor whose legs here are all over
        waiting = self._visits.waiting if self._visits is not None else set()
        while sum(left.values()) > 0 or waiting:
            active = [n for n in self.live() if left.get(n, 0) > 0]
            self.round += 1
            flat = pack_state(self.global_state, self.keys)
            for n in active:
                tr.send_down(Message(n, -1, {"state": flat}, kind="round", aux=self.round, epoch=epoch))
            got = self._collect(epoch, active, left, on_step)
            if not active and not got:  # only visitors were awaited, and none came
                continue
            order = [n for n in s.samples if n in got]  # scenario order, whatever the arrival order
            states, weights = [got[n] for n in order], [s.samples[n] for n in order]
            if states:
                with s.meter.compute(s.server, "aggregate", "server_aggregate", count=False):
                    self.global_state = fedavg(states, weights)
            if self.sync is not None:  # several servers: this group's average, then across servers
                self.sync.fed_round([self.global_state[k] for k in self.keys], float(sum(weights)),
                                    last=sum(left.values()) == 0 and not waiting)
            self.step_done(epoch)
        self.lose_movers()
        set_state(s.lm.model, s.head, self.global_state)

    def _collect(self, epoch: int, active: list[str], left: dict[str, int], on_step: StepCallback) -> dict:
        """The round's uploads: device -> its state. With handovers (trainer.transport.handover) in arrival order: a
        device that ``moved`` is not awaited here any more, one that ``join``-s brings its upload into this round;
        a server with no device of its own in the round waits for a visitor, answering the other servers' rounds."""
        tr, visits = self.setup.transport, self._visits
        expect, got = list(active), {}
        kinds = {"adapter", "leave"} if visits is None else {"adapter", "leave", "moved", "join"}
        while expect or (not active and not got and visits is not None and visits.waiting):
            try:
                if visits is None or (not expect and self.sync is None):
                    msg = tr.recv_up(expect[0] if visits is None else None, kinds)
                else:
                    msg = tr.recv_up(None, kinds) if expect else tr.poll_up(kinds)
            except PeerLost as err:
                expect = [n for n in expect if n != err.device]
                self.lose_peer(err.device, err.reason, left)
                continue
            if msg is None:  # nothing yet: answer the other servers' next round
                self.sync.fed_idle([self.global_state[k] for k in self.keys])
                continue
            n = msg.device
            if msg.kind in ("moved", "join"):
                if msg.kind == "moved":
                    expect, _ = [m for m in expect if m != n], left.pop(n, None)
                    visits.gone(n, msg.aux)
                    self.announce_joins(n, msg.aux)
                elif self.count_join(n) and visits.joined(msg, epoch):
                    left[n] = msg.aux
                    expect.append(n)
                continue
            if n not in expect:
                continue
            expect.remove(n)
            if msg.kind == "leave":  # gone mid-round: that round and the rest of its epoch are not trained
                self.not_trained[n] = self.not_trained.get(n, 0) + msg.aux
                left[n] = 0
                self.announce_joins(n)
                continue
            steps = msg.tensors["losses"].view(-1, 3).tolist()
            for loss, k, _mbs in steps:
                on_step(loss, int(k))
            trained = int(sum(mbs for *_, mbs in steps))  # micro-batches this round
            left[n] = max(left[n] - trained, 0) if trained else 0
            self.cursor[n] = self.cursor.get(n, 0) + trained
            got[n] = unpack_state(msg.tensors["state"], self.like, self.keys)
            if left[n] == 0:
                self.announce_joins(n)
        return got

    def finish_sync(self) -> None:
        """Rounds of the other servers until none trains, then the last one (weighted by this group's samples)."""
        self.sync.fed_finish([self.global_state[k] for k in self.keys], self.sync.weight)
        set_state(self.setup.lm.model, self.setup.head, self.global_state)

    def eval_cut(self) -> int:
        """FedLoRA evaluates the whole model (cut 0)."""
        return 0
