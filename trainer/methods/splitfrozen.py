"""SplitFrozen: frozen device prefixes forward only; one server LoRA model trains on the paced stream.

Device i runs embeddings + blocks 0..k_i-1 under ``torch.inference_mode`` and sends (hidden, mask,
labels); the server runs blocks k_i..lora_start-1 frozen, blocks lora_start..L-1 with LoRA, and the
head. Nothing but credits is sent back to the devices.

Flow control is the simulator's: a device may have at most ``buffer`` micro-batches sent but not yet
started by the server (its credits); the server returns a credit when it starts a micro-batch (the
sequential ablation: when it has finished its backward, with one credit). The server takes
micro-batches in the order of a pacing policy (``server_order``): a deterministic order waits for the
named device while others' micro-batches queue; ``fifo`` over a real transport takes true arrival
order. Backward is split into B (now) and W (deferred until the optimizer step, see
``trainer.model.backward``).
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from sfsim.engine.pacing import MixingPool, pool_capacity
from sfsim.outputs.trace import TraceEvent
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
from trainer.methods.splitfrozen_waits import WaitingServer
from trainer.model.backward import DeferredGrads
from trainer.model.split import split_model
from trainer.transport.cache import ActivationCache
from trainer.transport.departure import Departures, Goodbye, stop_at_epoch_start
from trainer.transport.handover import Legs, hold_weight, late_moves
from trainer.transport.runtime import DeviceLeft, DeviceRole, Message, PeerLost, role_seed, server_order


class SplitFrozen(Method, WaitingServer):
    """The SplitFrozen method (``decompose_backward=False`` gives the fused-BW ablation)."""

    name = "splitfrozen"
    resumable = True
    sequential = False  # release a device's next micro-batch only after the server's backward

    def __init__(self, setup: Setup):
        super().__init__(setup)
        s = setup
        inject_lora(s, self.lora_block_indices())
        # one (device part, server part) per distinct cut; all share the model's modules and the head
        split = {k: split_model(s.lm.model, k, head=s.head, frozen_device=True) for k in sorted(set(s.cuts.values()))}
        for d in s.devices:
            d.part = split[s.cuts[d.name]][0]
        # the server parts where the server computes (Method.place_server: one copy of them all off the CPU)
        placed = self.place_server(*(srv for _, srv in split.values()))
        self.parts = {k: (dev, srv) for (k, (dev, _)), srv in zip(split.items(), placed, strict=True)}
        widest = self.parts[min(self.parts)][1]  # holds every server block and the head
        self.deferred = DeferredGrads(widest, enabled=s.decompose_backward)
        self.opt = adamw(trainable_params(widest), s)
        self.math = ServerMath(s.placement)  # autocast / grad scaler (no-ops in the default fp32)
        self._dev: dict[str, dict] = {}  # device side: name -> {batches, next, credits, epoch}
        # handovers (trainer.run.launch sets them with several servers): every device's legs (at s, server rank,
        # server name); a device's current leg and the moves it made; a server's possible visitors (the devices
        # with a leg on it, name -> DeviceRole), each of which tells it once per epoch whether it comes
        self.legs: dict[str, list[tuple[float, int, str]]] = {}
        self.leg: dict[str, int] = {}
        self.moves: list[dict] = []
        self.visitors: dict[str, DeviceRole] = {}
        self.taken: dict[str, int] = {}  # visitor -> the last leg its ``moved`` here named (it may come back after it)
        self.pool_peak = 0  # most micro-batches the mixing pool held (server_order "pool")
        self._epoch = 0  # the server's epoch (a handover's join of another epoch is ignored)
        self._places: set[str] = set()  # visitors whose entry in the epoch's ``left`` is a placeholder (may still come)
        self._seen: dict[str, int] = {}  # device -> the index of the next micro-batch it sends here this epoch
        self._ahead: dict[str, Message] = {}  # device -> its ``moved`` read ahead of its leg's last micro-batch
        # training.cache_activations: what the devices sent in one epoch, replayed in later ones
        self.cache = None if s.cache_memory is None else ActivationCache(s.cache_memory, s.out)
        # and a device that drops: its gone to every server it sent to; their replays stop at its departure
        self.goodbye = Goodbye(s)
        self.departures = Departures(s, self._knows, lambda n, why: self.lose(n, why))

    def lora_block_indices(self) -> list[int]:
        """Blocks lora_start..L-1."""
        return list(range(self.setup.lora_start, self.setup.lm.n_layers))

    # -- device side --------------------------------------------------------------------------------
    def device_handle(self, role: DeviceRole, msg: Message) -> None:
        """``start``: take the epoch's batches from ``msg.mb`` on with ``aux`` credits; ``credit``: one more;
        ``due`` (local, from this device's own timer, never from the wire): a handover may be due while it waits."""
        st = self._dev.get(role.name)
        if msg.kind == "start":
            st = self._dev[role.name] = {"batches": role.batches(msg.epoch), "next": msg.mb, "credits": msg.aux,
                                         "epoch": msg.epoch, "window": msg.aux, "first_here": msg.mb, "held": None}
            if self.cache is not None:  # a timer at its drop instant (trainer.transport.departure)
                self.goodbye.arm(role.name, msg.epoch)
        elif msg.kind == "depart":  # local, from that timer: tell every server it sent to
            self.goodbye.say(role.name, self.goodbye.drop_instant(role.name), self._rank(role.name), msg.epoch)
            return
        elif msg.kind == "credit" and st is not None:
            if msg.mb < st["first_here"]:  # for a micro-batch sent to a server it has left: that server's account
                return
            self._waited(role.name, st)
            st["credits"] += 1
        elif msg.kind != "due" or st is None:
            return
        self._pump(role, st)
        while self._blocked(st) and self._move_if_due(role.name, st):  # the credit wait ends at the handover
            self._pump(role, st)

    def _pump(self, role: DeviceRole, st: dict) -> None:
        """Forward and send while credits last. As the simulator's device, a pipelined one forwards its next
        micro-batch as soon as the link takes the previous one and then waits for a credit with it ready (``held``);
        the sequential ablation forwards only once its credit (its server's backward) is back."""
        try:
            while st["next"] < len(st["batches"]):
                j = st["next"]
                if st["held"] is None and (st["credits"] or not self.sequential):
                    st["held"] = role.forward_frozen(st["batches"][j], j, self.setup.meter)
                    st["held"].epoch = st["epoch"]
                if st["credits"] == 0:
                    break
                if self.legs and hasattr(self.setup.transport, "wait_uplink"):  # the send starts when the link is free
                    self.setup.transport.wait_uplink(role.name, j)
                self._hand_over(role.name, st)  # the leg holding when the send starts takes the micro-batch
                out, st["held"] = st["held"], None
                if self.legs and hasattr(self.setup.transport, "wait_uplink"):
                    self.setup.transport.send_up(out, lambda end, n=role.name: self._moved_ahead(n, st, end))
                else:
                    self.setup.transport.send_up(out)
                self.goodbye.sent(role.name, self._rank(role.name))
                st["next"], st["credits"] = j + 1, st["credits"] - 1
        except DeviceLeft:  # offline for good (trainer.transport.dynamics): the rest of the epoch is not sent
            rest = sum(int(b["labels"].shape[0]) for b in st["batches"][st["next"]:])
            self.setup.transport.send_up(Message(role.name, st["next"], kind="leave", aux=rest, epoch=st["epoch"]))
            if self.cache is not None:  # the servers it left hold parts of its cache: gone, before its joins of 0
                home = self._rank(role.name)
                self.goodbye.say(role.name, self.setup.meter.now(), home, st["epoch"], skip=home)
            st["sent"], st["next"], st["held"] = st["next"], len(st["batches"]), None
        st["blocked_at"] = self.setup.meter.now() if st["next"] < len(st["batches"]) else None
        if st["next"] >= len(st["batches"]):
            self._close_epoch(role.name, st)

    def load_device_state(self, role: DeviceRole, want: int | None = None) -> int:
        """``--resume`` on a device: no state (its prefix is frozen); with the cache, its drop timer now, as no
        ``start`` comes in a cached epoch (``Goodbye.resumed``)."""
        if self.cache is not None:
            self.goodbye.resumed(role.name, {r for _, r, _ in self.legs.get(role.name, [])} or {None})
        return super().load_device_state(role, want)

    def _rank(self, name: str) -> int | None:
        """The server rank holding device ``name`` now (None: no handovers, its one server)."""
        legs = self.legs.get(name)
        return legs[self.leg.get(name, 0)][1] if legs else None

    def _knows(self, name: str) -> bool:
        """Whether device ``name`` sent here (its cache holds or held a part) or is held here: its ``gone`` counts."""
        c = self.cache
        return (c is not None and (name in c.digests or name in c.left)) or any(r.name == name for r in self.setup.devices) \
            or name in self.visitors  # a resumed device tells every server of its legs (Goodbye.resumed)

    @staticmethod
    def _blocked(st: dict) -> bool:
        """Whether the device waits for a credit with its next micro-batch forwarded."""
        return st["credits"] == 0 and st["held"] is not None and st["next"] < len(st["batches"])

    def _waited(self, name: str, st: dict) -> None:
        """Trace the credit wait that ends now (from when the device blocked)."""
        if st["credits"] == 0 and st.get("blocked_at") is not None:
            now = self.setup.meter.now()
            self.setup.meter.events.append(TraceEvent(name, "wait", st["blocked_at"], now - st["blocked_at"],
                                                      st["next"], name))
            st["blocked_at"] = None

    def _move_if_due(self, name: str, st: dict) -> bool:
        """A device waiting for a credit hands over when its next leg is due, as the simulator's (its credit wait
        ends at the handover time; the new server opens a full window): now, if due (True), else at that time (a
        local ``due`` message from a timer, once per leg)."""
        legs, k = self.legs.get(name), self.leg.get(name, 0)
        if not legs or k + 1 >= len(legs):
            return False
        at, now = legs[k + 1][0], self.setup.meter.now()
        if at <= now:
            self._waited(name, st)
            self._hand_over(name, st)
            return True
        inbox = getattr(self.setup.transport, "inbox", None)
        if inbox is not None and st.get("timer") != (st["epoch"], k + 1):
            st["timer"] = (st["epoch"], k + 1)
            timer = threading.Timer(at - now, inbox.put, (Message(name, -1, kind="due", epoch=st["epoch"]),))
            timer.daemon = True
            timer.start()
        return False

    def _hand_over(self, name: str, st: dict) -> None:
        """Take every handover due by now: ``moved`` to the old server (after all this device sent it), then
        ``join`` with the epoch's micro-batches left to the new one, whose links apply from here on. Credits are
        per server, as the simulator's accounts: the new server opens a full window; what the old one returns
        for micro-batches still in flight there is its own (ignored here)."""
        legs, tr = self.legs.get(name), self.setup.transport
        k = self.leg.get(name, 0)
        while legs and k + 1 < len(legs) and legs[k + 1][0] <= self.setup.meter.now():
            j, (at, new, to) = st["next"], legs[k + 1]
            now = self.setup.meter.now()  # the send starting now, or its credit wait ending: the simulator's move
            if st.pop("ahead", None) != k + 1:  # (else its ``moved`` went ahead of the last micro-batch sent there)
                tr.send_up(Message(name, j, kind="moved", aux=k + 1, epoch=st["epoch"], at=now))
            tr.move(name, new)
            tr.send_up(Message(name, j, kind="join", aux=len(st["batches"]) - j, epoch=st["epoch"], at=now))
            st["credits"], st["first_here"] = st["window"], j
            self.setup.meter.events.append(TraceEvent(name, "handover", at, 0.0, -1, name))
            self.moves.append({"device": name, "at_s": at, "from": legs[k][2], "to": to, "epoch": st["epoch"],
                               "sent_before": st["epoch"] * len(st["batches"]) + j})  # over the run, as the simulator
            k += 1
        self.leg[name] = k

    def _moved_ahead(self, name: str, st: dict, end: float) -> Message | None:
        """The ``moved`` to send ahead of the micro-batch now going up, or None: when the next handover is due by the end
        of its send (``end``), to another server, and the epoch has more to send, the next send starts after the
        handover (the link is busy till then), so this micro-batch is the last of its leg. The old server then reads
        the move before it trains it (``mb``: the micro-batches sent there with it), so its step after it is its last,
        as in the simulator, which knows the move at once; sent after it, the move raced that step."""
        legs, k, j = self.legs.get(name, []), self.leg.get(name, 0), st["next"]
        if k + 1 >= len(legs) or legs[k + 1][0] > end or legs[k + 1][1] == legs[k][1] or j + 1 >= len(st["batches"]):
            return None
        st["ahead"] = k + 1  # stamped when it is sent, as every message (the server applies it with that micro-batch)
        return Message(name, j + 1, kind="moved", aux=k + 1, epoch=st["epoch"], at=self.setup.meter.now())

    def finish_moves(self, name: str) -> None:
        """Device ``name``'s process ends: record its handovers due since its last send (``late_moves``)."""
        st = self._dev.get(name)
        if self.legs.get(name) and st is not None:
            sent = st["epoch"] * len(st["batches"]) + st.get("sent", st["next"])
            self.leg[name] = late_moves(self.legs[name], self.leg.get(name, 0), name, self.setup.meter, st["epoch"],
                                        sent, self.moves)

    def _close_epoch(self, name: str, st: dict) -> None:
        """This device's epoch is sent (or it left): every other server of its legs stops waiting for it this
        epoch (``join`` of 0; one that did not wait ignores it)."""
        legs = self.legs.get(name)
        if not legs or len({r for _, r, _ in legs}) < 2 or st.get("closed"):
            return
        home = legs[self.leg.get(name, 0)][1]
        now = self.setup.meter.now()  # its last send's start (the simulator's close)
        for rank in sorted({r for _, r, _ in legs} - {home}):
            self.setup.transport.send_to(rank, Message(name, -1, kind="join", aux=0, epoch=st["epoch"], at=now))
        st["closed"] = True

    # -- server side --------------------------------------------------------------------------------
    def server_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """Start every device, then train on their micro-batches in the pacing order as they arrive."""
        s, tr = self.setup, self.setup.transport
        held = {r.name for r in s.devices}  # a device that handed over is started by the server holding it now
        counts = {n: k for n, k in self.batch_counts().items() if n in held}
        done = self.resume_cursor(epoch)  # device -> micro-batches already trained this epoch
        hold_weight(self)  # handovers: the backhaul weight of the devices held now
        self._epoch = epoch
        if hasattr(tr, "moves_ahead"):  # a moved may come ahead of its leg's last micro-batch (_moved_ahead)
            tr.moves_ahead = True
        live = [n for n in counts if n not in self.lost]
        self._seen, self._ahead = {n: done.get(n, 0) for n in live}, {}
        training_mode(*(srv for _, srv in self.parts.values()))  # once an epoch: only evaluation changes the modes
        if self._from_cache(epoch, on_step, counts, done, live):
            return
        credits = 1 if self.sequential else s.buffer
        for n in live:
            tr.send_down(Message(n, done.get(n, 0), kind="start", aux=credits, epoch=epoch))
        arrival = s.server_order in ("fifo", "pool") and tr.arrival_order
        order = None if arrival else deque(self._order(counts, done))
        left = {n: counts[n] - done.get(n, 0) for n in live}
        # a device that may hand over to here (a leg here after the last one it took, as this server knows): one
        # placeholder until it says whether it comes (fifo only); one that can never come back is not waited for
        back = Legs(self.legs)
        places = {v: 1 for v in self.visitors if v not in left and v not in self.lost
                  and back.comes_back(v, s.server, self.taken.get(v, 0))}
        left.update(places)
        self._places = set(places)
        self._track_joins()
        if self.sync is not None:
            self.sync.answers = self._answers
        pool, held = None, dict.fromkeys(left, 0)  # held: device -> its micro-batches in the pool
        if s.server_order == "pool":
            pool = MixingPool(self.pool_size(credits, len(live)), role_seed(s.seed, f"pool-{epoch}"))
        losses, samples = [], 0
        while sum(left.values()) > 0:
            msg = self._take(order, left) if pool is None else self._take_pooled(order, left, pool, held, credits)
            if msg is None:  # a message that was not a micro-batch to train: look again
                continue
            name = msg.device
            left[name] -= 1
            if name in self.legs and msg.mb + 1 == self.batch_counts().get(name):  # its epoch's last: its joins of 0
                self._announce(name, None)
            if self.cache is not None:
                self.cache.put(name, msg.tensors)
            loss, n = self._credit_and_train(msg, epoch)
            self.advance(name)
            losses.append(loss)
            samples += n
            self._read_moves(left)
            if len(losses) == s.accumulate or sum(left.values()) == 0:
                self._step(last=sum(left.values()) == 0)
                on_step(sum(losses) / len(losses), samples)
                losses, samples = [], 0
                self.step_done(epoch)
        if losses:  # the last device left (or was lost) with a step's gradients pending
            self._step(last=True)
            on_step(sum(losses) / len(losses), samples)
            self.step_done(epoch)

    def _credit_and_train(self, msg: Message, epoch: int) -> tuple:
        """Train on ``msg``; its credit goes back before the work (pipelined) or after it (sequential)."""
        credit = Message(msg.device, msg.mb, kind="credit", epoch=epoch)
        if not self.sequential:
            self.setup.transport.send_down(credit)
        out = self._train(msg)
        if self.sequential:
            self.setup.transport.send_down(credit)
        return out

    def _take(self, order: deque | None, left: dict[str, int]) -> Message | None:
        """The next micro-batch in the pacing order (``None``: arrival order), or None after another message."""
        name = None
        if order is not None:
            name = order.popleft()
            if left.get(name, 0) == 0:  # a lost device's slot
                return None
        kinds = {"act", "leave", "moved", "join"}
        try:
            if order is None and self._waits_only(left):  # poll: it answers the others' rounds meanwhile
                # (a message stamped after the invitation it holds waits until it has answered that round)
                msg = self.setup.transport.poll_up(kinds, self.sync.invited_at())
                if msg is None:
                    self._idle()
                    return None
            else:
                msg = self.setup.transport.recv_up(name, kinds)
        except PeerLost as err:
            self.lose(err.device, err.reason, left)
            return None
        if msg.kind == "leave":  # after its last micro-batch (one link, in order): nothing is left
            self._left(msg, left, 0)
        elif msg.kind in ("moved", "join"):
            self._visit(msg, left)
        elif msg.device in left:
            self._seen[msg.device] = msg.mb + 1
            ahead = self._ahead.get(msg.device)
            if ahead is not None and ahead.mb == msg.mb + 1:  # its leg's last: the move applies before the step
                self._visit(self._ahead.pop(msg.device), left)
                left[msg.device] += 1  # this micro-batch is still to be counted (server_epoch)
        return msg if msg.kind == "act" else None

    def _take_pooled(self, order: deque | None, left: dict[str, int], pool: MixingPool, held: dict[str, int],
                     credits: int) -> Message | None:
        """Take arrivals into the mixing pool until it is ready (None), then draw one micro-batch from it."""
        if pool.ready(any(held[n] < min(credits, left[n]) for n in left)):
            msg = pool.draw()
            held[msg.device] -= 1
            return msg
        name = None
        if order is not None:  # in one process: the next estimated arrival that can come
            name = next(n for n in order if n in left and held[n] < min(credits, left[n]))
            order.remove(name)
        try:
            msg = self.setup.transport.recv_up(name, {"act", "leave"})
        except PeerLost as err:
            self.lose(err.device, err.reason, left)
            pool.items = [m for m in pool.items if m.device != err.device]
            return None
        if msg.kind == "leave":  # what it sent still trains: only what is in the pool is left
            self._left(msg, left, held[msg.device])
            return None
        pool.add(msg)
        held[msg.device] += 1
        self.pool_peak = max(self.pool_peak, pool.peak)
        return None

    def _visit(self, msg: Message, left: dict[str, int]) -> None:
        """A handover: ``moved`` (all it sent here has arrived: nothing more comes, unless a later leg brings it
        back, ``aux`` its new leg) or ``join`` (``aux`` more; a join of another epoch is left over: ignored)."""
        s, n = self.setup, msg.device
        if msg.kind == "moved" and self._early(msg, left):
            return
        if msg.kind == "moved":
            self.taken[n] = msg.aux
            left[n] = int(Legs(self.legs).comes_back(n, s.server, msg.aux))  # a placeholder while it may come back
            self._places.discard(n)
            if left[n]:
                self._places.add(n)
            s.devices = [r for r in s.devices if r.name != n]  # its next epochs start at its new server
            self._announce(n, msg.aux)
            return
        if self.sync is not None:  # every join read counts (of any epoch): the rounds' announced joins
            self.sync.joined(n)
        if msg.epoch != self._epoch:
            return
        left[n] = msg.aux
        self._seen[n] = msg.mb
        self._places.discard(n)
        if msg.aux and n in self.visitors and all(r.name != n for r in s.devices):
            s.devices.append(self.visitors[n])
            s.samples[n] = self.visitors[n].n_samples

    def _early(self, msg: Message, left: dict[str, int]) -> bool:
        """Whether ``moved`` came ahead of its leg's last micro-batch (:meth:`_moved_ahead`: ``mb`` counts it): then it
        applies when that one is read (:meth:`_take`). One naming more than that one still to come costs its sender."""
        n = msg.device
        if msg.epoch != self._epoch or n in self._ahead or msg.mb <= self._seen.get(n, msg.mb):
            return False
        if msg.mb != self._seen[n] + 1:
            why = f"a moved naming {msg.mb} micro-batches sent this epoch where {self._seen[n]} came here (at most 1 more)"
            self.setup.transport.drop(n, why)
            self.lose(n, why, left)
            return True
        self._ahead[n] = msg
        return True

    def _read_moves(self, left: dict[str, int]) -> None:
        """Before a step: read each ``moved`` already here that nothing unread of its device precedes, so that a step
        after a mover's last micro-batch here is this server's last when nothing else is left (the simulator's old
        server knows of the move when the device's next send starts; it marked that step last, the runtime did not)."""
        inbox = getattr(self.setup.transport, "inbox", None)
        if inbox is None or not self.legs or self.setup.server_order == "pool":  # the pooled loop reads no moves
            return
        for n in [n for n, k in left.items() if k and n in self.legs and n not in self._places]:
            with inbox.cv:
                first = next((m.kind for m in inbox.by_device.get(n, ()) if m.kind in ("act", "leave", "moved", "join")),
                             None)
            if first == "moved":
                self._visit(self.setup.transport.recv_up(n, {"moved"}), left)
        self._await_move(left)  # one still due (issue 21: a handover between the end of a send and its arrival)

    def _from_cache(self, epoch: int, on_step: StepCallback, counts: dict[str, int], done: dict[str, int],
                    live: list[str]) -> bool:
        """Train the epoch from the activation cache when it holds a whole earlier epoch (True): every device this
        server cached, the part a mover sent here included (``ActivationCache.replays``); else empty it, to be
        refilled from what the devices send this epoch (False)."""
        if self.cache is None:
            return False
        self.cache.by_rows |= Legs(self.legs).moving()  # (kept by a checkpoint: a resumed run's handovers may be past)
        replay = self.cache.resumed_replays(epoch)  # resumed in this epoch: its replays as they were (no new start)
        if replay is None:
            if self.cache.filled_in is not None and self.cache.filled_in < epoch:  # departed by now: nothing this epoch
                stop_at_epoch_start(self.departures, self.cache, [*live, *self.cache.digests], self.setup.meter.now())
            # in the scenario's order (a resumed run whose handovers are past has no legs: setup.cuts names every device)
            replay = self.cache.replays(epoch, self.lost, [*self.legs, *self.setup.cuts, *self.setup.samples])
            if replay is None:
                self.cache.fill(epoch, resumed=any(done.values()))
                return False
            for n in (n for n in live if n in self.cache.left):  # a device that left trains nothing more
                self.not_trained[n] = self.not_trained.get(n, 0) + max(
                    self.setup.samples.get(n, 0) - done.get(n, 0) * self.setup.micro_batch, 0)
        self.cache.replaying = (epoch, replay)  # a checkpoint in this epoch records them (trainer.run.resume)
        if self.sync is not None and self.cache.by_rows:  # its weight: the samples it replays (hold_weight)
            self.sync.weight = float(sum(self.cache.rows(n) for n in replay))
        self._replay(epoch, on_step, replay, done)
        return True

    def _replay(self, epoch: int, on_step: StepCallback, counts: dict[str, int], done: dict[str, int]) -> None:
        """An epoch from the activation cache: no device computes or sends anything.

        Each device's cached micro-batches are taken in a fresh order per epoch (seeded), interleaved
        across devices in the pacing order; steps every ``accumulate`` micro-batches as on the wire.
        """
        s = self.setup
        order = self._order(counts, done)
        perm = {n: torch.randperm(counts[n], generator=torch.Generator().manual_seed(
            role_seed(s.seed, f"cache-{n}-{epoch}"))).tolist() for n in counts}
        nxt = {n: done.get(n, 0) for n in counts}
        losses, samples = [], 0
        for i, name in enumerate(order):
            j = nxt[name]
            nxt[name] += 1
            if name in self.lost:  # lost mid-epoch (a bad gone): its untrained samples are the loss's
                continue
            if self._departed(name):  # no replay from its departure on: its untrained samples, here
                self.not_trained[name] = self.not_trained.get(name, 0) + self.cache.rows_at(name, perm[name][j])
                self.advance(name)  # done with: a run resumed after this point does not count it again
                continue
            loss, n = self._train(Message(name, j, self.cache.get(name, perm[name][j]), epoch=epoch))
            self.advance(name)
            losses.append(loss)
            samples += n
            if len(losses) == s.accumulate or i == len(order) - 1:
                self._step(last=i == len(order) - 1)  # as on the wire: the epoch's last step says so
                on_step(sum(losses) / len(losses), samples)
                losses, samples = [], 0
                self.step_done(epoch)
        if losses:  # the replays after these were of a device that departed
            self._step(last=True)
            on_step(sum(losses) / len(losses), samples)
            self.step_done(epoch)

    def _departed(self, name: str) -> bool:
        """Whether device ``name``'s replay starting now does not train (trainer.transport.departure): it departed by
        now (its later replays here and later epochs' too: the cache stops it), or it was lost."""
        if name in self.cache.left:
            return True
        if self.departures.gone(name, self.setup.meter.now()):
            self.cache.stop(name)
            return True
        return False

    def _left(self, msg: Message, left: dict[str, int], keep: int) -> None:
        """Device ``msg.device`` has left (``leave``): ``keep`` of its micro-batches still come; note the untrained."""
        self.not_trained[msg.device] = self.not_trained.get(msg.device, 0) + msg.aux
        if self.cache is not None:  # gone for good: its cache is not replayed
            self.cache.leave(msg.device)
        if msg.device in left:
            left[msg.device] = keep
        self._announce(msg.device, None)  # its joins of 0 to the other servers of its legs

    def pool_size(self, credits: int, n_devices: int) -> int:
        """Micro-batches the mixing pool holds: ``setup.pool_memory`` over one full micro-batch's activation
        bytes (micro_batch x max_len x width x 4), or every device's credits when no bound is set."""
        s = self.setup
        if s.pool_memory is None:
            return max(1, credits * n_devices)
        return pool_capacity(s.pool_memory, s.micro_batch * s.max_len * s.lm.hidden * 4)

    def _order(self, counts: dict[str, int], done: dict[str, int]) -> list[str]:
        """The epoch's pacing order with the micro-batches already trained (resume) left out."""
        skip = dict(done)
        out = []
        for n in server_order(counts, self.setup.server_order, self.setup.periods):
            if skip.get(n, 0) > 0:
                skip[n] -= 1
            else:
                out.append(n)
        return out

    def _train(self, msg: Message) -> tuple[float, int]:
        """Server F and B (W deferred) of one micro-batch."""
        s, meter, name, j = self.setup, self.setup.meter, msg.device, msg.mb
        t = from_wire(msg.tensors, s.placement.server)  # host tensors from the wire onto the server's device
        _, server = self.parts[s.cuts[name]]  # in training mode since the epoch's start (server_epoch)
        key = (s.cuts[name], *t["hidden"].shape)
        with meter.compute(s.server, "F", "server_forward", mb=j, device=name, key=key):
            with self.math.autocast():
                loss = task_loss(server(t["hidden"], t["attention_mask"].long()), t["labels"], s.is_lm)
            self.math.sync()  # a GPU's phase ends when its work does
        op = "B" if s.decompose_backward else "BW"
        with meter.compute(s.server, op, f"server_{op}", mb=j, device=name, key=key):
            self.math.backward(loss / s.accumulate)
            self.math.sync()
        self.record(name, msg.tensors["labels"])  # the host copy: no device round trip for the labels
        return loss.item(), int(t["labels"].shape[0])

    def _step(self, last: bool = False) -> None:
        s, meter = self.setup, self.setup.meter  # several servers: the step is inside the backhaul sync
        if s.decompose_backward:
            with meter.compute(s.server, "W", "server_W", key=self.deferred.signature()):
                self.deferred.flush()  # W of every micro-batch since the last step, right before it
                self.math.sync()
        self.optimizer_step(self.opt, last=last)

    def optimizers(self) -> dict:
        """The server's optimizer (checkpointed)."""
        return {"server": self.opt}


class SplitFrozenSequential(SplitFrozen):
    """SplitFrozen without pipelining: one micro-batch per device at a time, fused backward (ablation)."""

    name = "splitfrozen-sequential"
    sequential = True

    def __init__(self, setup: Setup):
        setup.decompose_backward = False
        super().__init__(setup)
