"""A transport over ``torch.distributed`` (gloo, TCP): one process per device and one for the server.

Ranks ``0..S-1`` are the scenario's S servers, rank ``S + i`` is device ``i``; each device talks to the
server it is assigned to (``home``). Every message crosses the wire
as a fixed integer header plus raw tensor payloads (:mod:`trainer.transport.wire`); nothing from a peer is
unpickled. Per peer, one *sender* thread owns every ``dist.send`` to that peer (so a header and its
payloads are never interleaved with another message) and one *receiver* thread owns every
``dist.recv`` from it; the role's main thread only touches queues, so a device computes its next
micro-batch while the previous one is on the wire, and the server takes micro-batches as they arrive.

Link shaping (``--emulate links``): a message occupies the link for ``bytes * 8 / bandwidth`` seconds
(a serialiser thread sleeps that long; the next message waits for the link) and arrives ``latency``
later (a delivery thread holds it until then), as the simulator's link model does. Control messages
(credits, commands) carry no payload and take the latency only. A time-varying link (trace,
Gilbert-Elliott, fading) holds a message until the integral of its rate covers the bits
(:mod:`trainer.transport.dynamics`).

Liveness: an idle sender sends a heartbeat every ``heartbeat_s``; a peer not heard from for
``peer_timeout`` seconds, whose connection closes, or that sends a message breaking the protocol is
*lost*: the receiver logs one line, and the role's next wait on it raises :class:`PeerLost`.

Clock: at start-up every process measures its wall-clock offset to the server's (median of a few
barrier + all-gather rounds), so all trace events share the server's time origin.
"""

from __future__ import annotations

import datetime
import json
import math
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sfsim.errors import SfsimError
from sfsim.network.linkrate import Rate, finish
from trainer.run.measure import Meter
from trainer.transport import wire
from trainer.transport.runtime import DeviceLeft, Message, PeerLost
from trainer.transport.wire import HEADER_LEN, Kind, Limits, Packet, WireError

_KIND = {k.name.lower(): k for k in Kind}


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


