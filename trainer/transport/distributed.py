"""A transport over TCP channels between admitted processes: one process per server and one per device.

Ranks ``0..S-1`` are the scenario's S servers, rank ``S + i`` is device ``i``; each device talks to the
server it is assigned to (``home``) and, when it hands over, to the next one. Admission and the
channels (one per device-server pair that talks) come from :func:`trainer.transport.rendezvous.connect`:
every process proves it holds the run's secret before it gets a rank, and gloo only forms the group
and syncs the clocks. Every message is a checked header frame plus, when it carries tensors, one
payload frame (:mod:`trainer.transport.wire`); nothing from a peer is unpickled, and a frame is read
only after its header passed every check, so no message can make the receiver allocate more than the
header promised. (gloo point-to-point cannot be used for this: a peer that sends more bytes than the
receiver posted aborts the receiving process inside gloo.)

Per peer, one *sender* thread owns every write to that peer (so a header and its payloads are never
interleaved with another message) and one *receiver* thread owns every read; the role's main thread
only touches queues, so a device computes its next micro-batch while the previous one is on the wire,
and the server takes micro-batches as they arrive. The server counts the activation messages each
device may send (credits and ``fwd`` commands it sent down; a device that hands over brings at most its
credit window, once per epoch) and drops a device that sends more.

Link shaping (``--emulate links``): a message occupies the link for ``bytes * 8 / bandwidth`` seconds
(a serialiser thread sleeps that long; the next message waits for the link: a device has one uplink,
whichever server its current leg goes to, as in the simulator) and arrives ``latency``
later (a delivery thread holds it until then), as the simulator's link model does. Control messages
(credits, commands) carry no payload and take the latency only. The run's setup is not shaped (a device's
``hello``, the ``start`` of the epoch an attempt opens with: the simulator's devices begin at the run's 0), nor
reports (measurement) nor CenLoRA's shards. A time-varying link (trace,
Gilbert-Elliott, fading) holds a message until the integral of its rate covers the bits
(:mod:`trainer.transport.dynamics`).

Liveness: an idle sender sends a heartbeat every ``heartbeat_s``; a peer not heard from for
``peer_timeout`` seconds, whose connection closes, or that sends a message breaking the protocol
(a bad, forged or replayed one: it is also listed in :attr:`DistTransport.dropped`) is *lost*: the
receiver logs one line, and the role's next wait on it raises :class:`PeerLost`. On a device, a server
it has left (handover) may end its stream when its part of the run is over: that is not a loss.

Clock: at start-up every process measures its wall-clock offset to the server's (median of a few
barrier + all-gather rounds), so all trace events share the server's time origin.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch

from sfsim.network.linkrate import Rate, finish
from sfsim.outputs.trace import OPS, TraceEvent
from trainer.run.emulation import lanes_error, sleep_until
from trainer.run.measure import Meter
from trainer.transport import codecs, secure, wire
from trainer.transport.rendezvous import connect, sync_clock
from trainer.transport.runtime import DeviceLeft, Message, PeerLost
from trainer.transport.wire import HEADER_LEN, Kind, Limits, Packet, WireError

_KIND = {k.name.lower(): k for k in Kind}
STAMP_SLACK_S = 1.0  # a stamp (``at``) may be ahead of the receiver's clock by this much (the clocks' sync error)
# A test hook (fault injection, tests/test_handover_instants.py sets it in every role's process): a handover's ``moved``
# and ``join`` take this much longer to arrive than the link's latency, as if the uplink's latency were larger for them;
# the servers wait for them that much longer too (:meth:`DistTransport.uplink_latency`), as they know a link's latency.
HANDOVER_DELAY_S = 0.0


@dataclass(frozen=True)
class LinkShape:
    """A link as the scenario describes it: bit/s and one-way seconds; ``rate`` when it varies over time
    (an :class:`sfsim.network.linkrate.Rate` on the run's clock, see :mod:`trainer.transport.dynamics`)."""

    bandwidth: float
    latency: float = 0.0
    rate: Rate | None = None

    def serialise_s(self, nbytes: int) -> float:
        """Seconds the constant-rate link is busy with ``nbytes``."""
        return nbytes * 8 / self.bandwidth

    def end(self, start: float, nbytes: int) -> float:
        """When ``nbytes`` handed to the free link at ``start`` have left it (``inf``: never)."""
        if self.rate is None or nbytes == 0:
            return start + self.serialise_s(nbytes)
        return finish(self.rate, start, nbytes * 8.0)


class _Inbox:
    """Messages received from peers, per device and in arrival order, plus who is lost."""

    def __init__(self):
        self.cv = threading.Condition()
        self.by_device: dict[str, deque[Message]] = {}
        self.arrivals: deque[Message] = deque()
        self.lost: dict[str, str] = {}  # device -> reason
        self.reported: set[str] = set()

    def put(self, msg: Message) -> None:
        with self.cv:
            self.by_device.setdefault(msg.device, deque()).append(msg)
            self.arrivals.append(msg)
            self.cv.notify_all()

    def lose(self, device: str, reason: str) -> None:
        with self.cv:
            if device not in self.lost:
                self.lost[device] = reason
                self.cv.notify_all()

    def take(self, device: str | None, kinds: set[str] | None, stale: callable) -> Message:
        """The oldest message from ``device`` (any device: ``None``); raise PeerLost for a lost one."""
        with self.cv:
            while True:
                stale()
                for msg in (self.arrivals if device is None else self.by_device.get(device, ())):
                    if kinds is None or msg.kind in kinds:
                        self.arrivals.remove(msg)
                        self.by_device[msg.device].remove(msg)
                        return msg
                for d, why in self.lost.items():
                    if (device is None or d == device) and d not in self.reported:
                        self.reported.add(d)
                        raise PeerLost(d, why)
                if device is not None and device in self.lost:
                    raise PeerLost(device, self.lost[device])
                self.cv.wait(0.2)


class DistTransport:
    """The :class:`~trainer.transport.runtime.Transport` of one process of a distributed run.

    Args:
        rank: ``j`` for server ``j``, ``servers + i`` for device ``i``.
        names: device names in scenario order.
        channels: peer rank -> admitted :class:`~trainer.transport.secure.Channel` (from :func:`connect`;
            a server's channels to other servers are the backhaul's, not this transport's).
        meter: this process's meter (bytes, link events).
        limits: what an activation/adapter message may look like (checked before allocating).
        shaping: device name -> (uplink, downlink) :class:`LinkShape`; ``None``: no shaping.
        peer_timeout: seconds of silence after which a peer is lost.
        heartbeat_s: an idle sender sends a heartbeat this often.
        log: where one-line protocol errors go.
        presence: on a device with availability, its ``trainer.transport.dynamics.Presence``: a micro-batch whose
            send would end after the device is gone is refused with :class:`DeviceLeft`.
        servers: server processes (ranks ``0..servers-1``; device ``i`` is then rank ``servers + i``).
        home: device name -> the rank of its server (default: every device on rank 0); :meth:`move` changes it.
        visits: device name -> every server rank it talks to in the run (its handovers'; default: its home).
            ``shaping`` may then give a device's links per server rank: name -> {rank: (uplink, downlink)}.
        window: credits a device holds at most (a device that hands over may bring that many to this server).
    """

    arrival_order = True  # the server may take micro-batches in true arrival order
    moves_ahead = False  # a server's method takes a moved ahead of its leg's last micro-batch (SplitFrozen)
    departed = None  # a server's (device, t) -> gone for good at t (trainer.transport.dynamics.departed): sends uncounted
    opening: int | None = None  # a server's first epoch of this attempt (the runner sets it): its ``start`` is setup

    def __init__(self, rank: int, names: list[str], channels: dict[int, secure.Channel], meter: Meter, limits: Limits,
                 shaping: dict[str, tuple[LinkShape, LinkShape]] | None = None, peer_timeout: float = 30.0,
                 heartbeat_s: float = 0.5, log=None, presence=None, servers: int = 1,
                 home: dict[str, int] | None = None, visits: dict[str, list[int]] | None = None, window: int = 0):
        self.rank, self.names, self.meter, self.limits = rank, list(names), meter, limits
        self.servers, self.home = servers, dict(home or dict.fromkeys(names, 0))
        self.visits = visits or {n: [h] for n, h in self.home.items()}
        self.presence, self.window = presence, window
        self.shaping, self.peer_timeout, self.heartbeat_s = shaping, peer_timeout, heartbeat_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.is_server = rank < servers
        self.inbox = _Inbox()
        self.channels = channels
        self.header_bytes = 0  # everything but tensor bytes: headers, frame lengths, counters and tags
        self.dropped: dict[str, str] = {}  # peers dropped for a bad, forged or replayed message -> why
        self._permits: dict[str, int] = {}  # device -> activation messages it may still send (credits, fwd)
        self._joined: dict[str, int] = {}  # device -> 1 + the epoch of its join here (gone on its ``moved``)
        self._brought: dict[tuple[str, int], int] = {}  # (device, epoch) -> credits its joins here brought
        self._next: dict[str, tuple[int, int]] = {}  # device -> (epoch, the micro-batch it sends here next)
        self._plock = threading.Lock()
        self._closing = threading.Event()
        peers = ([servers + i for i, n in enumerate(self.names) if rank in self.visits[n]] if self.is_server
                 else list(self.visits[self.names[rank - servers]]))
        self._ended = {p: threading.Event() for p in peers}
        self._last_seen = {p: time.monotonic() for p in peers}
        self._out: dict[int, queue.Queue] = {p: queue.Queue() for p in peers}
        self._wire: dict[int, queue.Queue] = {p: queue.Queue() for p in peers}
        self._free = dict.fromkeys(peers + [-1], 0.0)  # when the shaped link to each peer (-1: a device's uplink) is free
        self._threads = []
        for p in peers:
            self._start(self._receiver, p)
            self._start(self._deliverer, p)
            if shaping is not None:
                self._start(self._serialiser, p)

    # -- what the roles call ------------------------------------------------------------------
    def send_up(self, msg: Message, ahead=None) -> None:
        """Device -> its server (encoded in the run's codec here, then queued). Activations return when their
        send starts: a device holds at most one finished activation, as the simulator's devices do (its next
        forward starts when the link takes this one; the gap is a ``wait`` on its lane). ``ahead(end)``: a
        message to queue just before this one, given when this one's send would end (shaped, a device that
        stays online), or None."""
        msg = codecs.encode_message(msg, self.limits.codec, self.meter, msg.device)
        link = self._link(self.home[msg.device]) if ahead is not None and self.presence is None else None
        first = None if link is None else ahead(link.end(max(self.meter.now(), self._free[-1]), msg.nbytes))
        if first is not None:  # no tensors: it takes no time on the link, and the server reads it first
            self._enqueue(self.home[first.device], first)
        start, now = self._enqueue(self.home[msg.device], msg), self.meter.now()
        if msg.kind == "act" and start > now:
            self.meter.events.append(TraceEvent(msg.device, "wait", now, start - now, msg.mb, msg.device))
            _sleep_until(self.meter, start, msg.device)

    def wait_uplink(self, device: str, mb: int) -> None:
        """Device side, shaped: sleep until the uplink is free (a ``wait`` on its lane), so that a handover decided
        next is the leg holding when the link takes micro-batch ``mb`` (the simulator's rule)."""
        start, now = self._free[-1], self.meter.now()
        if self.shaping is not None and start > now:
            self.meter.events.append(TraceEvent(device, "wait", now, start - now, mb, device))
            _sleep_until(self.meter, start, device)

    def send_down(self, msg: Message) -> None:
        """Server -> device ``msg.device`` (queued; a lost device's messages are dropped)."""
        if msg.device in self.inbox.lost:
            return
        with self._plock:  # counted before it leaves: the device can only use a permit it was sent
            if msg.kind == "start":
                self._permits[msg.device] = msg.aux
                self._next[msg.device] = (msg.epoch, msg.mb)
            elif msg.kind in ("credit", "fwd"):
                self._permits[msg.device] = self._permits.get(msg.device, 0) + 1
        msg = codecs.encode_message(msg, self.limits.codec, self.meter, self.meter.server_lane)
        self._enqueue(self.names.index(msg.device) + self.servers, msg)

    def recv_up(self, device: str | None, kinds: set[str] | None = None) -> Message:
        """The oldest message from ``device`` (``None``: from any device), optionally of ``kinds``, decoded."""
        return self._decode(self.inbox.take(device, kinds, self._check_stale), self.meter.server_lane, "")

    def poll_up(self, kinds: set[str], before: float | None = None) -> Message | None:
        """The oldest message of ``kinds`` from any device if one is waiting, else None (PeerLost for a lost one).
        ``before``: only up to the first message stamped after that instant (``Message.at``), which waits (a server
        holding a round's invitation answers it first: the simulator delivered that message after the invitation)."""
        with self.inbox.cv:
            first = next((m for m in self.inbox.arrivals if m.kind in kinds), None)
            if first is not None and before is not None and first.at is not None and first.at > before:
                return None
            if first is None and not any(d not in self.inbox.reported for d in self.inbox.lost):
                return None
        return self.recv_up(None, kinds)

    def stamped_by(self, t: float, kinds: set[str]) -> bool:
        """Whether a message of ``kinds`` stamped at or before ``t`` (``Message.at``) is here, unread."""
        with self.inbox.cv:
            return any(m.kind in kinds and m.at is not None and m.at <= t for m in self.inbox.arrivals)

    def uplink_latency(self, device: str) -> float:
        """Server side: seconds a message of ``device`` with no payload takes to reach this server (its leg's uplink
        latency here, plus :data:`HANDOVER_DELAY_S` for a handover's messages); 0 unshaped."""
        shape = None if self.shaping is None else self.shaping.get(device)
        if shape is None:
            return HANDOVER_DELAY_S
        if isinstance(shape, dict):
            shape = shape.get(self.rank)
        return (0.0 if shape is None else shape[0].latency) + HANDOVER_DELAY_S

    def recv_down(self, device: str) -> Message:
        """The oldest message from a server (PeerLost(device) when its server is gone), decoded."""
        return self._decode(self.inbox.take(device, None, self._check_stale), device, " (its server)")

    def _decode(self, msg: Message, lane: str, who: str) -> Message:
        """Decode a codec payload (its values were checked on receipt: ``wire.CONTENT_CHECKS``); should one
        still fail, its sender is lost like any bad message."""
        try:
            return codecs.decode_message(msg, self.limits.codec, self.limits.hidden, self.meter, lane)
        except codecs.CodecError as err:
            self.log(f"bad message from {msg.device}{who}: {err}; dropping {msg.device}{who}")
            self.dropped[msg.device] = f"bad message: {err}"
            self.inbox.lose(msg.device, f"bad message: {err}")
            with self.inbox.cv:
                self.inbox.reported.add(msg.device)  # this PeerLost is the one report of it
            raise PeerLost(msg.device, f"bad message: {err}") from None

    def send_to(self, rank: int, msg: Message) -> None:
        """Device -> server ``rank``, which need not be its own (a handover's ``join``)."""
        self._enqueue(rank, msg)

    def move(self, device: str, rank: int) -> None:
        """Device ``device`` hands over: what it sends from now on goes to server ``rank``, on that leg's links."""
        self.home[device] = rank

    @property
    def lost(self) -> dict[str, str]:
        """Peers lost so far: name -> reason."""
        return dict(self.inbox.lost)

    def drop(self, device: str, reason: str) -> None:
        """Stop talking to ``device`` (e.g. after it sent something unusable)."""
        self.inbox.lose(device, reason)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued message has been handed to the wire (or its peer is lost)."""
        end = time.monotonic() + timeout
        for p in self._out:
            while time.monotonic() < end and self._peer_name(p) not in self.inbox.lost and \
                    (self._out[p].unfinished_tasks or self._wire[p].unfinished_tasks):
                time.sleep(0.01)

    def close(self, wait_s: float = 2.0) -> None:
        """Flush, stop the sender threads, end each stream and wait (briefly) for the peers to end theirs."""
        self.flush()
        self._closing.set()
        for ch in self.channels.values():
            ch.shutdown()
        end = time.monotonic() + wait_s
        for ev in self._ended.values():
            ev.wait(max(0.0, end - time.monotonic()))

    # -- threads ------------------------------------------------------------------------------
    def _start(self, fn, p: int) -> None:
        t = threading.Thread(target=fn, args=(p,), daemon=True, name=f"{fn.__name__}-{p}")
        t.start()
        self._threads.append(t)

    def _peer_name(self, p: int) -> str:
        """The inbox key of peer ``p``: a device's name; on a device, its own name stands for its servers."""
        return self.names[p - self.servers] if p >= self.servers else self.names[self.rank - self.servers]

    def _left_behind(self, p: int) -> bool:
        """On a device: whether server ``p`` is no longer its server (a handover left it)."""
        return not self.is_server and self.home[self._peer_name(p)] != p

    def _link(self, p: int) -> LinkShape | None:
        """The shaped link this process sends on towards peer ``p``."""
        if self.shaping is None:
            return None
        shape = self.shaping[self._peer_name(p)]
        if isinstance(shape, dict):  # per server: the links of the leg to that server
            shape = shape[p if p < self.servers else self.rank]
        up, down = shape
        return up if p < self.servers else down

    def _enqueue(self, p: int, msg: Message) -> float:
        """Queue ``msg``; shaped, its time on the link is fixed now (the link is first come, first served).
        Returns when its send starts."""
        now = self.meter.now()
        link = None if self._setup(msg) else self._link(p)
        start = end = now
        lane = p if self.is_server else -1  # a device has one uplink, whichever server its leg goes to
        if link is not None:
            start = max(now, self._free[lane])
            if self.is_server and msg.tensors:  # a dropping device not online yet takes it once it is
                start = max(start, getattr(self.departed, "joins", {}).get(msg.device, start))
            end = link.end(start, msg.nbytes)
        if self.presence is not None and msg.kind in ("act", "adapter") and (end == math.inf or end > self.presence.leave):
            raise DeviceLeft(self.names[self.rank - self.servers], "gone before its send would end")
        if link is None:
            self._wire[p].put((msg, now, now + _held(msg) if _held(msg) else 0.0, None))
            return now
        self._free[lane] = end
        self._out[p].put((msg, start, end, None))
        return start

    def _setup(self, msg: Message) -> bool:
        """Whether ``msg`` is not the scenario's traffic, so no link shapes it: a report is measurement; CenLoRA's
        shards are the data its model places at the server before training (no device links: the simulator's
        sfsim.schedules.cenlora, trainer.transport.dynamics); a device's ``hello`` and the ``start`` of the epoch this
        attempt opens with (:attr:`opening`) are the run's setup: the simulator's devices hold their credits at the
        run's 0 and forward at once, and the rendezvous told every process where the run's clock starts (shaped, a
        device with 1 s of latency each way started 2 s late, and every other device 1 s late, issue 21)."""
        return msg.kind in ("report", "shard", "hello") or (msg.kind == "start" and msg.epoch == self.opening)

    def _serialiser(self, p: int) -> None:
        """Hold each message until it has left the link, then pass it on with its due time (+ latency)."""
        latency = self._link(p).latency
        while not self._closing.is_set():
            try:
                msg, start, end, _ = self._out[p].get(timeout=0.1)
            except queue.Empty:
                continue
            _sleep_until(self.meter, end)
            self._wire[p].put((msg, start, end + latency + _held(msg), end - start))
            self._out[p].task_done()

    def _deliverer(self, p: int) -> None:
        """The only thread that sends to peer ``p``: messages at their due time, heartbeats when idle."""
        dev_index = (self.rank - self.servers) if not self.is_server else None
        while not self._closing.is_set():
            try:
                msg, start, due, ser = self._wire[p].get(timeout=self.heartbeat_s)
            except queue.Empty:
                msg = None
            if self._peer_name(p) in self.inbox.lost or self._ended[p].is_set():  # nothing more goes there
                if msg is not None:
                    self._wire[p].task_done()
                continue
            try:
                if msg is None:
                    self._send(p, Packet(Kind.HEARTBEAT, dev_index if dev_index is not None else p - self.servers))
                    continue
                # a shaped or held message: how late it left, on its link's lane (trainer.run.emulation)
                _sleep_until(self.meter, due, f"{'downlink' if self.is_server else 'link'}:{msg.device}" if due else None)
                idx = self.names.index(msg.device) if msg.device in self.names else (dev_index or 0)
                pkt = Packet(_KIND[msg.kind], idx, msg.mb, msg.epoch, msg.aux,
                             {k: v.detach().contiguous() for k, v in msg.tensors.items()}, at=_stamp(msg.at))
                self._send(p, pkt)
                if pkt.tensors and msg.kind != "report" and not (self.departed and self.departed(msg.device, start)):
                    dur = ser if ser is not None else self.meter.now() - start
                    parts = None  # a pausing device's uplink carries only online: the send in its online parts
                    if self.presence is not None and ser is not None:
                        parts = self.presence.online_parts(start, start + dur)
                    self.meter.transfer(msg.device, pkt.nbytes, start, dur, msg.mb, down=self.is_server, parts=parts)
            except (OSError, RuntimeError, WireError) as err:
                if self._left_behind(p):  # a server this device left has ended its part of the run
                    self._ended[p].set()
                else:
                    self.inbox.lose(self._peer_name(p), f"send failed: {_first_line(err)}")
            finally:
                if msg is not None:
                    self._wire[p].task_done()

    def _send(self, p: int, pkt: Packet) -> None:
        """One message as two frames: the header, then (when it has tensors) every payload back to back."""
        ch = self.channels[p]
        self.header_bytes += ch.send(wire.encode_header(pkt).numpy().tobytes())
        if pkt.tensors:
            self.header_bytes += ch.send(*wire.tensor_views(pkt.tensors)) - pkt.nbytes

    def _receiver(self, p: int) -> None:
        """The only thread that reads from peer ``p``: every field is checked before it is used."""
        name = self._peer_name(p)
        try:
            while not self._closing.is_set() and name not in self.inbox.lost:
                try:
                    pkt, tensors = self._read(p)
                except WireError as err:
                    who = f"server {p}" if p < self.servers else name
                    self.log(f"bad message from rank {p} ({who}): {err}; dropping {who}")
                    self.dropped[name] = f"bad message: {err}"
                    self.inbox.lose(name, f"bad message: {err}")
                    self.channels[p].close()
                    return
                except (OSError, RuntimeError) as err:
                    if not self._closing.is_set() and not self._left_behind(p):
                        self.inbox.lose(name, f"connection: {_first_line(err)}")
                    self.channels[p].close()  # the peer's own reader sees the end at once
                    return
                if pkt is not None:
                    self.inbox.put(Message(self.names[pkt.device], pkt.mb, tensors, kind=pkt.kind.name.lower(),
                                           aux=pkt.aux, epoch=pkt.epoch, at=None if pkt.at < 0 else pkt.at / 1e6))
        finally:
            self._ended[p].set()

    def _read(self, p: int) -> tuple[Packet | None, dict]:
        """The next message from ``p`` (``None`` for a heartbeat); raise WireError on anything off-protocol."""
        ch = self.channels[p]
        raw = ch.recv(HEADER_LEN * 8)
        self._last_seen[p] = time.monotonic()
        pkt, specs = wire.decode_header(torch.frombuffer(raw, dtype=torch.int64), wire.UP if self.is_server else wire.DOWN)
        if self.is_server and pkt.device != p - self.servers:
            raise WireError(f"device index {pkt.device} does not match the sender's rank {p}")
        if not self.is_server and pkt.device != self.rank - self.servers and pkt.kind != Kind.HEARTBEAT:
            raise WireError(f"message for device index {pkt.device} reached rank {self.rank}")
        wire.check_specs(pkt, specs, self.limits)
        if self.is_server:
            if pkt.at / 1e6 > self.meter.now() + STAMP_SLACK_S:  # (-1: none) a send cannot end before it starts
                raise WireError(f"a {pkt.kind.name} stamped {pkt.at / 1e6:.3f} s, after this server's clock "
                                f"({self.meter.now():.3f} s) by more than {STAMP_SLACK_S:g} s")
            self._permit(self.names[p - self.servers], pkt)
        tensors = wire.from_bytes(ch.recv(wire.payload_bytes(specs)), specs) if specs else {}
        self._last_seen[p] = time.monotonic()
        wire.check_content(pkt, tensors, self.limits)
        return (None, {}) if pkt.kind == Kind.HEARTBEAT else (pkt, tensors)

    def _permit(self, name: str, pkt: Packet) -> None:
        """Credits on receipt: an activation message spends a permit. A handover's ``join`` opens at most the
        credit window (the device's fresh account here, as the simulator's per-server accounts) once per visit: again
        only after the device has ``moved`` away from here or in a later epoch; and all the joins of one epoch
        bring at most the device's budget (one micro-batch holds at least one sample). ``moved`` takes the
        credits it held here away with it, but one when it goes ahead of the one micro-batch still to come."""
        with self._plock:
            if pkt.kind == Kind.ACT:
                if self._permits.get(name, 0) <= 0:
                    raise WireError("activations sent without a credit")
                self._permits[name] -= 1
                self._next[name] = (pkt.epoch, pkt.mb + 1)
            elif pkt.kind == Kind.MOVED:  # ahead of its leg's last micro-batch (mb counts it), one credit stays for it
                ahead = self.moves_ahead and self._next.get(name) == (pkt.epoch, pkt.mb - 1)
                self._permits[name] = min(self._permits.get(name, 0), 1) if ahead else 0
                self._joined.pop(name, None)
            elif pkt.kind == Kind.JOIN and pkt.aux > 0 and self._joined.get(name, -1) < pkt.epoch + 1:
                self._joined[name] = pkt.epoch + 1  # here, in this epoch: a second join brings nothing
                self._next[name] = (pkt.epoch, pkt.mb)
                budget = self.limits.budget[pkt.device] if 0 <= pkt.device < len(self.limits.budget) else pkt.aux
                used = self._brought.get((name, pkt.epoch), 0)
                give = max(0, min(pkt.aux, self.window, budget - used))
                self._brought[(name, pkt.epoch)] = used + give
                self._permits[name] = self._permits.get(name, 0) + give

    def _check_stale(self) -> None:
        now = time.monotonic()
        for p, seen in list(self._last_seen.items()):
            name = self._peer_name(p)
            if self._left_behind(p):  # a server this device left: its silence is not this device's concern
                continue
            if now - seen > self.peer_timeout and name not in self.inbox.lost:
                self.log(f"warning: {name} silent for {now - seen:.1f} s (peer timeout {self.peer_timeout:g} s); "
                         f"treating it as lost")
                self.inbox.lose(name, f"silent for more than {self.peer_timeout:g} s")


def _held(msg: Message) -> float:
    """Seconds :data:`HANDOVER_DELAY_S` holds ``msg`` back (a handover's ``moved`` and ``join``), else 0."""
    return HANDOVER_DELAY_S if msg.kind in ("moved", "join") else 0.0


def _stamp(at: float | None) -> int:
    """A message's ``at`` (s) as the header's microseconds (-1: none)."""
    return -1 if at is None else min(max(round(at * 1e6), 0), wire.MAX_AT_US)


def _sleep_until(meter: Meter, t: float, lane: str | None = None) -> None:
    """Sleep until ``meter.now() >= t``; with a ``lane``, record how late it woke there (``meter.lag``)."""
    sleep_until(meter.now, t, meter.lag if lane else None, lane or "")


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split("] ", 1)[-1][:200]


def report_blob(obj: dict) -> torch.Tensor:
    """A JSON-able dict as a uint8 tensor (a device's report to the server)."""
    return torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).clone()


#: What a device's end-of-run report holds: key -> JSON type (numbers finite and >= 0 except the clock offset).
REPORT_KEYS = {"device": str, "flops": int, "uplink_bytes": int, "phase_s": dict, "peak_rss_bytes": int,
               "cpu_s": float, "clock_offset_s": float, "stretched_s": float, "header_bytes": int, "events": list,
               "handovers": list, "emulation": dict}
#: What each handover a device reports holds (trainer.methods.splitfrozen): key -> JSON type.
HANDOVER_KEYS = {"device": str, "at_s": float, "from": str, "to": str, "epoch": int, "sent_before": int}


def parse_report(blob: torch.Tensor, device: str | None = None, servers: list[str] | None = None) -> dict:
    """Inverse of :func:`report_blob`, checked against :data:`REPORT_KEYS`; raise ``ValueError`` on anything else
    (``servers``: the run's server names, which each reported handover must go from and to).

    Plain JSON only: no NaN or infinity, no nesting beyond the schema (a deeply nested document is
    refused by the parser's recursion limit and reported as a ``ValueError``), trace events of
    :class:`~sfsim.outputs.trace.TraceEvent`'s six fields with a known op.
    """
    try:
        obj = json.loads(bytes(blob.numpy()).decode(), parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"a report must be plain JSON ({type(err).__name__})") from None
    if not isinstance(obj, dict) or set(obj) != set(REPORT_KEYS):
        raise ValueError(f"a report must be a JSON object with the keys {sorted(REPORT_KEYS)}")
    for key, typ in REPORT_KEYS.items():
        v = obj[key]
        ok = isinstance(v, typ) or (typ is float and isinstance(v, int))
        if not ok or isinstance(v, bool) or (typ in (int, float) and key != "clock_offset_s" and v < 0):
            raise ValueError(f"report field {key!r} must be a{' non-negative' if typ in (int, float) else ''} "
                             f"{typ.__name__}, got {str(v)[:40]!r}")
    if device is not None and obj["device"] != device:
        raise ValueError(f"a report for {obj['device'][:40]!r} came from {device}")
    if not all(isinstance(k, str) and _number(v) and v >= 0 for k, v in obj["phase_s"].items()):
        raise ValueError("report field 'phase_s' must map names to non-negative seconds")
    why = lanes_error(obj["emulation"])  # its emulated ops' overruns, per lane (trainer.run.emulation)
    if why is not None:
        raise ValueError(f"report field 'emulation': {why}")
    for e in obj["events"]:
        if not (isinstance(e, list) and len(e) == len(TraceEvent._fields) and isinstance(e[0], str) and e[1] in OPS
                and _number(e[2]) and _number(e[3]) and e[3] >= 0 and isinstance(e[4], int) and isinstance(e[5], str)):
            raise ValueError(f"report event {str(e)[:80]} is not (lane, op, start, dur, mb, device)")
    for h in obj["handovers"]:
        if not (isinstance(h, dict) and set(h) == set(HANDOVER_KEYS) and h["device"] == obj["device"]
                and all(_number(h[k]) and h[k] >= 0 if t is not str else isinstance(h[k], str)
                        for k, t in HANDOVER_KEYS.items()) and isinstance(h["epoch"], int)
                and isinstance(h["sent_before"], int)):
            raise ValueError(f"report handover {str(h)[:80]} is not {sorted(HANDOVER_KEYS)} of this device")
        if servers is not None and not {h["from"], h["to"]} <= set(servers):
            raise ValueError(f"report handover {str(h)[:80]} names a server the run does not have")
    return obj


def _no_constant(name: str):
    raise ValueError(f"a report may not hold {name}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


__all__ = ["DistTransport", "LinkShape", "connect", "sync_clock", "report_blob", "parse_report"]  # connect, sync_clock: rendezvous