def init(rank: int, world: int, master: str | None, timeout_s: float = 600.0) -> None:
    """Join the gloo process group at ``master`` (``host:port``; ``None``: torchrun's environment)."""
    if master is None:
        method = "env://"  # torchrun: MASTER_ADDR/MASTER_PORT (and its agent's store)
    else:
        host, _, port = master.rpartition(":")
        if not host or not port.isdigit():
            raise SfsimError(f"--master {master!r} is not HOST:PORT (e.g. 10.0.0.2:29500)")
        method = f"tcp://{host}:{port}"
    dist.init_process_group("gloo", init_method=method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def sync_clock(meter: Meter, rounds: int = 5) -> float:
    """Put ``meter`` on the server's clock; return this process's wall-clock offset to rank 0 (s).

    Each round: a barrier, then every rank samples ``time.time()`` and all ranks all-gather the
    samples; the offset is the median over rounds of (own sample - rank 0's sample). The shared time
    origin is rank 0's sample of the last round.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    offsets, origin = [], 0.0
    for _ in range(rounds):
        dist.barrier()
        mine = torch.tensor([time.time()], dtype=torch.float64)
        perf = time.perf_counter()
        got = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(got, mine)
        offsets.append(float(got[rank] - got[0]))
        origin, my_wall, my_perf = float(got[0]), float(mine), perf
    offset = sorted(offsets)[len(offsets) // 2]
    # meter.now() = perf_counter() - t0 = seconds since the origin, on the server's clock
    meter.t0 = my_perf - ((my_wall - offset) - origin)
    return offset


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
    """

    arrival_order = True  # the server may take micro-batches in true arrival order

    def __init__(self, rank: int, names: list[str], meter: Meter, limits: Limits,
                 shaping: dict[str, tuple[LinkShape, LinkShape]] | None = None, peer_timeout: float = 30.0,
                 heartbeat_s: float = 0.5, log=None, presence=None, servers: int = 1,
                 home: dict[str, int] | None = None, visits: dict[str, list[int]] | None = None):
        self.rank, self.names, self.meter, self.limits = rank, list(names), meter, limits
        self.servers, self.home = servers, dict(home or dict.fromkeys(names, 0))
        self.visits = visits or {n: [h] for n, h in self.home.items()}
        self.presence = presence
        self.shaping, self.peer_timeout, self.heartbeat_s = shaping, peer_timeout, heartbeat_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.is_server = rank < servers
        self.inbox = _Inbox()
        self.header_bytes = 0
        self._closing = threading.Event()
        peers = ([servers + i for i, n in enumerate(self.names) if rank in self.visits[n]] if self.is_server
                 else list(self.visits[self.names[rank - servers]]))
        self._last_seen = {p: time.monotonic() for p in peers}
        self._out: dict[int, queue.Queue] = {p: queue.Queue() for p in peers}
        self._wire: dict[int, queue.Queue] = {p: queue.Queue() for p in peers}
        self._free = dict.fromkeys(peers, 0.0)  # when the shaped link to each peer is free again
        self._threads = []
        for p in peers:
            self._start(self._receiver, p)
            self._start(self._deliverer, p)
            if shaping is not None:
                self._start(self._serialiser, p)

    # -- what the roles call ------------------------------------------------------------------
    def send_up(self, msg: Message) -> None:
        """Device -> server (queued; returns at once)."""
        self._enqueue(self.home[msg.device], msg)

    def send_down(self, msg: Message) -> None:
        """Server -> device ``msg.device`` (queued; a lost device's messages are dropped)."""
        if msg.device in self.inbox.lost:
            return
        self._enqueue(self.names.index(msg.device) + self.servers, msg)

    def recv_up(self, device: str | None, kinds: set[str] | None = None) -> Message:
        """The oldest message from ``device`` (``None``: from any device), optionally of ``kinds``."""
        return self.inbox.take(device, kinds, self._check_stale)

    def recv_down(self, device: str) -> Message:
        """The oldest message from the server (PeerLost(device) when the server is gone)."""
        return self.inbox.take(device, None, self._check_stale)

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

    def close(self) -> None:
        """Flush, then stop the sender threads (receivers stay blocked in gloo; they are daemons)."""
        self.flush()
        self._closing.set()

    # -- threads ------------------------------------------------------------------------------
    def _start(self, fn, p: int) -> None:
        t = threading.Thread(target=fn, args=(p,), daemon=True, name=f"{fn.__name__}-{p}")
        t.start()
        self._threads.append(t)

    def _peer_name(self, p: int) -> str:
        """The inbox key of peer ``p``: a device's name; on a device, its own name stands for the server."""
        return self.names[p - self.servers] if p >= self.servers else self.names[self.rank - self.servers]

    def _link(self, p: int) -> LinkShape | None:
        """The shaped link this process sends on towards peer ``p``."""
        if self.shaping is None:
            return None
        dev = self._peer_name(p)
        shape = self.shaping[dev]
        if isinstance(shape, dict):  # per server: the links of the leg to that server
            shape = shape[p if p < self.servers else self.rank]
        up, down = shape
        return up if p < self.servers else down

    def _enqueue(self, p: int, msg: Message) -> None:
        """Queue ``msg``; shaped, its time on the link is fixed now (the link is first come, first served)."""
        now, link = self.meter.now(), self._link(p)
        start = end = now
        if link is not None:
            start = max(now, self._free[p])
            end = link.end(start, msg.nbytes)
        if self.presence is not None and msg.kind in ("act", "adapter") and (end == math.inf or end > self.presence.leave):
            raise DeviceLeft(self.names[self.rank - self.servers], "gone before its send would end")
        if link is None:
            self._wire[p].put((msg, now, 0.0, None))
            return
        self._free[p] = end
        self._out[p].put((msg, start, end, None))

    def _serialiser(self, p: int) -> None:
        """Hold each message until it has left the link, then pass it on with its due time (+ latency)."""
        latency = self._link(p).latency
        while not self._closing.is_set():
            try:
                msg, start, end, _ = self._out[p].get(timeout=0.1)
            except queue.Empty:
                continue
            _sleep_until(self.meter, end)
            self._wire[p].put((msg, start, end + latency, end - start))
            self._out[p].task_done()

    def _deliverer(self, p: int) -> None:
        """The only thread that sends to peer ``p``: messages at their due time, heartbeats when idle."""
        dev_index = (self.rank - self.servers) if not self.is_server else None
        while not self._closing.is_set():
            try:
                msg, start, due, ser = self._wire[p].get(timeout=self.heartbeat_s)
            except queue.Empty:
                msg = None
            if self._peer_name(p) in self.inbox.lost:  # nothing more goes to a lost peer
                if msg is not None:
                    self._wire[p].task_done()
                continue
            try:
                if msg is None:
                    self._send(p, Packet(Kind.HEARTBEAT, dev_index if dev_index is not None else p - self.servers))
                    continue
                _sleep_until(self.meter, due)
                idx = self.names.index(msg.device) if msg.device in self.names else (dev_index or 0)
                pkt = Packet(_KIND[msg.kind], idx, msg.mb, msg.epoch, msg.aux,
                             {k: v.detach().contiguous() for k, v in msg.tensors.items()})
                self._send(p, pkt)
                if pkt.tensors:  # shaped: the link is busy for the serialisation (the latency is a delay)
                    dur = ser if ser is not None else self.meter.now() - start
                    parts = None  # a pausing device's uplink carries only online: the send in its online parts
                    if self.presence is not None and ser is not None:
                        parts = self.presence.online_parts(start, start + dur)
                    self.meter.transfer(msg.device, pkt.nbytes, start, dur, msg.mb, down=self.is_server, parts=parts)
            except (RuntimeError, WireError) as err:
                self.inbox.lose(self._peer_name(p), f"send failed: {_first_line(err)}")
            finally:
                if msg is not None:
                    self._wire[p].task_done()

    def _send(self, p: int, pkt: Packet) -> None:
        dist.send(wire.encode_header(pkt), p, tag=0)
        self.header_bytes += HEADER_LEN * 8
        for t in pkt.tensors.values():
            dist.send(t, p, tag=1)

    def _receiver(self, p: int) -> None:
        """The only thread that receives from peer ``p``: check each header before allocating payloads."""
        name = self._peer_name(p)
        allowed = wire.UP if self.is_server else wire.DOWN
        while not self._closing.is_set() and name not in self.inbox.lost:
            try:
                h = torch.empty(HEADER_LEN, dtype=torch.int64)
                dist.recv(h, src=p, tag=0)
                self._last_seen[p] = time.monotonic()
                pkt, specs = wire.decode_header(h, allowed)
                if self.is_server and pkt.device != p - self.servers:
                    raise WireError(f"device index {pkt.device} does not match the sender's rank {p}")
                wire.check_specs(pkt, specs, self.limits)
                tensors = {}
                for tname, dtype, shape in specs:
                    t = torch.empty(shape, dtype=dtype)
                    dist.recv(t, src=p, tag=1)
                    tensors[tname] = t
                self._last_seen[p] = time.monotonic()
                if pkt.kind == Kind.HEARTBEAT:
                    continue
                if not self.is_server and pkt.device != self.rank - self.servers:
                    raise WireError(f"message for device index {pkt.device} reached rank {self.rank}")
                device = self.names[pkt.device]
                self.inbox.put(Message(device, pkt.mb, tensors, kind=pkt.kind.name.lower(), aux=pkt.aux,
                                       epoch=pkt.epoch))
            except WireError as err:
                who = "the server" if p == 0 else name
                self.log(f"bad message from rank {p} ({who}): {err}; dropping {who}")
                self.inbox.lose(name, f"bad message: {err}")
                return
            except RuntimeError as err:
                if not self._closing.is_set():
                    self.inbox.lose(name, f"connection: {_first_line(err)}")
                return

    def _check_stale(self) -> None:
        now = time.monotonic()
        for p, seen in self._last_seen.items():
            name = self._peer_name(p)
            if now - seen > self.peer_timeout and name not in self.inbox.lost:
                self.log(f"warning: {name} silent for {now - seen:.1f} s (peer timeout {self.peer_timeout:g} s); "
                         f"treating it as lost")
                self.inbox.lose(name, f"silent for more than {self.peer_timeout:g} s")


def _sleep_until(meter: Meter, t: float) -> None:
    dt = t - meter.now()
    if dt > 0:
        time.sleep(dt)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split("] ", 1)[-1][:200]


def report_blob(obj: dict) -> torch.Tensor:
    """A JSON-able dict as a uint8 tensor (a device's report to the server)."""
    return torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).clone()


def parse_report(blob: torch.Tensor) -> dict:
    """Inverse of :func:`report_blob` (plain JSON; raises ``ValueError`` on anything else)."""
    obj = json.loads(bytes(blob.tolist()).decode())
    if not isinstance(obj, dict):
        raise ValueError("a report must be a JSON object")
    return obj


__all__ = ["DistTransport", "LinkShape", "init", "sync_clock", "report_blob", "parse_report"]
